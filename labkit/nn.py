"""Layers and losses of chapter 2: y = f(x; W, b), stacked into a multilayer perceptron.

>>> model = MLP([64, 32, 10], rngs=nnx.Rngs(0))
>>> model(jnp.zeros((5, 64))).shape
(5, 10)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


class MLP(nnx.Module):
    """Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, ``activation`` between them, none after the last."""

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu", rngs: nnx.Rngs):
        sizes = list(sizes)
        if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least two positive ints (input and output width); got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        self.sizes = tuple(sizes)
        self.activation = activation
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:], strict=True)])

    def __call__(self, x: Float[Array, "B I"]) -> Float[Array, "B O"]:
        if x.ndim < 1 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"MLP input x must have last dimension {self.sizes[0]}; got shape {tuple(x.shape)}")
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))  # (B, hidden)
        return self.layers[-1](x)  # (B, O)


def _same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")


def mse(prediction: Float[Array, "..."], target: Float[Array, "..."]) -> Float[Array, ""]:
    """Mean squared error; the shapes must match exactly (no broadcasting that would hide a bug)."""
    _same_shape("prediction", prediction, "target", target)
    return jnp.mean((prediction - target) ** 2)


def _check_classification(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, C); got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits; got {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids; got dtype {labels.dtype}")
    if not isinstance(labels, jax.core.Tracer):  # values can only be checked outside jit
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]; got values from {low} to {high}")


def cross_entropy(logits: Float[Array, "B C"], labels: Int[Array, " B"]) -> Float[Array, ""]:
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``)."""
    _check_classification(logits, labels)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: Float[Array, "B C"], labels: Int[Array, " B"]) -> Float[Array, ""]:
    """Fraction of rows whose largest logit is at the label."""
    _check_classification(logits, labels)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries) in ``model``."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
