"""The sealed grader of the hidden tests in ``course/``: expected answers and comparisons captured before student code.

>>> grade = sealed_grader({"double": [("a vector", (np.arange(3.0),), {}, np.arange(3.0) * 2, 1e-6, 0.0)]})
>>> grade("double", lambda x: 2 * x)
'double: hidden cases passed (1)'

Two helpers serve the visible self-checks too. ``on_references(fn, references)`` runs a student's function with the
other parts of the assignment it calls (``forward`` inside ``backward``) replaced by reference versions, so that one
mistake costs only the part that makes it. ``forbidden_names(fn, names)`` lists the forbidden functions (say
``softmax``) that a student's function, or a helper of the student's it calls, refers to.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["forbidden_names", "on_references", "sealed_grader"]

_MISSING = object()
# Python's builtins as they are when labkit is imported (before any student code): a notebook that rebinds
# builtins.isinstance or builtins.sorted cannot change what the inspection below finds.
_isinstance, _getattr, _callable, _set, _sorted, _id, _dict = (builtins.isinstance, builtins.getattr,
                                                                builtins.callable, builtins.set, builtins.sorted,
                                                                builtins.id, builtins.dict)
_unwrap, _CodeType = inspect.unwrap, types.CodeType


def _namespace(fn: Callable) -> dict | None:
    """The global namespace ``fn`` reads its names from (a notebook's, for a function defined in one), or None."""
    fn = _unwrap(fn) if _callable(fn) else fn
    namespace = _getattr(fn, "__globals__", None)
    return namespace if _isinstance(namespace, _dict) else None


@contextlib.contextmanager
def on_references(fn: Callable, references: Mapping[str, Callable], *, keep: str = "") -> Iterator[None]:
    """While inside, the names in ``references`` (all but ``keep``) mean the reference functions in ``fn``'s globals.

    ``fn`` and every function of the notebook it calls then see labkit's ``forward``, not the student's; on leaving,
    the student's names are put back.
    """
    namespace = _namespace(fn)
    names = [name for name in references if name != keep]
    if namespace is None or not names:
        yield
        return
    saved = {name: namespace.get(name, _MISSING) for name in names}
    namespace.update({name: references[name] for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def _code_names(code: _CodeType) -> set[str]:
    names = _set(code.co_names)
    for const in code.co_consts:
        if _isinstance(const, _CodeType):  # nested functions, lambdas, comprehensions
            names |= _code_names(const)
    return names


def forbidden_names(fn: Callable, names: Sequence[str], *, skip: Sequence[str] = (),
                    _seen: set | None = None) -> list[str]:
    """The ``names`` that ``fn``'s code, or the code of a notebook function it calls (but not those named in
    ``skip``: other parts, checked on their own), refers to.

    A name counts unless it means a function the student defined in the notebook (a helper called ``softmax`` of the
    student's own is fine; ``jax.nn.softmax``, ``from jax.nn import softmax`` or ``softmax as sm`` is not).

    >>> import math
    >>> forbidden_names(lambda x: math.exp(x), ["exp"])
    ['exp']
    """
    seen = _set() if _seen is None else _seen
    fn = _unwrap(fn)
    code, namespace = _getattr(fn, "__code__", None), _namespace(fn)
    if code is None or _id(fn) in seen:
        return []
    seen.add(_id(fn))
    found = _set()
    for name in _sorted(_code_names(code)):
        value = namespace.get(name, _MISSING) if namespace is not None else _MISSING
        own = namespace is not None and _getattr(_unwrap(value) if _callable(value) else value, "__globals__",
                                                None) is namespace
        if not own and (name in names or _getattr(value, "__name__", None) in names):
            found.add(name)
        elif own and name not in skip:
            found |= _set(forbidden_names(value, names, skip=skip, _seen=seen))
    return _sorted(found)


def sealed_grader(cases: Mapping[str, Sequence[tuple]], *, ran_first: bool = True,
                  references: Mapping[str, Callable] | None = None,
                  forbidden: Mapping[str, Sequence[str]] | None = None) -> Callable[[str, Callable], str]:
    """``grade(part, fn)`` runs ``fn`` on each hidden case of ``part`` and fails at the first wrong answer.

    ``cases[part]`` lists ``(label, args, kwargs, expected, rtol, atol)``: ``fn(*args, **kwargs)`` must come close to
    ``expected``, an array or a tuple or dict of them. While ``fn`` runs, the other parts it may call are the
    ``references`` (so a mistake in an earlier part costs only that part), and ``forbidden[part]`` lists names the
    part may not use (``softmax``: the assignment asks for it to be built). ``ran_first=False`` (the setup cell found
    that other code had run before it) fails every part.

    Call this before any student code runs: every function it uses (NumPy's C functions, Python's builtins, the
    references) is bound now, in this closure, so rebinding names later (``numpy.allclose = ...``,
    ``builtins.abs = ...``, a labkit function) cannot change how it compares. It defends against rebinding, not
    against every trick a program can play inside its own process: see the instructor guide.
    """
    asarray, array, absolute, isfinite, argmax, unravel = (np.asarray, np.array, np.abs, np.isfinite, np.argmax,
                                                           np.unravel_index)
    ndarray, float64 = np.ndarray, np.float64
    isinstance_, len_, tuple_, list_, dict_, sorted_, type_, int_, str_, range_ = (
        builtins.isinstance, builtins.len, builtins.tuple, builtins.list, builtins.dict, builtins.sorted,
        builtins.type, builtins.int, builtins.str, builtins.range)
    references = dict_(references or {})
    forbidden = {part: tuple_(names) for part, names in (forbidden or {}).items()}
    bind, inspect_names = on_references, forbidden_names

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
            raise AssertionError(f"{what}: wrong at index {where}: got {got[where]}, expected {expected[where]}")

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
        used = inspect_names(fn, forbidden[part], skip=[n for n in references if n != part]) if part in forbidden \
            else ()
        assert not used, f"{part} uses {', '.join(used)}, which the assignment asks you to build, not call"
        with bind(fn, references, keep=part):
            for label, args, kwargs, expected, rtol, atol in frozen[part]:
                compare(f"{part} on {label}", fn(*copy(args), **copy(kwargs)), expected, rtol, atol)
        return f"{part}: hidden cases passed ({len_(frozen[part])})"

    return grade
