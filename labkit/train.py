"""A short training loop: random mini-batches, a jitted train step, periodic evaluation, a returned history.

Chapter 2 trains on ``ArrayData`` (examples and labels); chapter 4 pretrains on ``TokenWindows`` (random windows of a
token stream), with gradient accumulation, checkpoints to resume from, and tokens per second in the progress bar.

>>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)  # doctest: +SKIP
>>> loss_fn = lambda model, x, y: cross_entropy(model(x), y)
>>> history = fit(model, optimizer, loss_fn, train, steps=500, batch_size=64, key=jax.random.key(0),  # doctest: +SKIP
...               eval_data=test, metrics={"accuracy": lambda m, x, y: accuracy(m(x), y)})
>>> history = fit(gpt, nnx.Optimizer(gpt, make_optimizer(config), wrt=nnx.Param), lm.loss,  # doctest: +SKIP
...               TokenWindows(train_ids, seq_len=128), steps=600, batch_size=16, accumulation=4,
...               key=data_key, eval_data=TokenWindows(valid_ids, seq_len=128), checkpoint_dir="runs/gpt")
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.std import tqdm

from labkit.checkpoint import checkpoint_steps, restore_checkpoint, save_checkpoint
from labkit.data import ArrayData
from labkit.step import LossFn, accumulate_gradients, make_train_step
from labkit.tokens import TokenWindows

if TYPE_CHECKING:
    from jax.sharding import Mesh

__all__ = ["History", "LossFn", "accumulate_gradients", "batches", "evaluate", "fit", "make_train_step"]
Batch = tuple[jax.Array, jax.Array]


@dataclasses.dataclass
class History:
    """What happened during ``fit``: the training loss at every step and the metrics at every evaluation."""

    step: list[int] = dataclasses.field(default_factory=list)  # steps at which `loss` was recorded
    loss: list[float] = dataclasses.field(default_factory=list)  # training loss of that step's batch
    eval_step: list[int] = dataclasses.field(default_factory=list)  # steps at which evaluation ran
    eval: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # metric name -> value per evaluation
    tokens: list[int] = dataclasses.field(default_factory=list)  # tokens trained on up to step (ArrayData: examples)
    seconds: list[float] = dataclasses.field(default_factory=list)  # training time up to step (no eval, no saving)

    def throughput(self, skip: int = 1) -> float:
        """Tokens (or examples) per second after the first ``skip`` steps (the first step includes compilation)."""
        if type(skip) is not int or not 0 <= skip < len(self.step):
            raise ValueError(f"skip must be an int in [0, {len(self.step) - 1}] (below the steps recorded); "
                             f"got {skip!r}")
        first_tokens, first_time = (self.tokens[skip - 1], self.seconds[skip - 1]) if skip else (0, 0.0)
        return (self.tokens[-1] - first_tokens) / max(self.seconds[-1] - first_time, 1e-9)


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
    model: nnx.Module, metrics: dict[str, LossFn], data: ArrayData | Sequence[Batch], *, batch_size: int = 512
) -> dict[str, float]:
    """Each metric averaged over all of ``data``, weighted by batch size: an ``ArrayData`` (cut into batches of
    ``batch_size``) or a list of (x, y) batches."""
    if not metrics:
        raise ValueError("metrics is empty; expected at least one name -> fn(model, x, y) entry")
    if isinstance(data, TokenWindows):
        raise TypeError("data must be an ArrayData or a list of (x, y) batches; for TokenWindows pass a fixed list, "
                        "e.g. [windows.batch(key, i, batch_size) for i in range(8)]")
    if isinstance(data, ArrayData):
        data = [(data.x[i : i + batch_size], data.y[i : i + batch_size]) for i in range(0, len(data), batch_size)]
    if not data:
        raise ValueError("data is empty; expected an ArrayData or at least one (x, y) batch")
    totals = {name: 0.0 for name in metrics}
    n = 0
    for x, y in data:
        x, y = jnp.asarray(x), jnp.asarray(y)
        for name, fn in metrics.items():
            totals[name] += float(_jitted(fn)(model, x, y)) * len(x)
        n += len(x)
    return {name: total / n for name, total in totals.items()}


_JIT_CACHE: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()
_STEP_CACHE: "weakref.WeakKeyDictionary[Callable, dict[int, Callable]]" = weakref.WeakKeyDictionary()


def _jitted(fn: Callable) -> Callable:
    # One compiled version per metric function, kept across calls so repeated evaluations do not recompile.
    if fn not in _JIT_CACHE:
        _JIT_CACHE[fn] = nnx.jit(fn)
    return _JIT_CACHE[fn]


def _cached_train_step(loss_fn: LossFn, accumulation: int) -> Callable:
    # Likewise one train step per (loss function, accumulation), so that a second fit of the same model reuses it.
    steps = _STEP_CACHE.setdefault(loss_fn, {})
    if accumulation not in steps:
        steps[accumulation] = make_train_step(loss_fn, accumulation=accumulation)
    return steps[accumulation]


def _batch_source(train: ArrayData | TokenWindows, size: int, key: jax.Array, start: int) -> Callable[[int], Batch]:
    """A function from step number to that step's training batch of ``size`` rows, continuing after ``start``."""
    if isinstance(train, TokenWindows):
        return lambda step: train.batch(key, step, size)
    x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.y)
    index_batches = batches(len(train), size, key)
    for _ in range(start):  # a resumed run skips the batches it has already trained on
        next(index_batches)

    def draw(step: int) -> Batch:
        idx = next(index_batches)
        return x_all[idx], y_all[idx]

    return draw


