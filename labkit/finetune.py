"""Fine-tuning regimes and instruction tuning: what trains, what it costs, and a loss over the response alone.

Three regimes differ only in which variables the optimizer updates (``trainable``): ``"full"`` every parameter,
``"probe"`` only the new task head (a linear probe of frozen features), ``"lora"`` the LoRA adapters (plus the head,
if there is one). Instruction tuning trains the language model on prompt/response pairs; the loss counts only the
response tokens (``instruction_data``, ``masked_lm_loss``).

>>> model = Classifier(GPT(GPTConfig.ci(), rngs=nnx.Rngs(0)), 5, pad_id=0, rngs=nnx.Rngs(1))  # doctest: +SKIP
>>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=trainable("probe"))  # doctest: +SKIP
>>> trainable_count(model, trainable("probe")), optimizer_bytes(optimizer)  # doctest: +SKIP
>>> # D x C + C trainable numbers; Adam keeps 2 x 4 bytes for each
(165, 1324)
>>> data = instruction_data([(prompt_ids, response_ids)], separator=sep_ids, end=end_ids,  # doctest: +SKIP
...                         seq_len=64, pad_id=0)
>>> history = fit(gpt, nnx.Optimizer(gpt, optax.adam(1e-3), wrt=nnx.Param), masked_lm_loss, data, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from labkit.data import ArrayData
from labkit.lm import cross_entropy
from labkit.lora import LoRAParam
from labkit.train import LossFn, fit

__all__ = ["IGNORE", "REGIMES", "AtPath", "EarlyStopped", "fit_early_stopping", "instruction_data",
           "masked_cross_entropy", "masked_lm_loss", "optimizer_bytes", "trainable", "trainable_count"]

REGIMES = ("full", "probe", "lora")
IGNORE = -1  # the target of a position the loss skips (prompt and padding in instruction tuning)


@dataclasses.dataclass(frozen=True)
class AtPath:
    """An NNX filter: the variables under attribute ``prefix`` of the model, e.g. ``AtPath("head")``.

    A frozen dataclass (not a lambda), so that two optimizers with the same filter compare equal and a jitted train
    step is not compiled again for each.
    """

    prefix: str

    def __call__(self, path: tuple, value: Any) -> bool:
        return len(path) > 0 and str(path[0]) == self.prefix


def trainable(regime: str, *, head: str | None = "head") -> Any:
    """The filter of the variables a ``regime`` trains, for ``nnx.Optimizer(model, tx, wrt=...)``.

    ``head`` names the model's task-head attribute (``Classifier.head``); pass None for a model without one (a
    language model in instruction tuning), where ``"probe"`` has nothing to train and is refused.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")
    if head is not None and (not isinstance(head, str) or not head):
        raise ValueError(f"head must be the name of the model's head attribute or None; got {head!r}")
    if regime == "full":
        return nnx.Param
    if regime == "probe":
        if head is None:
            raise ValueError("regime 'probe' trains only a task head, but head=None; name the head attribute")
        return nnx.All(nnx.Param, AtPath(head))
    return LoRAParam if head is None else nnx.Any(LoRAParam, nnx.All(nnx.Param, AtPath(head)))


def trainable_count(model: nnx.Module, wrt: Any) -> int:
    """Number of parameters that the filter ``wrt`` selects in ``model`` (the ones an optimizer would update)."""
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(nnx.state(model, wrt)))


def optimizer_bytes(optimizer: nnx.Optimizer) -> int:
    """Bytes of the optimizer's state (Adam: two moments per trained parameter, plus step counters)."""
    if not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"optimizer must be an nnx.Optimizer; got {type(optimizer).__name__}")
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(nnx.state(optimizer.opt_state)))


# ---- training until the validation score stops improving ---------------------------------------------------------


@dataclasses.dataclass
class EarlyStopped:
    """What ``fit_early_stopping`` did: the steps it trained, the step whose weights it kept, the scores it saw."""

    steps: int  # optimizer steps trained in all
    best_step: int  # the step after which the validation score was best: the model holds these weights
    best_score: float
    eval_steps: list[int]  # the steps after which the validation score was measured
    scores: list[float]
    stopped_early: bool  # True if patience ran out before max_steps


