"""Encoding a text too large for memory, piece by piece (the streaming half of ``labkit.bpe``).

A pre-token can run across the cut between two pieces ("hel" | "lo"), and the regular expression decides some
pre-tokens by looking past them: GPT-2's ``\\s+(?!\\S)`` gives a run of spaces all but its last space when a word
follows ("a  b" -> "a", " ", " b"), but the whole run at the end of a text. So the pre-tokens near the end of what has
been read are held back until more text arrives, and only those that more text cannot change are encoded.

Which ones are those? GPT-2's pattern decides a pre-token [s, e) from the characters s .. max(e, s + 2): the character
that stops a run or satisfies the look-ahead, and the three of a contraction ("'ll"). A pre-token that ends ``_MARGIN``
or more characters before the end of the text read so far, and before the start of any special token that could still
be completed there, is therefore final. (A custom pattern that looks further ahead needs a larger margin.)

>>> from labkit.bpe import BPETokenizer
>>> tok = BPETokenizer([])                       # no merges: the ids are the UTF-8 bytes
>>> [tok.decode(ids) for ids in tok.encode_stream(["one two three  ", "  four"])]   # what each piece let out
['one two', ' three', '    four']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import regex

from labkit.bpe_files import _check_path

if TYPE_CHECKING:
    from labkit.bpe import BPETokenizer

__all__ = ["encode_chunks", "read_chunks"]

_MARGIN = 8  # characters held back past the last final pre-token; GPT-2's pattern needs 1 (see above)


def read_chunks(source: Iterable[str] | os.PathLike, chunk_chars: int) -> Iterator[str]:
    """The pieces of ``source``: its own strings, or a UTF-8 file read ``chunk_chars`` characters at a time."""
    if type(chunk_chars) is not int or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive int; got {chunk_chars!r}")
    if isinstance(source, str):
        raise TypeError("source must be an iterable of str or a pathlib.Path; got a str (pass [text] to encode one "
                        "text, or Path(name) to read a file)")
    if isinstance(source, os.PathLike):
        return _read_file(_check_path(Path(source), "source"), chunk_chars)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise TypeError(f"source must be an iterable of str or a pathlib.Path; got {type(source).__name__}")
    return iter(source)


def _read_file(path: Path, chunk_chars: int) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="") as file:  # newline="": "\r\n" stays as stored
        while chunk := file.read(chunk_chars):
            yield chunk


def encode_chunks(tok: "BPETokenizer", chunks: Iterable[str], allowed: set[str], disallowed: set[str]
                  ) -> Iterator[np.ndarray]:
    """The ids of the concatenated ``chunks`` (see the module docstring), one int32 array per chunk that adds any."""
    hold = _MARGIN + max(map(len, allowed), default=0)  # characters at the end that more text could still change
    window = max(map(len, disallowed), default=1) - 1  # characters kept to find a disallowed token across a cut
    pending, recent, seen = "", "", 0
    for chunk in chunks:
        if not isinstance(chunk, str):
            raise TypeError(f"source must yield str pieces; got {type(chunk).__name__}")
        tok._check_disallowed(recent + chunk, disallowed, start=seen - len(recent))
        seen += len(chunk)
        recent = (recent + chunk)[-window:] if window else ""
        ids, pending = _encode_final(tok, pending + chunk, allowed, safe=len(pending) + len(chunk) - hold)
        if ids:
            yield np.array(ids, dtype=np.int32)
    ids, _ = _encode_final(tok, pending, allowed, safe=None)
    if ids:
        yield np.array(ids, dtype=np.int32)


def _split_on(text: str, names: Iterable[str]) -> list[str]:
    """``text`` cut around the strings ``names``, which are kept at the odd positions of the result.

    >>> _split_on("a<|x|>b", ["<|x|>"])
    ['a', '<|x|>', 'b']
    """
    names = sorted(names, key=len, reverse=True)  # the longest first, where one name starts another
    if not names:
        return [text]
    return regex.split("(" + "|".join(regex.escape(name) for name in names) + ")", text)


def _encode_final(tok: "BPETokenizer", text: str, allowed: set[str], *, safe: int | None) -> tuple[list[int], str]:
    """(ids of the part of ``text`` that ends at or before ``safe`` and no more text can change, the rest of ``text``).

    ``safe=None``: ``text`` is the end of the input, and all of it is encoded.
    """
    parts = _split_on(text, allowed)  # ordinary text at the even indices, special tokens at the odd ones
    ids: list[int] = []
    start = 0
    for i, part in enumerate(parts):
        end = start + len(part)
        if safe is None or (i % 2 and end <= safe):
            ids.extend([tok.special_tokens[part]] if i % 2 else tok._encode_ordinary(part))
        elif i % 2 == 0 and i + 1 < len(parts) and end + len(parts[i + 1]) <= safe:
            ids.extend(tok._encode_ordinary(part))  # ends at a special token that is final: complete
        elif i % 2:
            return ids, text[start:]
        else:
            pieces, cut = _final_pieces(tok, part, safe - start)
            ids.extend(tok._encode_pieces(pieces))
            return ids, text[start + cut:]
        start = end
    return ids, ""


def _final_pieces(tok: "BPETokenizer", text: str, limit: int) -> tuple[list[str], int]:
    """(the pre-tokens of ``text`` that end at or before ``limit``, the end of the last of them)."""
    pieces, cut = [], 0
    for match in tok._regex.finditer(text):
        if match.end() > limit:
            break
        pieces.append(match.group())
        cut = match.end()
    return pieces, cut
