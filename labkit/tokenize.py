"""Turning text into integer ids and back. Chapter 1 uses characters; chapter 4 adds byte-level BPE here.

>>> vocab = CharVocab.from_text("hello")
>>> vocab.encode("hell").tolist()
[1, 0, 2, 2]
>>> vocab.decode([3, 2])
'ol'
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class CharVocab:
    """A vocabulary of single characters, ids given in sorted character order."""

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("chars is empty; a vocabulary needs at least one character")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"chars must be single characters; got {bad[:5]!r}")
        self.chars: tuple[str, ...] = tuple(chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """The vocabulary of every character that occurs in ``text``."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty str")
        return cls(text)

    @property
    def size(self) -> int:
        """Number of distinct characters (V)."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text``'s characters, as int32 of shape (len(text),)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        try:
            return np.array([self._index[c] for c in text], dtype=np.int32)
        except KeyError as error:
            position = next(i for i, c in enumerate(text) if c not in self._index)
            raise ValueError(
                f"text has character {error.args[0]!r} at position {position}, which is not in the vocabulary"
            ) from None

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``; every id must lie in [0, V)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D sequence of ints; got shape {ids.shape}, dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must lie in [0, {self.size - 1}]; got values from {ids.min()} to {ids.max()}")
        return "".join(self.chars[i] for i in ids)
