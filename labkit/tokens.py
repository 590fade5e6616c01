"""Token ids on disk, memory-mapped, and random training windows cut from them (chapter 4).

A corpus is tokenized once and written as one flat array of ids (a ``.npy`` file, uint16 when the vocabulary fits,
else uint32). Training opens it memory-mapped, so only the windows a batch uses are read from disk, and draws
windows of T + 1 consecutive ids at uniformly random starts: x = window[:-1], y = window[1:]. A corpus larger than
memory is tokenized as a stream (``write_token_stream``).

>>> path = write_tokens(directory / "pydoc.npy", ids, vocab_size=tok.vocab_size)  # doctest: +SKIP
>>> train_ids, valid_ids = split_tokens(open_tokens(path), validation_fraction=0.1)  # doctest: +SKIP
>>> windows = TokenWindows(train_ids, seq_len=128)  # doctest: +SKIP
>>> x, y = windows.batch(key, 0, batch_size=16)     # (16, 128) each; y[:, :-1] == x[:, 1:]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np

_UINT16_VOCAB = 1 << 16  # ids 0 .. 65535 fit in uint16
_CHUNK = 1 << 22  # ids checked at a time, so that a memory-mapped file is never read whole into memory


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary: uint16 up to 65,536 ids, else uint32.

    >>> token_dtype(50257), token_dtype(100277)
    (dtype('uint16'), dtype('uint32'))
    """
    if type(vocab_size) is not int or not 1 <= vocab_size <= 1 << 32:
        raise ValueError(f"vocab_size must be an int in [1, 2**32]; got {vocab_size!r}")
    return np.dtype(np.uint16 if vocab_size <= _UINT16_VOCAB else np.uint32)


def _check_ids(ids: np.ndarray, vocab_size: int | None, argument: str) -> None:
    if ids.ndim != 1:
        raise ValueError(f"{argument} must be a flat (n,) array of token ids; got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{argument} is empty; expected at least one token id")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{argument} must hold integer token ids; got dtype {ids.dtype}")
    low, high = None, None
    for start in range(0, ids.size, _CHUNK):
        chunk = ids[start : start + _CHUNK]
        low = int(chunk.min()) if low is None else min(low, int(chunk.min()))
        high = int(chunk.max()) if high is None else max(high, int(chunk.max()))
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        expected = "non-negative ids" if vocab_size is None else f"ids in [0, {vocab_size - 1}] (the vocabulary)"
        raise ValueError(f"{argument} must be {expected}; got values from {low} to {high}")


