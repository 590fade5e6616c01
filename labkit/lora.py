"""LoRA (Hu et al., ICLR 2022): freeze a weight matrix W and learn a low-rank change to it, W + (alpha / r) · A B.

For a linear layer y = x W + b with W of shape (I, O), LoRA adds two small matrices, ``lora_a`` (I, r) and
``lora_b`` (r, O), and computes y = x W + b + (alpha / r) · (x A) B. ``lora_a`` starts random and ``lora_b`` at zero,
so the adapted model starts out exactly the pretrained one. (The paper writes W as (O, I) and the update as B A;
ours is its transpose, in JAX's (in, out) layout.) The adapters are ``LoRAParam`` variables, so an optimizer built
with ``wrt=LoRAParam`` trains them and nothing else: r (I + O) numbers per layer instead of I O.

>>> from labkit.gpt import GPT, GPTConfig
>>> model = GPT(GPTConfig.ci(), rngs=nnx.Rngs(0))
>>> apply_lora(model, rank=4, alpha=8.0, targets=("attn.query", "attn.value"), rngs=nnx.Rngs(1))
4
>>> lora_param_count(model)                                 # 2 layers x 2 projections x 4 x (32 + 32)
1024
>>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=LoRAParam)   # only the adapters train
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

__all__ = ["DEFAULT_TARGETS", "LoRALinear", "LoRAParam", "apply_lora", "lora_layers", "lora_param_count",
           "merge_lora", "unmerge_lora"]

DEFAULT_TARGETS = ("attn.query", "attn.value")  # Hu et al. adapt the query and value projections


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix: a ``nnx.Param`` of its own type, so that filters can pick adapters alone."""


class LoRALinear(nnx.Module):
    """A frozen-by-convention ``nnx.Linear`` (``base``) plus the low-rank update (alpha / r) · lora_a @ lora_b.

    >>> layer = LoRALinear(nnx.Linear(6, 4, rngs=nnx.Rngs(0)), rank=2, alpha=4.0, rngs=nnx.Rngs(1))
    >>> layer.lora_a.shape, layer.lora_b.shape, layer.scale
    ((6, 2), (2, 4), 2.0)
    """

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
        if not isinstance(base, nnx.Linear):
            raise TypeError(f"base must be an nnx.Linear; got {type(base).__name__}")
        fan_in, fan_out = base.in_features, base.out_features
        if type(rank) is not int or not 1 <= rank <= min(fan_in, fan_out):
            raise ValueError(f"rank must be an int in [1, min(in, out) = {min(fan_in, fan_out)}] for a layer of "
                             f"shape ({fan_in}, {fan_out}); got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number; got {alpha!r}")
        self.base = base
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        # A as in Hu et al.: random Gaussian; B zero, so the update starts at exactly zero.
        self.lora_a = LoRAParam(jax.random.normal(rngs.params(), (fan_in, rank), jnp.float32) / fan_in**0.5)
        self.lora_b = LoRAParam(jnp.zeros((rank, fan_out), jnp.float32))
        self.merged = False  # True: the update has been added into base.kernel (merge_lora)

    def delta(self) -> Float[Array, "I O"]:
        """The update (alpha / r) · A B that LoRA adds to the base kernel, (I, O)."""
        return self.scale * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        y = self.base(x)  # (..., O)
        if self.merged:
            return y
        update = (x @ self.lora_a[...].astype(x.dtype)) @ self.lora_b[...].astype(x.dtype)  # (..., r) -> (..., O)
        return y + (self.scale * update).astype(y.dtype)


def lora_layers(model: nnx.Module) -> Iterator[tuple[tuple, LoRALinear]]:
    """Every ``LoRALinear`` in ``model`` with its path, e.g. (("blocks", 0, "attn", "query"), layer)."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoRALinear):
            yield tuple(path), node


def _matches(path: tuple, target: Sequence[str]) -> bool:
    names = tuple(str(p) for p in path)
    return len(names) >= len(target) and names[len(names) - len(target):] == tuple(target)


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS,
               rngs: nnx.Rngs) -> int:
    """Replace, in place, every ``nnx.Linear`` whose path ends with one of ``targets`` by a ``LoRALinear``.

    A target is a dotted path suffix: "attn.query", "attn.key", "attn.value", "attn.out" (labkit.attention's
    projections), "mlp.up", "mlp.down", "mlp.gate", or a longer one such as "blocks.0.attn.query". Returns the number
    of layers adapted. Every target must match at least one linear layer.
    """
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of dotted names such as 'attn.query'; got {targets!r}")
    if any(not isinstance(t, str) or not t or "" in t.split(".") for t in targets):
        raise ValueError(f"targets must be non-empty dotted names such as 'attn.query'; got {targets!r}")
    if any(True for _ in lora_layers(model)):
        raise ValueError("model already has LoRA layers; apply_lora once per model")
    linears = [(tuple(path), node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)]
    chosen: dict[tuple, nnx.Linear] = {}
    for target in targets:
        found = [(path, node) for path, node in linears if _matches(path, target.split("."))]
        if not found:
            known = sorted({".".join(str(p) for p in path[-2:]) for path, _ in linears})
            raise ValueError(f"target {target!r} matches no linear layer of the model; its linear layers end with "
                             f"{', '.join(known)}")
        chosen.update(found)
    adapted = {path: LoRALinear(node, rank=rank, alpha=alpha, rngs=rngs) for path, node in chosen.items()}
    for path, layer in adapted.items():  # checked all first: an error above leaves the model unchanged
        parent = model
        for step in path[:-1]:
            parent = parent[step] if isinstance(step, int) else getattr(parent, step)
        if isinstance(path[-1], int):
            parent[path[-1]] = layer
        else:
            setattr(parent, path[-1], layer)
    return len(adapted)


def lora_param_count(model: nnx.Module) -> int:
    """Number of adapter parameters (``LoRAParam`` entries) in ``model``."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, LoRAParam)))


def _all_layers(model: nnx.Module) -> list[LoRALinear]:
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError("model has no LoRA layers; call apply_lora first")
    return layers


def merge_lora(model: nnx.Module) -> None:
    """Add each adapter's update into its base kernel, in place: the model then runs at the cost of the original.

    The outputs stay the same (up to float rounding); ``unmerge_lora`` takes the updates out again.
    """
    for layer in _all_layers(model):
        if layer.merged:
            raise ValueError("model's LoRA layers are already merged; call unmerge_lora first")
    for layer in _all_layers(model):
        layer.base.kernel[...] = layer.base.kernel[...] + layer.delta().astype(layer.base.kernel.dtype)
        layer.merged = True


def unmerge_lora(model: nnx.Module) -> None:
    """Subtract each adapter's update from its base kernel again (the inverse of ``merge_lora``), in place."""
    for layer in _all_layers(model):
        if not layer.merged:
            raise ValueError("model's LoRA layers are not merged; call merge_lora first")
    for layer in _all_layers(model):
        layer.base.kernel[...] = layer.base.kernel[...] - layer.delta().astype(layer.base.kernel.dtype)
        layer.merged = False
