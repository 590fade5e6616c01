"""The sealed grader of the hidden tests in ``course/``: expected answers and comparisons captured before student code.

>>> grade = sealed_grader({"double": [("a vector", (np.arange(3.0),), {}, np.arange(3.0) * 2, 1e-6, 0.0)]})
>>> grade("double", lambda x: 2 * x)
'double: hidden cases passed (1)'
"""

from __future__ import annotations

import builtins
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["sealed_grader"]


def sealed_grader(cases: Mapping[str, Sequence[tuple]], *, ran_first: bool = True) -> Callable[[str, Callable], str]:
    """``grade(part, fn)`` runs ``fn`` on each hidden case of ``part`` and fails at the first wrong answer.

    ``cases[part]`` lists ``(label, args, kwargs, expected, rtol, atol)``: ``fn(*args, **kwargs)`` must come close to
    ``expected``, an array or a tuple or dict of them. ``ran_first=False`` (the setup cell found that other code had
    run before it) fails every part. Call this before any student code runs: every function it uses (NumPy's C functions, Python's builtins)
    is bound now, in this closure, so rebinding names later (``numpy.allclose = ...``, ``builtins.abs = ...``, a
    labkit function) cannot change how it compares. It defends against rebinding, not against every trick a
    program can play inside its own process: see the instructor guide.
    """
    asarray, array, absolute, isfinite, argmax, unravel = (np.asarray, np.array, np.abs, np.isfinite, np.argmax,
                                                           np.unravel_index)
    ndarray, float64 = np.ndarray, np.float64
    isinstance_, len_, tuple_, list_, dict_, sorted_, type_, int_, str_, range_ = (
        builtins.isinstance, builtins.len, builtins.tuple, builtins.list, builtins.dict, builtins.sorted,
        builtins.type, builtins.int, builtins.str, builtins.range)

    def copy(value: Any) -> Any:  # a fresh copy for each call: a function that writes into its inputs changes no case
        if isinstance_(value, ndarray):
            return array(value, copy=True)
        if isinstance_(value, dict_):
            return {key: copy(item) for key, item in value.items()}
        if isinstance_(value, (tuple_, list_)):
            return type_(value)(copy(item) for item in value)
        return value

    def compare(what: str, actual: Any, expected: Any, rtol: float, atol: float) -> None:
        if isinstance_(expected, dict_):
            assert isinstance_(actual, dict_), f"{what}: expected a dict; got {type_(actual).__name__}"
            assert sorted_(actual) == sorted_(expected), f"{what}: expected keys {sorted_(expected)}"
            for key in expected:
                compare(f"{what}[{key!r}]", actual[key], expected[key], rtol, atol)
            return
        if isinstance_(expected, tuple_):
            assert isinstance_(actual, (tuple_, list_)) and len_(actual) == len_(expected), \
                f"{what}: expected a tuple of {len_(expected)} items"
            for i in range_(len_(expected)):
                compare(f"{what}[{i}]", actual[i], expected[i], rtol, atol)
            return
        got = asarray(actual)
        assert got.shape == expected.shape, f"{what}: expected shape {expected.shape}; got {got.shape}"
        kind = expected.dtype.kind
        if kind in "biu":  # masks, token ids: exact
            assert got.dtype.kind == kind or (kind in "iu" and got.dtype.kind in "iu"), \
                f"{what}: expected dtype kind {kind!r}; got {got.dtype}"
            bad = got != expected
        else:
            got = got.astype(float64)
            bad = ~isfinite(got) | (absolute(got - expected) > atol + rtol * absolute(expected))
        if bad.any():
            where = tuple_(int_(i) for i in unravel(argmax(bad), bad.shape))
            assert False, f"{what}: wrong at index {where}: got {got[where]}, expected {expected[where]}"

    def freeze(value: Any) -> Any:  # the expected answer: dicts and tuples of arrays; lists and numbers become arrays
        if isinstance_(value, dict_):
            return {key: freeze(item) for key, item in value.items()}
        if isinstance_(value, tuple_):
            return tuple_(freeze(item) for item in value)
        return array(value, copy=True)

    frozen = {part: [(str_(label), copy(tuple_(args)), copy(dict_(kwargs)), freeze(expected), rtol, atol)
                     for label, args, kwargs, expected, rtol, atol in items] for part, items in cases.items()}

    def grade(part: str, fn: Callable) -> str:
        assert ran_first, "the grading setup cell did not run first (were cells moved above it?): no hidden test passes"
        assert part in frozen, f"no hidden cases for {part!r}"
        for label, args, kwargs, expected, rtol, atol in frozen[part]:
            compare(f"{part} on {label}", fn(*copy(args), **copy(kwargs)), expected, rtol, atol)
        return f"{part}: hidden cases passed ({len_(frozen[part])})"

    return grade
