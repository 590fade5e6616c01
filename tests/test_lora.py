"""labkit.lora: a zero update at the start, merge and unmerge keep the outputs, only adapters train, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import lm
from labkit.gpt import GPT, GPTConfig
from labkit.lora import (LoRALinear, LoRAParam, apply_lora, lora_layers, lora_param_count, merge_lora,
                         unmerge_lora)
from labkit.tokens import TokenWindows
from labkit.train import fit

CONFIG = GPTConfig.ci(vocab_size=64, max_len=16)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 12)), jnp.int32)


def _adapted(targets=("attn.query", "attn.value"), rank=4):
    model = GPT(CONFIG, rngs=nnx.Rngs(0))
    apply_lora(model, rank=rank, alpha=8.0, targets=targets, rngs=nnx.Rngs(1))
    return model


def _randomize_b(model):
    for i, (_, layer) in enumerate(lora_layers(model)):
        layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(i), layer.lora_b.shape)


def test_starts_as_the_pretrained_model_and_counts_parameters():
    plain = GPT(CONFIG, rngs=nnx.Rngs(0))
    model = _adapted()
    np.testing.assert_array_equal(plain(TOKENS), model(TOKENS))
    d, r, layers = CONFIG.width, 4, CONFIG.num_layers
    assert lora_param_count(model) == layers * 2 * r * (d + d)
    assert [path[-2:] for path, _ in lora_layers(model)] == [("attn", "query"), ("attn", "value")] * layers
    assert _adapted(("mlp.up",)).blocks[0].mlp.up.lora_b.shape == (4, CONFIG.mlp_width)
    assert len(list(lora_layers(_adapted(("blocks.1.attn.out",))))) == 1


def test_forward_matches_the_explicit_update():
    layer = LoRALinear(nnx.Linear(6, 5, rngs=nnx.Rngs(0)), rank=2, alpha=3.0, rngs=nnx.Rngs(1))
    layer.lora_b[...] = jax.random.normal(jax.random.key(2), (2, 5))
    x = jax.random.normal(jax.random.key(3), (4, 6))
    w = layer.base.kernel[...] + (3.0 / 2) * layer.lora_a[...] @ layer.lora_b[...]
    np.testing.assert_allclose(layer(x), x @ w + layer.base.bias[...], rtol=1e-5, atol=1e-5)


def test_merged_equals_unmerged():
    model = _adapted(("attn.query", "attn.key", "attn.value", "attn.out", "mlp.up", "mlp.down"))
    _randomize_b(model)
    kernels = [np.asarray(layer.base.kernel[...]).copy() for _, layer in lora_layers(model)]
    adapted = model(TOKENS)
    merge_lora(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    np.testing.assert_allclose(model(TOKENS), adapted, rtol=1e-4, atol=1e-5)
    unmerge_lora(model)
    np.testing.assert_allclose(model(TOKENS), adapted, rtol=1e-4, atol=1e-5)
    for before, (_, layer) in zip(kernels, lora_layers(model), strict=True):
        np.testing.assert_allclose(layer.base.kernel[...], before, rtol=0, atol=1e-6)


def test_only_adapter_parameters_change_during_training():
    model = _adapted()
    rest = nnx.Not(nnx.Any(LoRAParam, nnx.RngState))  # every other leaf (random keys cannot become NumPy arrays)
    frozen = [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, rest))]
    assert len(frozen) == len(jax.tree.leaves(nnx.state(model, nnx.Param))) - len(list(lora_layers(model))) * 2
    adapters = [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, LoRAParam))]
    ids = np.random.default_rng(1).integers(0, 64, size=400).astype(np.int32)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)
    fit(model, optimizer, lm.loss, TokenWindows(ids, seq_len=8), steps=4, batch_size=4, key=jax.random.key(0),
        progress=False)
    for before, after in zip(frozen, jax.tree.leaves(nnx.state(model, rest)), strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
    after = jax.tree.leaves(nnx.state(model, LoRAParam))
    changed = [not np.array_equal(b, np.asarray(a)) for b, a in zip(adapters, after, strict=True)]
    assert all(changed)


def test_errors():
    base = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    for rank in (0, -1, 5, 2.0):
        with pytest.raises(ValueError, match="rank"):
            LoRALinear(base, rank=rank, alpha=1.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(base, rank=2, alpha=0.0, rngs=nnx.Rngs(1))
    with pytest.raises(TypeError, match="base"):
        LoRALinear(nnx.Embed(4, 4, rngs=nnx.Rngs(0)), rank=2, alpha=1.0, rngs=nnx.Rngs(1))
    model = GPT(CONFIG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank"):  # larger than min(in, out) = D = 32
        apply_lora(model, rank=33, alpha=1.0, targets=("attn.query",), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="'attn.q' matches no linear layer"):
        apply_lora(model, rank=2, alpha=1.0, targets=("attn.q",), rngs=nnx.Rngs(1))
    for targets in ("attn.query", (), ("attn..query",)):
        with pytest.raises(ValueError, match="targets"):
            apply_lora(model, rank=2, alpha=1.0, targets=targets, rngs=nnx.Rngs(1))
    assert not list(lora_layers(model))  # a refused call changes nothing
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(model)
    apply_lora(model, rank=2, alpha=1.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=1.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(model)
    merge_lora(model)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    assert isinstance(model.blocks[0].attn.query.lora_a, LoRAParam)
