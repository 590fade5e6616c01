"""Real labeled tasks built offline from the Python standard library's own source files (chapter 4, fine-tuning).

``code_snippets``: which package a few lines of code come from. How it is made: every ``.py`` file of the chosen
standard-library packages (``labkit.data``'s file list: no test folders) is cut into consecutive blocks of ``lines``
lines; blocks with fewer than ``min_chars`` non-blank characters are dropped, and so is every block whose text
(stripped of indentation) occurs more than once anywhere (licence headers, ``pass`` blocks), so no snippet can be in
both splits. The label is the package (``asyncio``, ``email``, ...). The split is by **file**: a seeded shuffle puts
``test_fraction`` of each package's files (at least one) in the test set, so test snippets come from files the
training set never saw. Each class is capped at ``per_class`` snippets per split, drawn with the same seed.

``docstring_pairs``: (first line of a function's docstring, the function's name), for instruction tuning, read with
``ast`` from the same files and split by file in the same way.

>>> train, test = code_snippets(seed=0)
>>> train.classes
('asyncio', 'email', 'multiprocessing', 'unittest', 'xml')
>>> set(train.files).isdisjoint(test.files)
True
>>> data = encode_snippets(train, tokenizer, seq_len=64, pad_id=0)  # doctest: +SKIP
>>> # data: an ArrayData with x (n, 64) int32 token ids and y (n,) labels
"""

from __future__ import annotations

import ast
import dataclasses
import sysconfig
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from labkit.data import ArrayData, _stdlib_files

__all__ = ["DEFAULT_PACKAGES", "Snippets", "balanced_subset", "code_snippets", "docstring_pairs", "encode_snippets",
           "split_by_file"]

# Packages with several files each (so that a file-level split leaves files on both sides) in Python 3.10 to 3.13.
DEFAULT_PACKAGES = ("asyncio", "email", "multiprocessing", "unittest", "xml")


