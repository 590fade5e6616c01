"""BPE files: GPT-2's ``encoder.json`` + ``vocab.bpe`` and their byte-to-character map (the file half of
``labkit.bpe``).

>>> merges, special_tokens, byte_ids = read_gpt2_files("encoder.json", "vocab.bpe")   # doctest: +SKIP
>>> len(merges), special_tokens                                                        # doctest: +SKIP
(50000, {'<|endoftext|>': 50256})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

__all__ = ["gpt2_bytes_to_unicode", "read_gpt2_files", "read_vocab"]


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, used to write tokens in encoder.json and vocab.bpe.

    >>> m = gpt2_bytes_to_unicode()
    >>> m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _check_path(path: str | Path, argument: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{argument} must be a str or Path; got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: no file at {path}")
    return path


def _read_json(path: Path, argument: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{argument} {path} must be a JSON file; it does not parse: {error}") from None


def read_gpt2_files(
    encoder_json: str | Path, vocab_bpe: str | Path
) -> tuple[list[tuple[int, int]], dict[str, int], list[int]]:
    """(merges, special tokens, byte ids) of GPT-2's own ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges)."""
    encoder_path, merges_path = _check_path(encoder_json, "encoder_json"), _check_path(vocab_bpe, "vocab_bpe")
    encoder = _read_json(encoder_path, "encoder_json")
    if not isinstance(encoder, dict) or not all(type(i) is int for i in encoder.values()):
        raise ValueError(f"encoder_json {encoder_path} must hold a JSON object of token -> int id")

    def id_of(token: str, where: str) -> int:
        if token not in encoder:
            raise ValueError(f"{where}: token {token!r} is not in encoder_json {encoder_path}")
        return encoder[token]

    to_char = gpt2_bytes_to_unicode()
    byte_ids = [id_of(to_char[b], f"byte {b}") for b in range(256)]
    merges: list[tuple[int, int]] = []
    for number, line in enumerate(merges_path.read_text(encoding="utf-8").split("\n"), start=1):
        where = f"vocab_bpe {merges_path} line {number}"
        if (number == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where} must be two tokens separated by a space; got {line!r}")
        if id_of(parts[0] + parts[1], where) != 256 + len(merges):
            raise ValueError(f"{where}: GPT-2 gives merge k the id 256 + k = {256 + len(merges)}; "
                             f"encoder_json gives {parts[0] + parts[1]!r} the id {encoder[parts[0] + parts[1]]}")
        merges.append((id_of(parts[0], where), id_of(parts[1], where)))
    specials = {token: i for token, i in encoder.items() if i >= 256 + len(merges)}
    if len(encoder) != 256 + len(merges) + len(specials):
        raise ValueError(f"encoder_json {encoder_path} must hold the 256 bytes, the {len(merges)} merges and "
                         f"then only special tokens; it has {len(encoder)} entries, some of them extra")
    return merges, specials, byte_ids


def read_vocab(
    vocab: dict[int, bytes], merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str] = ()
) -> tuple[list[tuple[int, int]], dict[str, int], list[int]]:
    """(merges as id pairs, special tokens, byte ids) of a vocabulary (id -> bytes) and merges given as byte pairs.

    The ids must run 0..V-1: the special tokens first (0..k-1) or last, the 256 single bytes in any order, then merge r
    with the id (first byte id) + 256 + r. Special tokens missing from a vocab that has them last get the next ids.

    >>> vocab = {0: b"<|endoftext|>", **{1 + b: bytes([b]) for b in range(256)}, 257: b"ab"}
    >>> merges, specials, byte_ids = read_vocab(vocab, [(b"a", b"b")], ["<|endoftext|>"])
    >>> merges, specials, byte_ids[:2]
    ([(98, 99)], {'<|endoftext|>': 0}, [1, 2])
    """
    if not isinstance(vocab, dict) or not all(type(i) is int and isinstance(t, bytes) for i, t in vocab.items()):
        raise ValueError("vocab must be a dict of int id -> bytes")
    if isinstance(special_tokens, str) or not all(isinstance(name, str) and name for name in special_tokens):
        raise ValueError(f"special_tokens must be a sequence of non-empty strings; got {special_tokens!r}")
    by_bytes = {token: i for i, token in vocab.items()}
    if sorted(vocab) != list(range(len(vocab))) or len(by_bytes) != len(vocab):
        raise ValueError(f"vocab must have the ids 0..{len(vocab) - 1}, each once, with distinct bytes; it does not")
    specials = {name: by_bytes[name.encode("utf-8")] for name in special_tokens if name.encode("utf-8") in by_bytes}
    first = len(specials) if sorted(specials.values()) == list(range(len(specials))) else 0
    missing = [name for name in dict.fromkeys(special_tokens) if name not in specials]
    if first and missing:
        raise ValueError(f"special_tokens come first in vocab (ids 0..{first - 1}), so all of them must be in vocab; "
                         f"missing: {missing}")
    byte_ids = [by_bytes.get(bytes([b]), -1) for b in range(256)]
    if sorted(byte_ids) != list(range(first, first + 256)):
        raise ValueError(f"vocab must hold the 256 single bytes as the ids {first}..{first + 255}; it does not")
    pairs = []
    for rank, (a, b) in enumerate(merges):
        if by_bytes.get(a + b) != first + 256 + rank or a not in by_bytes or b not in by_bytes:
            raise ValueError(f"merges[{rank}] = {(a, b)!r} must join two tokens of vocab into the token with the id "
                             f"{first + 256 + rank}; vocab gives {a + b!r} the id {by_bytes.get(a + b)}")
        pairs.append((by_bytes[a], by_bytes[b]))
    rest = len(vocab) - (first + 256 + len(pairs)) - (0 if first else len(specials))
    if rest:
        raise ValueError(f"vocab has {rest} ids that are neither special tokens, bytes nor merges")
    specials.update({name: len(vocab) + n for n, name in enumerate(missing)})
    return pairs, specials, byte_ids
