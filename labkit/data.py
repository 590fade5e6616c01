"""Datasets that are on every machine without internet, behind one small API; a checked optional download; and a
corpus of your own (a text file or folder, ``LABKIT_CORPUS``), read in chunks.

>>> sorted(list_datasets())[:3]
['breast_cancer', 'diabetes', 'digits']
>>> text = load("pydoc")          # Python's own documentation, about 465,000 characters
>>> digits = load("digits")       # ArrayData with x of shape (1797, 64) and y of shape (1797,)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import sysconfig
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayData:
    """Features ``x`` of shape (n, ...) with targets ``y`` of shape (n,), and their names."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...] = ()
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.x) == 0:
            raise ValueError("ArrayData: x is empty; expected at least one example")
        if len(self.x) != len(self.y):
            raise ValueError(f"ArrayData: x has {len(self.x)} examples but y has {len(self.y)}; they must match")

    def __len__(self) -> int:
        return len(self.x)


# ---- local datasets ---------------------------------------------------------------------------------------------


def _pydoc() -> str:
    from pydoc_data import topics

    # Sorted so that the corpus is the same on every run; a blank line between topics.
    return "\n\n".join(topics.topics[name].strip() for name in sorted(topics.topics))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    files = [p for p in sorted(root.rglob("*.py")) if not skip.intersection(p.relative_to(root).parts)]
    if not files:
        raise FileNotFoundError(f"no standard-library .py files found under {root}")
    return files


def _stdlib(max_files: int | None = None) -> str:
    files = _stdlib_files()
    if max_files is not None:
        if not isinstance(max_files, int) or max_files < 1:
            raise ValueError(f"max_files must be a positive int or None; got {max_files!r}")
        files = files[:max_files]
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def _sklearn(name: str) -> Callable[[], ArrayData]:
    def load_it() -> ArrayData:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        targets = tuple(str(t) for t in getattr(bunch, "target_names", ()))
        return ArrayData(bunch.data, bunch.target, tuple(getattr(bunch, "feature_names", ())), targets)

    return load_it


def _sample_file(name: str) -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib sample file {name!r} not found at {path}; reinstall matplotlib")
    return path


def _eeg() -> np.ndarray:
    # Read as matplotlib's own example (mri_with_eeg.py) does: float64 samples of 4 channels, interleaved.
    raw = np.fromfile(_sample_file("eeg.dat"), dtype=np.float64)
    return raw.reshape(-1, 4).astype(np.float32)


def _mri() -> np.ndarray:
    with gzip.open(_sample_file("s1045.ima.gz")) as f:
        return np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)


_LOCAL: dict[str, tuple[Callable[..., Any], str]] = {
    "pydoc": (_pydoc, "str: Python's documentation topics (pydoc_data), ~465k characters of English prose"),
    "stdlib": (_stdlib, "str: the Python standard library's .py sources (several MB of code); option max_files"),
    "digits": (_sklearn("digits"), "ArrayData: 1,797 8x8 handwritten digits, x (1797, 64) in 0..16, y in 0..9"),
    "breast_cancer": (_sklearn("breast_cancer"), "ArrayData: 569 tumours, 30 features, y 0 malignant / 1 benign"),
    "diabetes": (_sklearn("diabetes"), "ArrayData: 442 patients, 10 features, y disease progression after a year"),
    "eeg": (_eeg, "float32 array (samples, 4): matplotlib's sample EEG recording"),
    "mri": (_mri, "float32 array (256, 256): matplotlib's sample MRI slice"),
}


def list_datasets() -> dict[str, str]:
    """Names of the offline datasets, each with a one-line description of what ``load`` returns."""
    return {name: description for name, (_, description) in _LOCAL.items()}


def load(name: str, **options: Any) -> Any:
    """Load the offline dataset ``name`` (see ``list_datasets``); no network is used."""
    if name not in _LOCAL:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {', '.join(sorted(_LOCAL))}")
    loader, _ = _LOCAL[name]
    return loader(**options)