@dataclasses.dataclass(frozen=True)
class Snippets:
    """Texts with integer labels; ``classes[label]`` names the class, ``files[i]`` where text i was cut from."""

    texts: tuple[str, ...]
    labels: np.ndarray  # (n,) int32 in [0, len(classes))
    files: tuple[str, ...]  # path relative to the standard library, e.g. "asyncio/events.py"
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def _package_files(packages: Sequence[str]) -> dict[str, list[Path]]:
    if isinstance(packages, str) or not isinstance(packages, Sequence) or len(packages) < 2:
        raise ValueError(f"packages must be a sequence of at least two package names; got {packages!r}")
    if len(set(packages)) != len(packages):
        raise ValueError(f"packages must be distinct; got {packages!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, list[Path]] = {name: [] for name in packages}
    for path in _stdlib_files():
        parts = path.relative_to(root).parts
        if len(parts) > 1 and parts[0] in found:
            found[parts[0]].append(path)
    for name, files in found.items():
        if len(files) < 2:
            raise ValueError(f"package {name!r} has {len(files)} source file(s) in this standard library; each "
                             "package needs at least two (one for training, one for testing)")
    return found


def _split_files(files: dict[str, list[Path]], test_fraction: float, seed: int) -> dict[Path, bool]:
    """Each file -> True if it goes to the test set; per package, a seeded shuffle of its sorted files."""
    rng = np.random.default_rng(seed)
    is_test: dict[Path, bool] = {}
    for name in files:  # in the given order, so the result depends only on (packages, seed)
        paths = sorted(files[name])
        order = rng.permutation(len(paths))
        n_test = min(max(1, round(test_fraction * len(paths))), len(paths) - 1)
        for rank, i in enumerate(order):
            is_test[paths[i]] = rank < n_test
    return is_test


def _check_common(test_fraction: float, seed: int, name: str = "test_fraction") -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1; got {test_fraction!r}")
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")


def _blocks(text: str, lines: int, min_chars: int) -> list[str]:
    rows = [row.rstrip() for row in text.splitlines()]
    blocks = ["\n".join(rows[i : i + lines]) for i in range(0, len(rows), lines)]
    return [b for b in blocks if sum(not c.isspace() for c in b) >= min_chars]


def _key(block: str) -> str:
    return "\n".join(row.strip() for row in block.splitlines() if row.strip())


def code_snippets(
    *,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    lines: int = 6,
    min_chars: int = 80,
    test_fraction: float = 0.3,
    per_class: int | None = 400,
    seed: int = 0,
) -> tuple[Snippets, Snippets]:
    """(train, test) snippets of ``lines`` lines labelled by their package, split by file (see the module doc)."""
    _check_common(test_fraction, seed)
    for name, value in (("lines", lines), ("min_chars", min_chars)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if per_class is not None and (type(per_class) is not int or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None; got {per_class!r}")
    files = _package_files(packages)
    is_test = _split_files(files, test_fraction, seed)
    root = Path(sysconfig.get_paths()["stdlib"])
    cut = []  # (label, file, block)
    for label, name in enumerate(packages):
        for path in sorted(files[name]):
            text = path.read_text(encoding="utf-8", errors="replace")
            cut += [(label, path, block) for block in _blocks(text, lines, min_chars)]
    counts: dict[str, int] = {}
    for _, _, block in cut:
        counts[_key(block)] = counts.get(_key(block), 0) + 1
    unique = [item for item in cut if counts[_key(item[2])] == 1]  # a repeated text could land on both sides
    rng = np.random.default_rng([seed, 1])
    splits = []
    for test in (False, True):
        chosen = []
        for label in range(len(packages)):
            items = [item for item in unique if item[0] == label and is_test[item[1]] == test]
            order = rng.permutation(len(items))[: per_class or len(items)]
            chosen += [items[i] for i in sorted(order)]
        splits.append(Snippets(texts=tuple(b for _, _, b in chosen),
                               labels=np.array([lab for lab, _, _ in chosen], np.int32),
                               files=tuple(p.relative_to(root).as_posix() for _, p, _ in chosen),
                               classes=tuple(packages)))
    return splits[0], splits[1]


def split_by_file(snippets: Snippets, *, fraction: float, seed: int) -> tuple[Snippets, Snippets]:
    """(kept, held out): ``snippets`` split by source file, e.g. a validation set cut from the training set.

    Per class, a seeded shuffle of its files puts ``fraction`` of them (rounded, at least one, and never all) in the
    held-out part, so no file has snippets on both sides. A class cut from a single file cannot be split and is
    refused.

    >>> train, valid = split_by_file(train, fraction=0.2, seed=0)  # doctest: +SKIP
    >>> set(train.files).isdisjoint(valid.files)  # doctest: +SKIP
    True
    """
    if not isinstance(snippets, Snippets):
        raise TypeError(f"snippets must be a Snippets (from code_snippets); got {type(snippets).__name__}")
    _check_common(fraction, seed, name="fraction")
    held_files: set[str] = set()
    rng = np.random.default_rng([seed, 2])
    for label in range(len(snippets.classes)):
        files = sorted({f for f, lab in zip(snippets.files, snippets.labels, strict=True) if lab == label})
        if len(files) < 2:
            raise ValueError(f"class {snippets.classes[label]!r} has snippets from {len(files)} file(s); splitting by "
                             "file needs at least two")
        n_held = min(max(1, round(fraction * len(files))), len(files) - 1)
        held_files.update(files[i] for i in rng.permutation(len(files))[:n_held])
    held = np.array([f in held_files for f in snippets.files])

    def part(mask: np.ndarray) -> Snippets:
        rows = np.flatnonzero(mask)
        return Snippets(texts=tuple(snippets.texts[i] for i in rows), labels=snippets.labels[rows].copy(),
                        files=tuple(snippets.files[i] for i in rows), classes=snippets.classes)

    return part(~held), part(held)


def encode_snippets(snippets: Snippets, tokenizer: Any, *, seq_len: int, pad_id: int) -> ArrayData:
    """``ArrayData`` for a classifier: x (n, seq_len) int32, each text's first ``seq_len`` token ids then ``pad_id``
    up to the end; y (n,) the labels. ``pad_id`` must not occur in any encoded text (e.g. byte 0, NUL)."""
    if not isinstance(snippets, Snippets):
        raise TypeError(f"snippets must be a Snippets (from code_snippets); got {type(snippets).__name__}")
    if type(seq_len) is not int or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int; got {seq_len!r}")
    if type(pad_id) is not int or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int token id; got {pad_id!r}")
    x = np.full((len(snippets), seq_len), pad_id, np.int32)
    for i, text in enumerate(snippets.texts):
        ids = np.asarray(tokenizer.encode_ordinary(text))[:seq_len]
        if len(ids) == 0 or (ids == pad_id).any():
            raise ValueError(f"snippet {i} encodes to {len(ids)} ids{' including pad_id ' if len(ids) else ''}"
                             f"{pad_id if len(ids) else ''}; choose a pad_id no text uses")
        x[i, : len(ids)] = ids
    return ArrayData(x, snippets.labels.copy(), target_names=snippets.classes)


def balanced_subset(data: ArrayData, n: int, *, seed: int) -> ArrayData:
    """``n`` examples of ``data`` drawn with ``seed``, as evenly over the classes as they allow (round robin).

    >>> small = balanced_subset(train_data, 16, seed=0)          # 16 labels: 3 or 4 per class of 5  # doctest: +SKIP
    """
    if not isinstance(data, ArrayData):
        raise TypeError(f"data must be an ArrayData; got {type(data).__name__}")
    if type(n) is not int or not 1 <= n <= len(data):
        raise ValueError(f"n must be an int in [1, {len(data)}] (the examples in data); got {n!r}")
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.y)
    rank = np.empty(len(labels), np.int64)  # an example's place in its class's shuffled order
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where[rng.permutation(len(where))]] = np.arange(len(where))
    order = np.lexsort((rng.permutation(len(labels)), rank))[:n]  # all ranks 0 first, then ranks 1, ...
    order = np.sort(order)
    return ArrayData(data.x[order], data.y[order], data.feature_names, data.target_names)


def docstring_pairs(
    *, packages: Sequence[str] = DEFAULT_PACKAGES, test_fraction: float = 0.3, seed: int = 0, max_chars: int = 120
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) lists of (docstring's first line, function name) from ``packages``, split by file.

    Only public functions and methods (no leading underscore) whose docstring's first line has 10 to ``max_chars``
    characters; a pair whose docstring line occurs twice is dropped (so none is on both sides).

    >>> train, test = docstring_pairs(seed=0)
    >>> train[0]                                               # doctest: +SKIP
    ('Return the currently running event loop.', 'get_running_loop')
    """
    _check_common(test_fraction, seed)
    if type(max_chars) is not int or max_chars < 10:
        raise ValueError(f"max_chars must be an int >= 10; got {max_chars!r}")
    files = _package_files(packages)
    is_test = _split_files(files, test_fraction, seed)
    found = []  # (is test, doc line, name)
    for name in packages:
        for path in sorted(files[name]):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                    doc = (ast.get_docstring(node) or "").strip().split("\n")[0].strip()
                    if 10 <= len(doc) <= max_chars:
                        found.append((is_test[path], doc, node.name))
    counts: dict[str, int] = {}
    for _, doc, _ in found:
        counts[doc] = counts.get(doc, 0) + 1
    train = [(doc, fn) for test, doc, fn in found if not test and counts[doc] == 1]
    test = [(doc, fn) for test, doc, fn in found if test and counts[doc] == 1]
    return train, test