def fit_early_stopping(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: LossFn,
    train: ArrayData,
    *,
    score_fn: Callable[[nnx.Module], float],
    max_steps: int,
    eval_every: int,
    patience: int,
    batch_size: int,
    key: jax.Array,
) -> EarlyStopped:
    """Train with ``fit`` for up to ``max_steps`` steps, scoring the model on validation data every ``eval_every``.

    ``score_fn(model)`` returns a validation score, higher is better (it runs with dropout off). Training stops once
    ``patience`` scores in a row have not beaten the best, and the model is left with the weights of its best score
    (the earliest, on a tie). Each stretch of ``eval_every`` steps draws its batches with ``fold_in(key, stretch)``.

    >>> run = fit_early_stopping(model, optimizer, classifier_loss, train,  # doctest: +SKIP
    ...                          score_fn=lambda m: valid_accuracy(m),
    ...                          max_steps=200, eval_every=20, patience=3, batch_size=16, key=jax.random.key(0))
    >>> run.best_step, run.steps, run.stopped_early                     # doctest: +SKIP
    (60, 120, True)
    """
    for name, value in (("max_steps", max_steps), ("eval_every", eval_every), ("patience", patience)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a function of the model returning a float; got {type(score_fn).__name__}")
    run = EarlyStopped(steps=0, best_step=0, best_score=-np.inf, eval_steps=[], scores=[], stopped_early=False)
    best, waited = None, 0
    while run.steps < max_steps:
        stretch = min(eval_every, max_steps - run.steps)
        fit(model, optimizer, loss_fn, train, steps=stretch, batch_size=batch_size,
            key=jax.random.fold_in(key, len(run.scores)), progress=False)
        run.steps += stretch
        model.eval()
        score = float(score_fn(model))
        model.train()
        run.eval_steps.append(run.steps)
        run.scores.append(score)
        if score > run.best_score:
            run.best_score, run.best_step, best, waited = score, run.steps, nnx.clone(model), 0
        else:
            waited += 1
            if waited >= patience:
                run.stopped_early = run.steps < max_steps
                break
    nnx.update(model, nnx.state(best))
    return run


# ---- instruction tuning -----------------------------------------------------------------------------------------


def _ids(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of token ids; got {array.dtype} {array.shape}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold non-negative token ids; got {int(array.min())}")
    return array.astype(np.int32)


def instruction_data(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    separator: Sequence[int],
    end: Sequence[int],
    seq_len: int,
    pad_id: int,
) -> ArrayData:
    """Token rows for instruction tuning: x = prompt + separator + response + end (right-padded), and y = x shifted
    by one with ``IGNORE`` wherever the next token is still prompt, separator or padding.

    So the loss (``masked_lm_loss``) counts the response and its end marker only. A prompt too long for ``seq_len``
    is cut from the left (its end, next to the separator, is kept). x and y are int32 of shape (n, seq_len).

    >>> d = instruction_data([([5, 6], [7])], separator=[1], end=[2], seq_len=6, pad_id=0)
    >>> d.x.tolist(), d.y.tolist()                          # predict 7 after the separator, then the end marker
    ([[5, 6, 1, 7, 0, 0]], [[-1, -1, 7, 2, -1, -1]])
    """
    if type(seq_len) is not int or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2; got {seq_len!r}")
    if type(pad_id) is not int or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int token id; got {pad_id!r}")
    separator, end = _ids(separator, "separator"), _ids(end, "end")
    if len(end) == 0:
        raise ValueError("end must hold at least one token id (the model must learn where a response stops)")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("pairs must be a non-empty sequence of (prompt ids, response ids); "
                         f"got {type(pairs).__name__}")
    x = np.full((len(pairs), seq_len), pad_id, np.int32)
    y = np.full((len(pairs), seq_len), IGNORE, np.int32)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be a (prompt ids, response ids) pair; got {pair!r}")
        prompt, response = _ids(pair[0], f"pairs[{i}] prompt"), _ids(pair[1], f"pairs[{i}] response")
        answer = np.concatenate([response, end])
        room = seq_len + 1 - len(separator) - len(answer)  # prompt tokens that fit (the last token is never an input)
        if room < 1 or len(prompt) == 0:
            raise ValueError(f"pairs[{i}]: the prompt ({len(prompt)} ids) needs at least one id, and the separator "
                             f"({len(separator)}) + response + end ({len(answer)}) must leave room for it in "
                             f"seq_len + 1 = {seq_len + 1}")
        context = np.concatenate([prompt[-room:], separator])
        row = np.concatenate([context, answer])  # (<= seq_len + 1,)
        x[i, : len(row) - 1] = row[:-1]
        y[i, len(context) - 1 : len(row) - 1] = answer  # targets at the positions that predict the answer
    return ArrayData(x, y)


def masked_cross_entropy(logits: Float[Array, "B T V"], targets: Int[Array, "B T"]) -> Float[Array, ""]:
    """Mean cross-entropy (nats) over the positions whose target is not ``IGNORE``; 0 if there are none."""
    return cross_entropy(logits, targets, ignore=IGNORE)


def masked_lm_loss(model: nnx.Module, x: Int[Array, "B T"], y: Int[Array, "B T"]) -> Float[Array, ""]:
    """The instruction-tuning loss of a language model: ``masked_cross_entropy(model(x), y)``, ``fit``'s ``loss_fn``."""
    return masked_cross_entropy(model(x), y)