def _check_fit_arguments(train, steps, batch_size, accumulation, eval_every, eval_batches, checkpoint_every) -> None:
    if not isinstance(train, (ArrayData, TokenWindows)):
        raise TypeError(f"train must be an ArrayData (labkit.data) or TokenWindows (labkit.tokens); "
                        f"got {type(train).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("accumulation", accumulation),
                        ("eval_batches", eval_batches)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")


def _placement(model, optimizer, mesh, strategy, batch_size) -> Callable[..., Batch]:
    """With a mesh: shard the model and optimizer, and return how to place a batch; without one, do nothing."""
    if mesh is None:
        if strategy != "dp":
            raise ValueError(f"strategy={strategy!r} needs a mesh (labkit.parallel.make_mesh); got mesh=None")
        return lambda x, y, batch_axis=0: (x, y)
    from labkit import parallel  # only a sharded run needs it

    if batch_size % mesh.shape["data"]:
        raise ValueError(f"mesh axis 'data' of size {mesh.shape['data']} does not divide batch_size B={batch_size}")
    parallel.shard((model, optimizer), mesh, strategy)  # also checks heads, widths and vocabulary

    def place(x, y, batch_axis: int = 0) -> Batch:
        if np.shape(x)[batch_axis] % mesh.shape["data"]:  # a ragged last evaluation batch: every device sees it
            return parallel.place_replicated(x, mesh), parallel.place_replicated(y, mesh)
        return tuple(parallel.place_batch(a, mesh, batch_axis=batch_axis) for a in (x, y))

    return place


def _eval_batches(eval_set: ArrayData | Sequence[Batch], batch_size: int = 512) -> list[Batch]:
    if isinstance(eval_set, ArrayData):
        return [(eval_set.x[i : i + batch_size], eval_set.y[i : i + batch_size])
                for i in range(0, len(eval_set), batch_size)]
    return list(eval_set)


def _resume(directory, model, optimizer, key, steps, metrics) -> tuple[int, History | None]:
    """Load the newest checkpoint in ``directory``, if there is one: (its step, its history); else (0, None)."""
    if not checkpoint_steps(directory):
        return 0, None
    restored = restore_checkpoint(directory, model=model, optimizer=optimizer)
    if not np.array_equal(jax.random.key_data(restored.key), jax.random.key_data(key)):
        raise ValueError(f"key differs from the data key of the run checkpointed in {directory}; pass the same key "
                         "to resume that run, or a new checkpoint_dir to start another")
    if restored.step > steps:
        raise ValueError(f"checkpoint_dir {directory} holds step {restored.step}, beyond steps={steps}")
    if not isinstance(restored.history, dict) or set(restored.history) != {f.name for f in dataclasses.fields(History)}:
        raise ValueError(f"the checkpoint in {directory} was not saved by fit (it has no History); "
                         "restore it with labkit.checkpoint.restore_checkpoint")
    history = History(**restored.history)
    if set(history.eval) != set(metrics):
        raise ValueError(f"metrics {sorted(metrics)} differ from those of the checkpointed run {sorted(history.eval)}")
    return restored.step, history


class _Stopwatch:
    """Training time: wall-clock time minus the pauses for evaluation and checkpoints."""

    def __init__(self, seconds: float):
        self.seconds, self._mark = seconds, time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        self.seconds, self._mark = self.seconds + now - self._mark, now
        return self.seconds

    def skip(self) -> None:  # the time since the last lap was not training
        self._mark = time.perf_counter()


def _record(history: History, step: int, loss: jax.Array, per_step: int, watch: _Stopwatch) -> None:
    """Append one step to ``history``; this waits for the step's loss, so call it once the next step is queued."""
    loss = float(loss)
    if not np.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} at step {step}; lower the learning rate")
    history.step.append(step)
    history.loss.append(loss)
    history.tokens.append((history.tokens[-1] if history.tokens else 0) + per_step)
    history.seconds.append(watch.lap())


