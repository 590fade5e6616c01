"""One training step: the gradient of the loss (averaged over micro-batches if asked), then one optimizer update.

>>> train_step = make_train_step(loss_fn)                     # x, y: one batch (B, ...)  # doctest: +SKIP
>>> loss = train_step(model, optimizer, x, y)  # the model and optimizer are updated in place  # doctest: +SKIP
>>> train_step = make_train_step(loss_fn, accumulation=4)     # x, y: four micro-batches (4, B, ...)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

LossFn = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]


def accumulate_gradients(loss_fn: LossFn, model: nnx.Module, x: jax.Array, y: jax.Array) -> tuple[jax.Array, nnx.State]:
    """Mean loss and mean gradient over k micro-batches x[i], y[i] of shape (k, B, ...), taken one after another.

    ``lax.scan`` keeps the activations of a single micro-batch in memory; state other than parameters (e.g.
    dropout's random-key counters) is carried from one micro-batch to the next.
    """
    if getattr(x, "ndim", 0) < 2 or getattr(y, "shape", (None,))[:1] != x.shape[:1]:
        raise ValueError(f"x and y must have a leading micro-batch axis, (k, B, ...), of the same length; got shapes "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def micro_step(carry, batch):
        rest, loss_sum, grad_sum = carry

        def loss_of(params, rest):
            micro_model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables, owned by this trace
            return loss_fn(micro_model, *batch).astype(jnp.float32), nnx.split(micro_model, nnx.Param, ...)[2]

        (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
        return (rest, loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    start = (rest, jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (rest, loss_sum, grad_sum), _ = jax.lax.scan(micro_step, start, (x, y))
    nnx.update(model, rest)
    k = x.shape[0]
    return loss_sum / k, jax.tree.map(lambda g: g / k, grad_sum)


def make_train_step(
    loss_fn: LossFn, *, accumulation: int = 1
) -> Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], jax.Array]:
    """A jitted step: the loss and its gradient on one batch, then one optimizer update (in place).

    With ``accumulation`` = k > 1, x and y carry a leading axis of k micro-batches, (k, B, ...), and the update uses
    their mean gradient: the same update as one batch of k x B examples, in the memory of B.
    """
    if type(accumulation) is not int or accumulation < 1:
        raise ValueError(f"accumulation must be a positive int; got {accumulation!r}")

    # Tree mode (graph=False) passes the model and optimizer to jit as pytrees instead of walking their object graph
    # in Python on every call: the same program and bit-identical results (tests/test_step_modes.py), less host time.
    @nnx.jit(graph=False)
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        if accumulation == 1:
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        else:
            loss, grads = accumulate_gradients(loss_fn, model, x, y)
        optimizer.update(model, grads)
        return loss

    return train_step
