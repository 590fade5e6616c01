"""The language-model objective: next-token cross-entropy over every position, and perplexity (chapter 4).

>>> logits = jnp.zeros((2, 5, 256))                       # (B, T, V): a model that knows nothing
>>> float(cross_entropy(logits, jnp.zeros((2, 5), jnp.int32)))  # log V nats per token
5.545...
>>> float(perplexity(jnp.log(256.0)))                     # as unsure as a uniform choice among 256 tokens
256.0...
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from labkit.masks import values_readable


def cross_entropy(logits: Float[Array, "B T V"], targets: Int[Array, "B T"], *,
                  ignore: int | None = None) -> Float[Array, ""]:
    """Mean over the B x T positions of -log softmax(logits)[target], in nats (computed in float32).

    With ``ignore`` (a negative id, e.g. ``labkit.finetune.IGNORE``), positions whose target is ``ignore`` are left
    out of the mean (0 if every position is); instruction tuning uses it to count only the response's tokens.
    Any other negative target is an error, checked outside jit.
    """
    if getattr(logits, "ndim", None) != 3:
        raise ValueError(f"logits must have shape (B, T, V); got {tuple(getattr(logits, 'shape', ()))}")
    if getattr(targets, "shape", None) != logits.shape[:2]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])} (B, T) to match logits; "
                         f"got {tuple(getattr(targets, 'shape', ()))}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids; got dtype {targets.dtype}")
    if ignore is not None and (type(ignore) is not int or ignore >= 0):
        raise ValueError(f"ignore must be a negative int (never a token id) or None; got {ignore!r}")
    if values_readable(targets) and targets.size:  # values can only be checked outside jit, on this process
        values = np.asarray(targets)
        values = values[values != ignore] if ignore is not None else values
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high >= logits.shape[2]:
            also = f" or ignore = {ignore}" if ignore is not None else ""
            raise ValueError(f"targets must be ids in [0, {logits.shape[2] - 1}] (V = {logits.shape[2]}){also}; "
                             f"got values from {low} to {high}")
    if ignore is None:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets))
    counted = targets != ignore  # (B, T)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             jnp.where(counted, targets, 0))  # (B, T)
    return jnp.sum(jnp.where(counted, losses, 0.0)) / jnp.maximum(jnp.sum(counted), 1)


def loss(model: nnx.Module, x: Int[Array, "B T"], y: Int[Array, "B T"]) -> Float[Array, ""]:
    """The training loss of a language model on inputs ``x`` and next tokens ``y``: ``fit``'s ``loss_fn``."""
    return cross_entropy(model(x), y)


def perplexity(loss: float | Array) -> Float[Array, ""]:
    """exp(mean cross-entropy in nats): the number of equally likely tokens the model is, on average, choosing among."""
    return jnp.exp(jnp.asarray(loss, jnp.float32))
