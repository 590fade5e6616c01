"""What every self-check shares: the error it raises and the comparisons that turn a wrong array into a message."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np

__all__ = ["SelfCheckFailed", "check_rules"]


class SelfCheckFailed(AssertionError):
    """A self-check found a mistake; the message names it and, where it can, suggests the cause."""


# Messages are wrapped at this width, so that `nbgrader validate`, which cuts each line of an error at its
# Validator.width (90 characters unless the course's configuration says 120), shows the whole hint.
MESSAGE_WIDTH = 80


def _fail(check: str, message: str) -> None:
    raise SelfCheckFailed(textwrap.fill(f"{check}: {message}", width=MESSAGE_WIDTH, break_long_words=False,
                                        break_on_hyphens=False))


def _array(check: str, what: str, value: Any, shape: tuple[int, ...] | None = None, hint: str = "",
           layout: str = "") -> np.ndarray:
    """``value`` as a NumPy array of ``shape`` (named ``layout``, say "(B, N, T, S)"), or a SelfCheckFailed that says
    what came back instead."""
    if isinstance(value, tuple) and shape is not None and len(shape) != 1:
        _fail(check, f"{what} must be one array of shape {shape}; got a tuple of {len(value)} items")
    try:
        array = np.asarray(value)
    except Exception as error:  # a ragged list, an object that is not array-like, ...
        _fail(check, f"{what} must be an array; got {type(value).__name__} ({error})")
    if array.dtype == object:
        _fail(check, f"{what} must be an array of numbers; got {type(value).__name__} holding non-numbers")
    if shape is not None and array.shape != tuple(shape):
        named = f" = {layout}" if layout else ""
        order = ("; your axes are the right sizes in another order" if sorted(array.shape) == sorted(shape)
                 and len(set(shape)) > 1 else "")
        _fail(check, f"{what} must have shape {tuple(shape)}{named}; yours has shape {array.shape}{order}{hint}")
    return array


def _mismatch(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> tuple[int, ...] | None:
    """Index of the entry where ``actual`` differs most beyond tolerance, or None if all entries are close."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    excess = np.where(np.isfinite(actual), excess, np.inf)
    if excess.size == 0 or excess.max() <= 0:
        return None
    return tuple(int(i) for i in np.unravel_index(np.argmax(excess), excess.shape))


def _matches(actual: np.ndarray, candidate: Any, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    candidate = np.asarray(candidate)
    return actual.shape == candidate.shape and _mismatch(actual, candidate, rtol, atol) is None


def _compare(check: str, what: str, actual: np.ndarray, expected: Any, *, rtol: float = 1e-4, atol: float = 1e-6,
             likely: Sequence[tuple[Any, str]] = (), hint: str = "") -> None:
    """Fail at the largest difference; first try the ``likely`` mistakes (candidate value, hint) to explain it."""
    expected = np.asarray(expected)
    where = _mismatch(actual, expected, rtol, atol)
    if where is None:
        return
    for candidate, explanation in likely:
        if _matches(actual, candidate):
            _fail(check, f"{what}: {explanation}")
    _fail(check, f"{what}: wrong at index {where}: got {actual[where]:.6g}, expected {expected[where]:.6g} "
                 f"(the largest difference beyond tolerance){hint}")


def check_rules(check: str, fn: Any, forbidden: Sequence[str], why: str, parts: Sequence[str] = ()) -> None:
    """Fail if ``fn`` (or a helper of the student's it calls, other than the assignment's ``parts``) uses one of the
    ``forbidden`` names; ``why`` says why."""
    from labkit.grading import forbidden_names

    used = forbidden_names(fn, forbidden, skip=parts)
    if used:
        _fail(check, f"it uses {', '.join(used)}: {why}")
