"""Self-checks of chapter 4's assignment: BPE pair counts, a merge step, training, and the learning-rate schedule."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any, Callable, Mapping

import numpy as np

from labkit.bpe import BPETokenizer, _replace_pair
from labkit.grading import on_references
from labkit.selfcheck_core import _fail, check_rules

__all__ = ["BPE_FORBIDDEN", "bpe_references", "check_lr_schedule", "check_merge", "check_pair_counts",
           "check_train_bpe", "merge_reference", "pair_counts_reference", "schedule_reference"]

BPE_FORBIDDEN = ("BPETokenizer", "_replace_pair", "make_schedule", "warmup_cosine_decay_schedule",
                 "cosine_decay_schedule", "optax", "labkit", "selfcheck")
_WHY = "the assignment asks you to write it in plain Python (no labkit.bpe, labkit.optim or optax)"
PARTS = ("pair_counts", "merge", "train_bpe", "lr_schedule")


def pair_counts_reference(words: Mapping[tuple, int]) -> dict[tuple[int, int], int]:
    """{pair: count} of adjacent ids inside each word, each word weighted by its count."""
    counts: Counter = Counter()
    for word, count in words.items():
        for pair in pairwise(word):
            counts[pair] += count
    return dict(counts)


def merge_reference(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """labkit.bpe's merge step: a new list, ``pair`` replaced by ``new_id`` from left to right."""
    return list(_replace_pair(list(ids), tuple(pair), new_id))


def bpe_references() -> dict[str, Callable]:
    """The parts ``train_bpe`` calls, as labkit computes them: what its test gives it in place of the student's."""
    return {"pair_counts": pair_counts_reference, "merge": merge_reference}


def _alone(check: str, fn: Callable, part: str) -> Any:
    check_rules(check, fn, BPE_FORBIDDEN, _WHY, parts=PARTS)
    return on_references(fn, bpe_references(), keep=part)


def check_pair_counts(pair_counts: Callable) -> str:
    """``pair_counts(words)``: {pair: count} of adjacent ids, each word's pairs counted ``words[word]`` times."""
    name = "check_pair_counts"
    words = {(1, 2, 3): 2, (2, 3): 1, (4,): 5, (7, 7, 7): 1}
    expected = {(1, 2): 2, (2, 3): 3, (7, 7): 2}
    with _alone(name, pair_counts, "pair_counts"):
        counts = pair_counts(dict(words))
    if not isinstance(counts, Mapping):
        _fail(name, f"pair_counts must return a dict {{pair: count}}; got {type(counts).__name__}")
    for pair, count in expected.items():
        got = counts.get(pair, 0)
        if got != count:
            _fail(name, f"pair {pair} must be counted {count} times in {words}; got {got}"
                        + (" (multiply each pair by its word's count)" if pair == (2, 3) else "")
                        + (" (overlapping pairs count: (7, 7, 7) holds (7, 7) twice)" if pair == (7, 7) else ""))
    extra = [pair for pair, count in counts.items() if pair not in expected and count]
    if extra:
        _fail(name, f"{extra[0]} is not an adjacent pair inside any word of {words}; never count across words")
    return f"{name}: the worked example passes"


def check_merge(merge: Callable) -> str:
    """``merge(ids, pair, new_id)``: a new list, every occurrence of ``pair`` (left to right) replaced by ``new_id``."""
    name = "check_merge"
    for ids, pair, new_id, hint in (([1, 2, 3, 1, 2], (1, 2), 9, ""), ([1, 1, 1], (1, 1), 7,
                                    " (scan left to right; a merged pair's ids are not used again)"),
                                    ([5], (5, 5), 9, ""), ([], (1, 2), 9, ""), ([2, 1], (1, 2), 9, "")):
        given = list(ids)
        with _alone(name, merge, "merge"):
            got = merge(given, pair, new_id)
        if given != ids:
            _fail(name, f"merge changed the list it was given ({ids} became {given}); return a new list")
        expected = _replace_pair(ids, pair, new_id)
        if list(np.asarray(got, dtype=np.int64).reshape(-1)) != expected:
            _fail(name, f"merge({ids}, {pair}, {new_id}) must be {expected}; got {list(got)}{hint}")
    return f"{name}: 5 cases pass"


def check_train_bpe(train_bpe: Callable) -> str:
    """``train_bpe(text, num_merges)``: the merges labkit's BPETokenizer.train learns, in order."""
    name = "check_train_bpe"
    for text, n in (("aaabdaaabac", 3), ("low lower lowest", 2), ("ab ab ab", 5)):
        expected = list(BPETokenizer.train(text, vocab_size=256 + n).merges)
        with _alone(name, train_bpe, "train_bpe"):
            got = [tuple(int(i) for i in pair) for pair in train_bpe(text, n)]
        for rank, (want, have) in enumerate(zip(expected, got, strict=False)):
            if want != have:
                _fail(name, f"merge {rank} of {text!r} must be {want}; got {have}. Pick the most frequent pair; on a "
                            f"tie, the smallest pair (compare the first ids, then the second)")
        if len(got) != len(expected):
            _fail(name, f"{text!r} with {n} merges gives {len(expected)} merges (stop when no pair is left); "
                        f"got {len(got)}")
    return f"{name}: 3 texts pass"


def schedule_reference(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float) -> float:
    """labkit.optim.make_schedule's rate at ``step``: warm-up to ``peak_lr``, cosine decay to ``final_lr``."""
    from labkit.optim import TrainConfig, make_schedule  # here, so that only this check needs the training stack

    config = TrainConfig(steps=total_steps, warmup_steps=warmup_steps, learning_rate=peak_lr,
                         final_learning_rate=final_lr, batch_size=1, seq_len=1)
    return float(make_schedule(config)(step))


def check_lr_schedule(lr_schedule: Callable) -> str:
    """``lr_schedule(step, peak_lr=, warmup_steps=, total_steps=, final_lr=)``: warm-up, then cosine decay."""
    name = "check_lr_schedule"
    settings = dict(peak_lr=1e-3, warmup_steps=10, total_steps=100, final_lr=1e-4)
    check_rules(name, lr_schedule, BPE_FORBIDDEN, _WHY, parts=PARTS)
    for step in (0, 4, 9, 10, 55, 100, 150, *range(0, 120, 7)):
        want = schedule_reference(step, **settings)
        got = float(lr_schedule(step, **settings))
        if not abs(got - want) <= 1e-6 * settings["peak_lr"] + 1e-5 * abs(want):
            phase = ("warm-up: peak_lr * (step + 1) / warmup_steps, so that step 0 already learns and step "
                     "warmup_steps - 1 reaches the peak" if step < 10 else
                     "cosine decay: final_lr + (peak_lr - final_lr) * (1 + cos(pi * progress)) / 2, progress 0 at "
                     "step warmup_steps" if step < 100 else "from total_steps on the rate stays at final_lr")
            _fail(name, f"at step {step} with {settings} the rate must be {want:.6g}; got {got:.6g} ({phase})")
    return f"{name}: warm-up, decay and the end pass"
