"""A short training loop: random mini-batches, a jitted train step, periodic evaluation, a returned history.

>>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
>>> loss_fn = lambda model, x, y: cross_entropy(model(x), y)
>>> history = fit(model, optimizer, loss_fn, train, steps=500, batch_size=64, key=jax.random.key(0),
...               eval_data=test, metrics={"accuracy": lambda m, x, y: accuracy(m(x), y)})
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.std import tqdm

from labkit.data import ArrayData

LossFn = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class History:
    """What happened during ``fit``: the training loss at every step and the metrics at every evaluation."""

    step: list[int] = dataclasses.field(default_factory=list)  # steps at which `loss` was recorded
    loss: list[float] = dataclasses.field(default_factory=list)  # training loss of that step's batch
    eval_step: list[int] = dataclasses.field(default_factory=list)  # steps at which evaluation ran
    eval: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # metric name -> value per evaluation


def make_train_step(loss_fn: LossFn) -> Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], jax.Array]:
    """A jitted step: the loss and its gradient on one batch, then one optimizer update (in place)."""

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    return train_step


def batches(n: int, batch_size: int, key: jax.Array) -> Iterator[np.ndarray]:
    """Index arrays of ``batch_size`` examples, forever: each epoch is a fresh shuffle of ``range(n)``.

    The last ``n % batch_size`` examples of each shuffle are left for the next epoch's shuffle, so every batch has
    the same shape (one compilation) and, over epochs, every example is used.
    """
    if n < 1:
        raise ValueError(f"the training set is empty; expected at least one example, got n={n}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and the number of examples ({n}); got {batch_size}")
    epoch = 0
    while True:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        epoch += 1


def evaluate(
    model: nnx.Module, metrics: dict[str, LossFn], data: ArrayData, *, batch_size: int = 512
) -> dict[str, float]:
    """Each metric averaged over all of ``data`` (in batches, weighted by batch size)."""
    if not metrics:
        raise ValueError("metrics is empty; expected at least one name -> fn(model, x, y) entry")
    totals = {name: 0.0 for name in metrics}
    n = len(data.x)
    for start in range(0, n, batch_size):
        x, y = jnp.asarray(data.x[start : start + batch_size]), jnp.asarray(data.y[start : start + batch_size])
        for name, fn in metrics.items():
            totals[name] += float(_jitted(fn)(model, x, y)) * len(x)
    return {name: total / n for name, total in totals.items()}


_JIT_CACHE: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jitted(fn: Callable) -> Callable:
    # One compiled version per metric function, kept across calls so repeated evaluations do not recompile.
    if fn not in _JIT_CACHE:
        _JIT_CACHE[fn] = nnx.jit(fn)
    return _JIT_CACHE[fn]


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: LossFn,
    train: ArrayData,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    eval_data: ArrayData | None = None,
    metrics: dict[str, LossFn] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` in place for ``steps`` optimizer steps on random batches of ``train``; return the history.

    ``loss_fn(model, x, y)`` gives the scalar training loss. If ``eval_data`` is given, ``metrics`` (default: the
    loss) are evaluated on it every ``eval_every`` steps (default: 10 times per run) and after the last step.
    """
    if not isinstance(train, ArrayData):
        raise TypeError(f"train must be an ArrayData (labkit.data); got {type(train).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every must be a positive int or None; got {eval_every!r}")
    metrics = dict(metrics) if metrics else {"loss": loss_fn}
    eval_every = eval_every or max(1, steps // 10)
    train_step = make_train_step(loss_fn)
    x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.y)
    history = History(eval={name: [] for name in metrics})
    index_batches = batches(len(train.x), batch_size, key)
    bar = tqdm(range(1, steps + 1), desc="train", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = next(index_batches)
        loss = float(train_step(model, optimizer, x_all[idx], y_all[idx]))
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step}; lower the learning rate")
        history.step.append(step)
        history.loss.append(loss)
        if eval_data is not None and (step % eval_every == 0 or step == steps):
            results = evaluate(model, metrics, eval_data)
            history.eval_step.append(step)
            for name, value in results.items():
                history.eval[name].append(value)
            bar.set_postfix({"loss": f"{loss:.4f}", **{f"eval_{name}": f"{v:.4f}" for name, v in results.items()}})
        elif step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return history