def _postfix(history: History, unit: str) -> dict[str, str]:
    """What the progress bar shows: the last loss and evaluation, the recent throughput, the tokens seen."""
    if not history.step:
        return {}
    recent = max(0, len(history.step) - 20)
    rate = (history.tokens[-1] - history.tokens[recent]) / max(history.seconds[-1] - history.seconds[recent], 1e-9)
    evals = {f"eval_{name}": f"{values[-1]:.4f}" for name, values in history.eval.items() if values}
    return {"loss": f"{history.loss[-1]:.4f}", **evals, f"{unit}/s": f"{rate:,.0f}", unit: f"{history.tokens[-1]:,}"}


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: LossFn,
    train: ArrayData | TokenWindows,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    eval_data: ArrayData | TokenWindows | None = None,
    metrics: dict[str, LossFn] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    accumulation: int = 1,
    eval_batches: int = 8,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    mesh: Mesh | None = None,
    strategy: str = "dp",
) -> History:
    """Train ``model`` in place for ``steps`` optimizer steps on random batches of ``train``; return the history.

    ``loss_fn(model, x, y)`` gives the scalar training loss. Each step averages the gradients of ``accumulation``
    batches of ``batch_size``. If ``eval_data`` is given, ``metrics`` (default: the loss) are evaluated on it
    every ``eval_every`` steps (default: 10 times per run) and after the last step: on all of an ``ArrayData``, on
    a fixed set of ``eval_batches`` batches of ``TokenWindows``. With ``checkpoint_dir``, a checkpoint is saved
    every ``checkpoint_every`` steps and after the last; a run that finds a checkpoint there resumes from the newest,
    drawing the same batches as a run that never stopped.

    The jitted step is kept per ``loss_fn``; it compiles again for a new model structure, new batch shapes or a new
    optax object (its settings are part of the compiled step), so several runs in one notebook should share one
    ``loss_fn`` and one optax transformation per setting.

    With a ``mesh`` (``labkit.parallel.make_mesh``), the model and optimizer are first sharded by ``strategy``
    (``labkit.parallel.STRATEGIES``: dp, fsdp, tp, fsdp_tp) and every batch is split over the mesh's ``data`` axis;
    the step function is the same, and XLA adds the communication.
    """
    _check_fit_arguments(train, steps, batch_size, accumulation, eval_every, eval_batches, checkpoint_every)
    place = _placement(model, optimizer, mesh, strategy, batch_size)
    metrics = dict(metrics) if metrics else {"loss": loss_fn}
    eval_every = eval_every or max(1, steps // 10)
    start, history = _resume(checkpoint_dir, model, optimizer, key, steps, metrics) if checkpoint_dir else (0, None)
    history = history or History(eval={name: [] for name in metrics})
    draw = _batch_source(train, accumulation * batch_size, key, start)
    eval_set = eval_data
    if isinstance(eval_data, TokenWindows):  # the same windows at every evaluation, from a stream of their own
        eval_set = [eval_data.batch(jax.random.fold_in(key, 1), i, batch_size) for i in range(eval_batches)]
    if mesh is not None and eval_set is not None:
        eval_set = [place(x, y) for x, y in _eval_batches(eval_set)]
    per_step = accumulation * batch_size * (train.seq_len if isinstance(train, TokenWindows) else 1)
    unit = "tok" if isinstance(train, TokenWindows) else "ex"
    train_step = _cached_train_step(loss_fn, accumulation)
    watch = _Stopwatch(history.seconds[-1] if history.seconds else 0.0)
    bar = tqdm(range(start + 1, steps + 1), desc="train", initial=start, total=steps, disable=not progress,
               mininterval=1.0)
    pending = None  # (step, loss) of the step still running while the host prepares the next batch
    for step in bar:
        x, y = draw(step)
        if accumulation > 1:  # (k * B, ...) -> (k, B, ...): k micro-batches
            x, y = x.reshape(accumulation, batch_size, *x.shape[1:]), y.reshape(accumulation, batch_size, *y.shape[1:])
        if mesh is not None:
            x, y = place(x, y, batch_axis=int(accumulation > 1))
        loss = train_step(model, optimizer, x, y)
        if pending is not None:
            _record(history, *pending, per_step, watch)
        pending = (step, loss)
        evaluating = eval_set is not None and (step % eval_every == 0 or step == steps)
        saving = checkpoint_dir is not None and (step == steps or (checkpoint_every and step % checkpoint_every == 0))
        if evaluating or saving or step == steps:
            _record(history, *pending, per_step, watch)
            pending = None
            if evaluating:
                model.eval()  # dropout off
                for name, value in evaluate(model, metrics, eval_set).items():
                    history.eval[name].append(value)
                model.train()
                history.eval_step.append(step)
            if saving:
                save_checkpoint(checkpoint_dir, step=step, model=model, optimizer=optimizer, key=key,
                                history=dataclasses.asdict(history), keep=keep_checkpoints)
            watch.skip()
        bar.set_postfix(_postfix(history, unit), refresh=False)
    bar.close()
    return history
