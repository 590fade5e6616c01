"""The language-model objective: next-token cross-entropy over every position, and perplexity (chapter 4).

>>> logits = jnp.zeros((2, 5, 256))                       # (B, T, V): a model that knows nothing
>>> float(cross_entropy(logits, jnp.zeros((2, 5), jnp.int32)))  # log V nats per token
5.545...
>>> float(perplexity(jnp.log(256.0)))                     # as unsure as a uniform choice among 256 tokens
256.0...
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int


def cross_entropy(logits: Float[Array, "B T V"], targets: Int[Array, "B T"]) -> Float[Array, ""]:
    """Mean over all B x T positions of -log softmax(logits)[target], in nats (computed in float32)."""
    if getattr(logits, "ndim", None) != 3:
        raise ValueError(f"logits must have shape (B, T, V); got {tuple(getattr(logits, 'shape', ()))}")
    if getattr(targets, "shape", None) != logits.shape[:2]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])} (B, T) to match logits; "
                         f"got {tuple(getattr(targets, 'shape', ()))}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids; got dtype {targets.dtype}")
    if not isinstance(targets, jax.core.Tracer) and targets.size:  # values can only be checked outside jit
        values = np.asarray(targets)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= logits.shape[2]:
            raise ValueError(f"targets must be ids in [0, {logits.shape[2] - 1}] (V = {logits.shape[2]}); "
                             f"got values from {low} to {high}")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)  # (B, T)
    return jnp.mean(losses)


def loss(model: nnx.Module, x: Int[Array, "B T"], y: Int[Array, "B T"]) -> Float[Array, ""]:
    """The training loss of a language model on inputs ``x`` and next tokens ``y``: ``fit``'s ``loss_fn``."""
    return cross_entropy(model(x), y)


def perplexity(loss: float | Array) -> Float[Array, ""]:
    """exp(mean cross-entropy in nats): the number of equally likely tokens the model is, on average, choosing among."""
    return jnp.exp(jnp.asarray(loss, jnp.float32))