def train_test_split(data: ArrayData, *, test_fraction: float, key: jax.Array) -> tuple[ArrayData, ArrayData]:
    """Shuffle ``data`` with ``key`` and split off ``test_fraction`` of it as a test set."""
    if not isinstance(data, ArrayData):
        raise TypeError(f"data must be an ArrayData; got {type(data).__name__}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1; got {test_fraction!r}")
    n = len(data.x)
    n_test = int(round(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise ValueError(f"test_fraction={test_fraction} of {n} examples leaves an empty train or test set")
    order = np.asarray(jax.random.permutation(key, n))
    test, train = order[:n_test], order[n_test:]
    pick = lambda idx: ArrayData(data.x[idx], data.y[idx], data.feature_names, data.target_names)  # noqa: E731
    return pick(train), pick(test)


# ---- optional downloads -----------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """A file could not be downloaded (offline, or the server failed)."""


class ChecksumError(RuntimeError):
    """A downloaded or cached file does not have the expected SHA-256."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A public file that may be downloaded on request: where it is, its SHA-256, and its name in the cache."""

    url: str
    sha256: str
    filename: str

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteFile.url must start with http:// or https://; got {self.url!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"RemoteFile.sha256 must be 64 lowercase hex digits; got {self.sha256!r}")
        if not self.filename or "/" in self.filename or self.filename in (".", ".."):
            raise ValueError(f"RemoteFile.filename must be a plain file name; got {self.filename!r}")


def cache_dir() -> Path:
    """Where downloads are kept: ``$LABKIT_CACHE`` if set, else ``~/.cache/labkit``."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit")


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(remote: RemoteFile, *, cache: Path | None = None, timeout: float = 30.0) -> Path:
    """The local path of ``remote``, downloading it into the cache first if it is not there.

    The download is ``pooch.retrieve``'s (the scientific-Python library for checked downloads): into a temporary
    file in the cache folder, checked against ``remote.sha256``, and only then renamed into place, so a failed or
    corrupted download never leaves a file in the cache. A cached file with another hash is refused, not replaced.
    """
    import pooch
    import requests

    if not isinstance(remote, RemoteFile):
        raise TypeError(f"remote must be a RemoteFile; got {type(remote).__name__}")
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / remote.filename
    if path.exists():
        found = sha256_of(path)
        if found != remote.sha256:
            raise ChecksumError(
                f"cached file {path} has sha256 {found}, expected {remote.sha256}; "
                f"delete it to download {remote.url} again"
            )
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(remote.url, known_hash=f"sha256:{remote.sha256}", fname=remote.filename, path=folder,
                       downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=False))
    except (requests.exceptions.RequestException, OSError) as error:
        raise DownloadError(
            f"could not download {remote.url} ({error}). If this machine is offline, copy the file by other "
            f"means to {path} (expected sha256 {remote.sha256})"
        ) from error
    except ValueError as error:  # pooch's hash mismatch; the download is already deleted
        if "hash" not in str(error).lower():
            raise
        found = re.search(r"but got (\w+)", str(error))
        raise ChecksumError(f"download of {remote.url} has sha256 {found.group(1) if found else '?'}, expected "
                            f"{remote.sha256}; it was discarded") from None
    return path


# ---- a corpus you bring -----------------------------------------------------------------------------------------

CORPUS_VAR = "LABKIT_CORPUS"  # environment variable naming a text file or a folder of text files


def corpus_files(source: str | Path | None = None) -> list[Path]:
    """The files of a text corpus you bring: ``source`` (default ``$LABKIT_CORPUS``) is one text file or a folder,
    whose files are taken recursively in sorted order (hidden files and folders left out)."""
    if source is None:
        source = os.environ.get(CORPUS_VAR) or None
        if source is None:
            raise ValueError(f"no corpus given: pass source= (a text file or folder) or set {CORPUS_VAR}")
    root = Path(source).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"corpus source {root} is neither a file nor a folder")
    files = [p for p in sorted(root.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise FileNotFoundError(f"corpus folder {root} holds no files")
    return files


def read_corpus(source: str | Path | None = None, *, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """The text of ``corpus_files(source)``, at most ``chunk_chars`` characters at a time, files joined by a blank
    line as in ``load("stdlib")``. Memory does not grow with the corpus; pass it to ``BPETokenizer.encode_stream``.

    Files are read as UTF-8 (undecodable bytes replaced) with their line ends as stored.
    """
    if type(chunk_chars) is not int or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive int; got {chunk_chars!r}")
    for i, path in enumerate(corpus_files(source)):
        if i:
            yield "\n\n"
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for chunk in iter(lambda: f.read(chunk_chars), ""):
                yield chunk


def corpus_head(source: str | Path | None = None, *, chars: int) -> str:
    """The first ``chars`` characters of the corpus: enough text to learn a tokenizer's merges from."""
    if type(chars) is not int or chars < 1:
        raise ValueError(f"chars must be a positive int; got {chars!r}")
    pieces, total = [], 0
    for chunk in read_corpus(source, chunk_chars=min(chars, 1 << 20)):
        pieces.append(chunk[: chars - total])
        total += len(pieces[-1])
        if total >= chars:
            break
    return "".join(pieces)


# Named public corpora for optional download. Each entry needs a SHA-256 recorded from a verified copy; none is
# listed yet because the machines this project is built on have no internet to record one. Use ``fetch`` with your
# own RemoteFile meanwhile.
REMOTE: dict[str, RemoteFile] = {}