def write_tokens(path: str | Path, ids: Any, *, vocab_size: int, overwrite: bool = False) -> Path:
    """Write token ``ids`` to ``path`` as a ``.npy`` file, atomically; return the path.

    The array goes to a temporary file in the same folder, is flushed to disk, and only then renamed to ``path``:
    an interrupted write never leaves a partial file, and an existing ``path`` is replaced (with ``overwrite=True``)
    only by a complete one.
    """
    path = Path(path)
    ids = np.asarray(ids)
    token_dtype(vocab_size)  # validates vocab_size
    _check_ids(ids, vocab_size, "ids")
    if path.exists() and not overwrite:
        raise FileExistsError(f"path {path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of path, {path.parent}, does not exist; create it first")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            np.save(f, ids.astype(token_dtype(vocab_size)), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_token_stream(path: str | Path, chunks: Iterable[Any], *, vocab_size: int, overwrite: bool = False) -> Path:
    """Write the ids of ``chunks`` (arrays of ids, e.g. ``tokenizer.encode_stream(data.read_corpus())``) one after
    another to the ``.npy`` file ``path``, atomically; memory holds one chunk at a time, whatever the corpus size.

    The ids go to a raw temporary file as they come; once their number is known, the ``.npy`` header and the ids
    are copied, block by block, into a second temporary file that is renamed to ``path``.

    >>> path = write_token_stream(directory / "corpus.npy", tok.encode_stream(data.read_corpus("books/")),
    ...                           vocab_size=tok.vocab_size)  # doctest: +SKIP
    """
    path = Path(path)
    dtype = token_dtype(vocab_size)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path {path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of path, {path.parent}, does not exist; create it first")
    raw = path.with_name(f".{path.name}.{os.getpid()}.ids")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        count = 0
        with open(raw, "wb") as f:
            for i, chunk in enumerate(chunks):
                ids = np.asarray(chunk)
                if ids.size:
                    _check_ids(ids, vocab_size, f"chunk {i} of chunks")
                    f.write(ids.astype(dtype).tobytes())
                    count += ids.size
        if count == 0:
            raise ValueError("chunks held no token ids; expected at least one")
        with open(partial, "wb") as out, open(raw, "rb") as f:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": False, "shape": (count,)})
            for block in iter(lambda: f.read(1 << 20), b""):  # 1 MB at a time
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        raw.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return path


def open_tokens(path: str | Path, *, vocab_size: int | None = None) -> np.ndarray:
    """The token ids in ``path`` (from ``write_tokens``), memory-mapped read-only: (n,) uint16 or uint32.

    With ``vocab_size``, every id is checked to lie in the vocabulary (one pass over the file, in chunks).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} is not a file; write one with labkit.tokens.write_tokens")
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"path {path} is not a .npy array file ({error})") from None
    if ids.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"path {path} must hold uint16 or uint32 token ids; got dtype {ids.dtype}")
    if vocab_size is not None:
        token_dtype(vocab_size)
    _check_ids(ids, vocab_size, f"the ids in {path}")
    return ids


def split_tokens(ids: np.ndarray, *, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``1 - validation_fraction`` of the stream for training, the rest for validation (views: no copy).

    A contiguous split, not a shuffle: windows cut from the two parts never share a token.

    >>> split_tokens(np.arange(10), validation_fraction=0.2)
    (array([0, 1, 2, 3, 4, 5, 6, 7]), array([8, 9]))
    """
    if getattr(ids, "ndim", None) != 1 or len(ids) < 2:
        raise ValueError(f"ids must be a flat (n,) array with n >= 2; got shape {getattr(ids, 'shape', None)}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) \
            or not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be a float strictly between 0 and 1; got {validation_fraction!r}")
    n_valid = int(round(len(ids) * validation_fraction))
    if not 0 < n_valid < len(ids):
        raise ValueError(f"validation_fraction={validation_fraction} of {len(ids)} ids leaves an empty part")
    return ids[: len(ids) - n_valid], ids[len(ids) - n_valid :]


def _generator(key: jax.Array, index: int) -> np.random.Generator:
    """A NumPy generator that is a pure function of (``key``, ``index``): batch ``index`` is the same in every run,
    and a resumed run can draw batch ``index`` without drawing the ones before it."""
    if not isinstance(key, jax.Array) or not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape:
        raise TypeError(f"key must be one typed key from jax.random.key(seed); got {getattr(key, 'dtype', key)!r}")
    if type(index) is not int or index < 0:
        raise ValueError(f"index must be a non-negative int (the batch number); got {index!r}")
    words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return np.random.default_rng([*words, index])


@dataclasses.dataclass(frozen=True)
class TokenWindows:
    """Every window of ``seq_len + 1`` consecutive ids in a stream: a dataset of (x, y) pairs, y = x shifted by one."""

    ids: np.ndarray  # (n,) token ids; a memory-mapped array from open_tokens is read only where windows fall
    seq_len: int  # T: positions per input window

    def __post_init__(self) -> None:
        if type(self.seq_len) is not int or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive int; got {self.seq_len!r}")
        if getattr(self.ids, "ndim", None) != 1 or not np.issubdtype(self.ids.dtype, np.integer):
            got = f"{getattr(self.ids, 'dtype', type(self.ids).__name__)} {getattr(self.ids, 'shape', '')}"
            raise ValueError(f"ids must be a flat (n,) integer array; got {got}")
        if len(self.ids) < self.seq_len + 1:
            raise ValueError(f"ids has {len(self.ids)} tokens, fewer than seq_len + 1 = {self.seq_len + 1} "
                             "(one window of inputs and its shifted targets)")

    def __len__(self) -> int:
        """The number of windows: start positions 0 .. n - T - 1."""
        return len(self.ids) - self.seq_len

    def starts(self, key: jax.Array, index: int, batch_size: int) -> np.ndarray:
        """``batch_size`` window starts, uniform over 0 .. len(self) - 1, for batch number ``index`` of ``key``."""
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        return _generator(key, index).integers(0, len(self), size=batch_size)  # (B,)

    def batch(self, key: jax.Array, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch number ``index``: x and y, both (batch_size, T) int32; y[:, t] is the id that follows x[:, t]."""
        starts = self.starts(key, index, batch_size)  # (B,)
        windows = np.asarray(self.ids[starts[:, None] + np.arange(self.seq_len + 1)], np.int32)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]
