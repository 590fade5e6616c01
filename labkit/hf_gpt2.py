"""Load a GPT-2 checkpoint in the Hugging Face layout into ``labkit.gpt.GPT``.

The checkpoint is a directory with ``config.json`` and ``model.safetensors``, as written by transformers'
``save_pretrained``. Nothing is downloaded: get the files once (for example on a machine with internet) and point
this at them. Only numpy and ``safetensors`` are needed, not torch.

>>> model = load_gpt2("checkpoints/gpt2", rngs=nnx.Rngs(0))  # doctest: +SKIP
>>> logits = model(jnp.array([[464, 3290]]))                # (B, T, V)  # doctest: +SKIP

Names map as follows (i = layer); GPT-2's ``Conv1D`` stores its weight as (in, out), which is already the layout of a
Flax kernel, so it is copied as it is (a torch ``nn.Linear`` stores (out, in) and would need a transpose):

    wte.weight -> embed.embedding          wpe.weight -> positions.table
    h.i.ln_1 -> blocks[i].attn_norm        h.i.attn.c_attn (D, 3D) -> blocks[i].attn.query | key | value
    h.i.attn.c_proj -> blocks[i].attn.out  h.i.ln_2 -> blocks[i].mlp_norm
    h.i.mlp.c_fc -> blocks[i].mlp.up       h.i.mlp.c_proj -> blocks[i].mlp.down        ln_f -> final_norm
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from labkit.gpt import GPT, GPTConfig

# Buffers some checkpoints carry that are not parameters (the causal mask of older transformers versions).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# What may be changed when loading: how the model computes, not its architecture (that would not fit the weights).
OVERRIDABLE = ("dtype", "attention", "block_size", "dropout")


def gpt2_config(config: dict[str, Any] | str | Path, **overrides: Any) -> GPTConfig:
    """The ``GPTConfig`` of a Hugging Face GPT-2 ``config.json`` (a dict, the file, or its directory).

    ``overrides`` may set any of ``OVERRIDABLE``.
    """
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"overrides may only set {', '.join(OVERRIDABLE)} (the rest comes from the checkpoint); "
                         f"got {', '.join(unknown)}")
    if not isinstance(config, dict):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"config.json not found: {path}")
        config = json.loads(path.read_text())
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"config.json: activation_function {act!r} is not supported; expected gelu_new or gelu")
    for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                     ("scale_attn_weights", True)):
        if config.get(flag, ok) != ok:
            raise ValueError(f"config.json: {flag}={config[flag]!r} is not supported (expected {ok})")
    width = config["n_embd"]
    inner = config.get("n_inner")
    return GPTConfig(**{**dict(
        vocab_size=config["vocab_size"], max_len=config.get("n_positions", config.get("n_ctx")),
        num_layers=config["n_layer"], num_heads=config["n_head"], width=width,
        mlp_width=4 * width if inner is None else inner, norm="layernorm",
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
        mlp="gelu", gelu_approximate=act != "gelu", positions="learned",
        tie_embeddings=config.get("tie_word_embeddings", True), bias=True), **overrides})


def _targets(model: GPT) -> dict[str, tuple[nnx.Variable, Any]]:
    """Checkpoint name -> (our parameter, how to turn the checkpoint array into it)."""
    c = model.config
    d = c.width
    targets: dict[str, tuple[nnx.Variable, Any]] = {
        "wte.weight": (model.embed.embedding, None), "wpe.weight": (model.positions.table, None),
        "ln_f.weight": (model.final_norm.scale, None), "ln_f.bias": (model.final_norm.bias, None),
    }
    if model.head is not None:  # an untied head is a torch nn.Linear: (V, D), transposed to our (D, V)
        targets["lm_head.weight"] = (model.head.kernel, np.transpose)
    for i, block in enumerate(model.blocks):
        p, attn = f"h.{i}.", block.attn
        for name, norm in (("ln_1", block.attn_norm), ("ln_2", block.mlp_norm)):
            targets[f"{p}{name}.weight"], targets[f"{p}{name}.bias"] = (norm.scale, None), (norm.bias, None)
        for j, proj in enumerate((attn.query, attn.key, attn.value)):  # c_attn is [q | k | v] along its output axis
            targets[f"{p}attn.c_attn.weight#{j}"] = (proj.kernel, lambda w, j=j: w[:, j * d:(j + 1) * d])
            targets[f"{p}attn.c_attn.bias#{j}"] = (proj.bias, lambda w, j=j: w[j * d:(j + 1) * d])
        for ours, theirs in ((attn.out, "attn.c_proj"), (block.mlp.up, "mlp.c_fc"), (block.mlp.down, "mlp.c_proj")):
            targets[f"{p}{theirs}.weight"], targets[f"{p}{theirs}.bias"] = (ours.kernel, None), (ours.bias, None)
    return targets


def load_gpt2(path: str | Path, *, rngs: nnx.Rngs, **overrides: Any) -> GPT:
    """A ``GPT`` with the weights of the Hugging Face GPT-2 checkpoint in directory ``path``.

    ``rngs`` only feeds dropout (off unless ``dropout`` is overridden, e.g. for fine-tuning); ``overrides`` change
    the config (for example ``dtype=jnp.bfloat16`` or ``attention="blockwise"``).
    """
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"model.safetensors not found in {path} (save with save_pretrained, safetensors on)")
    config = gpt2_config(path, **overrides)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(weights_file).items()}
    model = GPT(config, rngs=rngs)  # every parameter is then replaced by the checkpoint's
    targets = _targets(model)
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # the same matrix as wte when tied
    used, assigned = set(), set()
    for name, (variable, convert) in targets.items():
        source = name.split("#")[0]
        if source not in tensors:
            raise KeyError(f"tensor {source!r} is missing from {weights_file}")
        used.add(source)
        array = tensors[source] if convert is None else convert(tensors[source])
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(f"tensor {source!r} has shape {tuple(tensors[source].shape)}, which does not fit "
                             f"{'part of ' if '#' in name else ''}a parameter of shape {tuple(variable.shape)} "
                             f"(config: D={config.width}, F={config.mlp_width}, V={config.vocab_size})")
        variable.set_value(jnp.asarray(array, dtype=jnp.float32))
        assigned.add(id(variable))
    unexpected = sorted(k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{weights_file} has tensors that GPT-2 does not: {unexpected[:5]}")
    missed = [p for _, p in nnx.iter_graph(model) if isinstance(p, nnx.Param) and id(p) not in assigned]
    if missed:  # a parameter this loader does not know about (a change to GPT without a change here)
        raise RuntimeError(f"{len(missed)} parameters of the model were not set from the checkpoint")
    return model
