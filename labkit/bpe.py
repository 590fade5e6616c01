"""Byte-level BPE (byte-pair encoding), as in GPT-2: train merges, encode (also a stream), decode, save, load.

Text is cut into pre-tokens by a regular expression (words, numbers, punctuation, whitespace), each pre-token into
its UTF-8 bytes (ids 0..255), and the learned merges are applied inside each pre-token, lowest rank first.

>>> tok = BPETokenizer.train("aaabdaaabac", vocab_size=259)
>>> tok.merges                       # aa -> 256, then ab -> 257 (a tie with (256, 97), see train), then 256 257
((97, 97), (97, 98), (256, 257))
>>> tok.encode("aaabdaaabac").tolist()
[258, 100, 258, 97, 99]
>>> tok.decode([258, 100])
'aaabd'
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import AbstractSet, Collection, Iterable, Iterator, Literal, Sequence

import numpy as np
import regex

from labkit.bpe_files import gpt2_bytes_to_unicode  # noqa: F401 (re-exported: labkit.bpe is where readers look)
from labkit.bpe_files import _check_path, _read_json, read_gpt2_files, read_vocab
from labkit.bpe_stream import _split_on, encode_chunks, read_chunks
from labkit.bpe_train import _learn_merges, _replace_pair

# GPT-2's pre-tokenizer (openai/gpt-2, src/encoder.py); tiktoken's r50k_base uses the same expression.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_CACHE_SIZE = 1 << 18  # pre-tokens remembered by encode; the cache is emptied when it fills


def _compiled(pattern: str) -> regex.Pattern:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str; got {type(pattern).__name__}")
    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise ValueError(f"pattern must be a valid regular expression; got {pattern!r} ({error})") from None


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, then merge i as token 256 + i, then the special tokens.

    The special tokens may instead come first, as ids 0..k-1 (so bytes are k..k+255 and merge i is k + 256 + i).
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        *,
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        byte_ids: Sequence[int] | None = None,
    ):
        """``byte_ids[b]`` is the id of byte b; None means b itself, or k + b when the k special tokens come first
        (GPT-2's files use another order). Merges name ids the same way: (a, b) is a pair of earlier ids."""
        special_tokens = {} if special_tokens is None else special_tokens
        self._first = self._first_byte_id(special_tokens)  # 0, or k when the special tokens come first
        self.merges: tuple[tuple[int, int], ...] = self._checked_merges(merges)
        self.byte_ids: tuple[int, ...] = self._checked_byte_ids(byte_ids)
        self.special_tokens: dict[str, int] = self._checked_special_tokens(special_tokens)
        self._regex = _compiled(pattern)
        self.pattern = pattern
        names = [name.encode("utf-8") for name in sorted(self.special_tokens, key=self.special_tokens.get)]
        vocab = (names if self._first else []) + [b""] * 256
        for b, i in enumerate(self.byte_ids):
            vocab[i] = bytes([b])
        for a, b in self.merges:  # in order: a merge is built from bytes and earlier merges
            vocab.append(vocab[a] + vocab[b])
        vocab += [] if self._first else names
        self.vocab: tuple[bytes, ...] = tuple(vocab)  # id -> the bytes it stands for
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._merge_id = self._first + 256  # the id of merge 0
        self._cache: dict[str, list[int]] = {}

    # ---- construction ------------------------------------------------------------------------------------------

    @staticmethod
    def _first_byte_id(special_tokens: dict[str, int]) -> int:
        ok = isinstance(special_tokens, dict) and all(isinstance(s, str) and s for s in special_tokens)
        if not ok or not all(type(i) is int for i in special_tokens.values()):
            raise ValueError(f"special_tokens must map non-empty strings to int ids; got {special_tokens!r}")
        k = len(special_tokens)
        return k if k and sorted(special_tokens.values()) == list(range(k)) else 0

    def _checked_merges(self, merges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        if isinstance(merges, (str, bytes)) or not isinstance(merges, Sequence):
            raise TypeError(f"merges must be a sequence of (int, int) pairs; got {type(merges).__name__}")
        checked, first = [], self._first
        for rank, pair in enumerate(merges):
            ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(type(i) is int for i in pair)
            if not ok or not all(first <= i < first + 256 + rank for i in pair):
                raise ValueError(
                    f"merges[{rank}] must be a pair of ids, each in [{first}, {first + 255 + rank}] (bytes or earlier "
                    f"merges); got {pair!r}"
                )
            checked.append((pair[0], pair[1]))
        return tuple(checked)

    def _checked_byte_ids(self, byte_ids: Sequence[int] | None) -> tuple[int, ...]:
        ids = list(range(self._first, self._first + 256))
        if byte_ids is None:
            return tuple(ids)
        if sorted(byte_ids) != ids or not all(type(i) is int for i in byte_ids):
            raise ValueError(f"byte_ids must be None or a permutation of the ids {ids[0]}..{ids[-1]}; "
                             f"got {list(byte_ids)[:8]}...")
        return tuple(byte_ids)

    def _checked_special_tokens(self, special_tokens: dict[str, int]) -> dict[str, int]:
        after = 256 + len(self.merges)
        expected = list(range(after, after + len(special_tokens)))
        if not self._first and sorted(special_tokens.values()) != expected:
            raise ValueError(
                f"special_tokens must have the ids right after the merges, {expected}, or come first, "
                f"{list(range(len(special_tokens)))}; got {sorted(special_tokens.values())}"
            )
        return dict(special_tokens)

    @classmethod
    def train(
        cls, text: str, vocab_size: int, *, special_tokens: Sequence[str] = (), pattern: str = GPT2_PATTERN,
        specials_first: bool = False,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text`` (fewer if the pairs run out).

        Each merge is the adjacent pair of ids seen most often within the pre-tokens of ``text``; a tie goes to the
        smallest pair, comparing (first id, second id). Special tokens are cut out of ``text`` before counting; they
        get the last ids, or with ``specials_first`` the ids 0..k-1 (which shifts every other id up by k).

        >>> BPETokenizer.train("low lower lowest", vocab_size=258).merges   # (l, o) and (o, w) tie at 3
        ((108, 111), (256, 119))
        """
        if not isinstance(text, str) or not text:
            got = "an empty str" if isinstance(text, str) else type(text).__name__
            raise ValueError(f"text must be a non-empty str (the training corpus); got {got}")
        names_ok = all(isinstance(name, str) and name for name in special_tokens)
        if isinstance(special_tokens, str) or not names_ok or len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens must be a sequence of distinct non-empty strings; got {special_tokens!r}")
        smallest = 256 + len(special_tokens)
        if type(vocab_size) is not int or vocab_size < smallest:
            raise ValueError(
                f"vocab_size must be an int >= {smallest} (256 byte tokens + {len(special_tokens)} special); "
                f"got {vocab_size!r}"
            )
        compiled = _compiled(pattern)
        pieces: Counter[str] = Counter()
        for i, chunk in enumerate(_split_on(text, special_tokens)):
            if i % 2 == 0:  # the odd chunks are the special tokens themselves
                pieces.update(compiled.findall(chunk))
        try:
            word_counts = {tuple(piece.encode("utf-8")): n for piece, n in pieces.items()}
        except UnicodeEncodeError as error:
            raise ValueError(f"text must be valid Unicode; it has a lone surrogate ({error})") from None
        if not isinstance(specials_first, bool):
            raise TypeError(f"specials_first must be a bool; got {type(specials_first).__name__}")
        merges = _learn_merges(word_counts, vocab_size - smallest)
        if specials_first and special_tokens:
            shift = len(special_tokens)
            merges = [(a + shift, b + shift) for a, b in merges]
            return cls(merges, special_tokens={name: k for k, name in enumerate(special_tokens)}, pattern=pattern)
        first = 256 + len(merges)
        specials = {name: first + k for k, name in enumerate(special_tokens)}
        return cls(merges, special_tokens=specials, pattern=pattern)

    # ---- sizes and lookups -------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (V): 256 bytes + merges + special tokens."""
        return len(self.vocab)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Every non-special token's bytes -> its id, the ``mergeable_ranks`` of a ``tiktoken.Encoding``."""
        ids = range(self._first, self._merge_id + len(self.merges))
        ranks = {self.vocab[i]: i for i in ids}
        if len(ranks) != len(ids):  # training never makes such a pair; hand-made merges might
            raise ValueError("merges must make tokens with distinct bytes for tiktoken; two of them coincide")
        return ranks

    def special_id(self, name: str) -> int:
        """The id of the special token ``name``, e.g. ``tok.special_id("<|endoftext|>")``."""
        if name not in self.special_tokens:
            known = ", ".join(map(repr, self.special_tokens)) or "none"
            raise ValueError(f"name must be a special token of this tokenizer ({known}); got {name!r}")
        return self.special_tokens[name]

    # ---- encoding ----------------------------------------------------------------------------------------------

    def _encode_piece(self, piece: str) -> list[int]:
        """The ids of one pre-token: its bytes, then merges applied lowest rank first, every occurrence at once."""
        try:
            ids = [self.byte_ids[b] for b in piece.encode("utf-8")]
        except UnicodeEncodeError as error:
            raise ValueError(f"text must be valid Unicode; it has a lone surrogate in {piece!r} ({error})") from None
        while len(ids) > 1:
            pair = min(pairwise(ids), key=lambda p: self._ranks.get(p, len(self._ranks)))
            if pair not in self._ranks:
                break
            ids = _replace_pair(ids, pair, self._merge_id + self._ranks[pair])
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._encode_pieces(self._regex.findall(text))

    def _encode_pieces(self, pieces: Iterable[str]) -> list[int]:
        """The ids of a sequence of pre-tokens, each looked up in (or added to) the cache."""
        out: list[int] = []
        cache = self._cache
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                ids = cache[piece] = self._encode_piece(piece)
            out.extend(ids)
        return out

    def encode_ordinary(self, text: str) -> np.ndarray:
        """The ids of ``text``, int32 of shape (T,), reading special-token strings as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return np.array(self._encode_ordinary(text), dtype=np.int32)

    def _special_names(self, names: Literal["all"] | Collection[str], argument: str) -> set[str]:
        if names == "all":
            return set(self.special_tokens)
        if isinstance(names, str) or not isinstance(names, Collection):
            raise ValueError(f"{argument} must be 'all' or a collection of special token names; got {names!r}")
        unknown = sorted(set(names) - set(self.special_tokens))
        if unknown:
            known = ", ".join(map(repr, self.special_tokens)) or "none"
            raise ValueError(f"{argument} names {unknown}, not special tokens of this tokenizer (it has {known})")
        return set(names)

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> np.ndarray:
        """The ids of ``text``, int32 of shape (T,); special tokens as in tiktoken (see below).

        A special token in ``allowed_special`` becomes its id. One in ``disallowed_special`` (by default every
        special token not allowed) raises ValueError; pass ``disallowed_special=()`` to encode it as plain text.

        >>> tok = BPETokenizer.train("hi there", vocab_size=257, special_tokens=["<|endoftext|>"])
        >>> tok.encode("hi<|endoftext|>", allowed_special="all").tolist()
        [104, 105, 256]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        allowed = self._special_names(allowed_special, "allowed_special")
        disallowed = self._special_names(disallowed_special, "disallowed_special") - allowed
        self._check_disallowed(text, disallowed)
        ids: list[int] = []
        for i, chunk in enumerate(_split_on(text, allowed)):
            ids.extend([self.special_tokens[chunk]] if i % 2 else self._encode_ordinary(chunk))
        return np.array(ids, dtype=np.int32)

    def _check_disallowed(self, text: str, disallowed: Collection[str], start: int = 0) -> None:
        """Raise if ``text`` (which begins at character ``start`` of the input) holds a disallowed special token."""
        found = [name for name in disallowed if name in text]
        if found:
            name = min(found, key=text.index)  # report the first one in the text
            raise ValueError(
                f"text contains the special token {name!r} at position {start + text.index(name)}, which is "
                f"disallowed; pass allowed_special={{{name!r}}} to encode it as its id {self.special_tokens[name]}, "
                f"or disallowed_special=() to encode it as ordinary text"
            )

    def encode_stream(
        self,
        source: Iterable[str] | Path,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
        chunk_chars: int = 1 << 20,
    ) -> Iterator[np.ndarray]:
        """The ids of a text too large for memory, as int32 arrays, one per piece of input read.

        ``source`` is an iterable of strings (lines, blocks: cut anywhere) or a ``pathlib.Path`` to a UTF-8 file,
        read ``chunk_chars`` characters at a time exactly as stored (newlines untranslated). The ids, concatenated,
        are ``encode`` of the whole text, whatever the cuts; only the last few pre-tokens are held back between
        pieces, so memory does not grow with the input. A disallowed special token raises when it is reached.

        >>> tok = BPETokenizer.train("hi there", vocab_size=258)
        >>> np.concatenate(list(tok.encode_stream(["hi th", "ere\\n", "\\nhi"]))).tolist() == tok.encode(
        ...     "hi there\\n\\nhi").tolist()
        True
        """
        allowed = self._special_names(allowed_special, "allowed_special")
        disallowed = self._special_names(disallowed_special, "disallowed_special") - allowed
        return encode_chunks(self, read_chunks(source, chunk_chars), allowed, disallowed)

    # ---- decoding ----------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes that ``ids`` stand for; every id must lie in [0, V).

        >>> BPETokenizer([]).decode_bytes([226, 130])     # the first 2 of the 3 bytes of '€'
        b'\\xe2\\x82'
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D sequence of ints; got shape {ids.shape}, dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size - 1}]; got {ids[bad[0]]} at position {bad[0]}, which is "
                f"no token of this tokenizer"
            )
        return b"".join(self.vocab[i] for i in ids.tolist())

    def decode(self, ids: Sequence[int] | np.ndarray, *, errors: str = "replace") -> str:
        """The text of ``ids``; invalid UTF-8 follows ``errors``: "replace" (U+FFFD), "strict" (raise), "ignore"...

        >>> BPETokenizer([]).decode([226, 130, 104, 105])
        '�hi'
        """
        if not isinstance(errors, str):
            raise TypeError(f"errors must be the name of a codec error handler; got {type(errors).__name__}")
        try:
            codecs.lookup_error(errors)
        except LookupError:
            raise ValueError(
                f"errors must be a codec error handler such as 'replace', 'strict' or 'ignore'; got {errors!r}"
            ) from None
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors=errors)
        except UnicodeDecodeError as error:
            reason = f"{error.reason}: the ids' bytes are not valid UTF-8; decode with errors='replace' to see them"
            raise UnicodeDecodeError("utf-8", data, error.start, error.end, reason) from None

    # ---- files -------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a readable JSON file: the pattern, special tokens, byte ids if not 0..255, one merge a line."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path; got {type(path).__name__}")
        head = {
            "format": "labkit-bpe",
            "version": 1,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_ids": None if self.byte_ids == self._checked_byte_ids(None) else list(self.byte_ids),
        }
        lines = [json.dumps(head, indent=2)[:-2] + ',\n  "merges": [']  # [:-2] reopens the closing "\n}"
        lines.append(",\n".join(f"    [{a}, {b}]" for a, b in self.merges))
        lines.append("  ]\n}\n")
        Path(path).write_text("\n".join(lines), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by ``save``."""
        path = _check_path(path, "path")
        data = _read_json(path, "path")
        keys = {"format", "version", "pattern", "special_tokens", "byte_ids", "merges"}
        if not isinstance(data, dict) or data.get("format") != "labkit-bpe" or data.get("version") != 1:
            raise ValueError(f"path {path} must hold a labkit BPE file, format 'labkit-bpe' version 1; it does not")
        if set(data) != keys:
            raise ValueError(f"path {path} must have exactly the keys {sorted(keys)}; got {sorted(data)}")
        try:
            merges = [tuple(pair) if isinstance(pair, list) else pair for pair in data["merges"]]
            return cls(merges, special_tokens=data["special_tokens"], pattern=data["pattern"],
                       byte_ids=data["byte_ids"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"path {path} holds a malformed labkit BPE file: {error}") from None

    @classmethod
    def from_vocab(
        cls, vocab: dict[int, bytes], merges: Sequence[tuple[bytes, bytes]], *, special_tokens: Sequence[str] = (),
        pattern: str = GPT2_PATTERN,
    ) -> "BPETokenizer":
        """The tokenizer of a vocabulary (id -> bytes) and its merges as byte pairs, in the order they were learned.

        The special tokens may come first (ids 0..k-1) or after the merges; any not in ``vocab`` are added at the end.

        >>> vocab = {0: b"<|endoftext|>", **{1 + b: bytes([b]) for b in range(256)}, 257: b"hi"}
        >>> tok = BPETokenizer.from_vocab(vocab, [(b"h", b"i")], special_tokens=["<|endoftext|>"])
        >>> tok.encode("hi<|endoftext|>", allowed_special="all").tolist()
        [257, 0]
        """
        ids, specials, byte_ids = read_vocab(vocab, merges, special_tokens)
        return cls(ids, special_tokens=specials, pattern=pattern, byte_ids=byte_ids)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> "BPETokenizer":
        """The tokenizer of GPT-2's own ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges, one a line)."""
        merges, special_tokens, byte_ids = read_gpt2_files(encoder_json, vocab_bpe)
        return cls(merges, special_tokens=special_tokens, byte_ids=byte_ids)

    # ---- comparison --------------------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        mine = (self.merges, self.byte_ids, self.special_tokens, self.pattern)
        return mine == (other.merges, other.byte_ids, other.special_tokens, other.pattern)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")
