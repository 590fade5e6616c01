import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest

from labkit import data
from localweb import serve


def test_every_listed_dataset_loads():
    for name in data.list_datasets():
        if name == "stdlib":
            loaded = data.load(name, max_files=3)
        else:
            loaded = data.load(name)
        assert len(loaded) > 0, name


def test_pydoc_is_python_documentation():
    text = data.load("pydoc")
    assert len(text) > 300_000
    assert "The assert statement" in text or "assert" in text
    assert text == data.load("pydoc")  # deterministic order


def test_stdlib_is_code_and_max_files_limits_it():
    few = data.load("stdlib", max_files=2)
    assert "import" in few or "def " in few
    assert len(few) < len(data.load("stdlib", max_files=20))
    with pytest.raises(ValueError, match="max_files"):
        data.load("stdlib", max_files=0)


def test_digits_shapes():
    digits = data.load("digits")
    assert digits.x.shape == (1797, 64) and digits.y.shape == (1797,)
    assert digits.target_names[:3] == ("0", "1", "2")


def test_medical_samples():
    eeg, mri = data.load("eeg"), data.load("mri")
    assert eeg.shape == (800, 4) and np.isfinite(eeg).all()
    assert mri.shape == (256, 256) and mri.max() > 0


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset name 'mnist'.*digits"):
        data.load("mnist")


def test_array_data_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="x is empty"):
        data.ArrayData(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="x has 3 examples but y has 2"):
        data.ArrayData(np.zeros((3, 2)), np.zeros(2))


def test_train_test_split_is_a_deterministic_partition():
    digits = data.load("digits")
    train, test = data.train_test_split(digits, test_fraction=0.25, key=jax.random.key(0))
    assert len(test.x) == round(1797 * 0.25) and len(train.x) + len(test.x) == 1797
    rows = {r.tobytes() for r in train.x} | {r.tobytes() for r in test.x}
    assert len(rows) == len({r.tobytes() for r in digits.x})
    again, _ = data.train_test_split(digits, test_fraction=0.25, key=jax.random.key(0))
    np.testing.assert_array_equal(train.x, again.x)
    other, _ = data.train_test_split(digits, test_fraction=0.25, key=jax.random.key(1))
    assert not np.array_equal(train.x, other.x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.0001])
def test_train_test_split_rejects_bad_fractions(fraction):
    tiny = data.ArrayData(np.zeros((10, 1)), np.zeros(10))
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(tiny, test_fraction=fraction, key=jax.random.key(0))


# ---- the optional download, against a server on 127.0.0.1 -------------------------------------------------------

PAYLOAD = b"To be, or not to be, that is the question.\n" * 100


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "good.txt").write_bytes(PAYLOAD)
    (www / "corrupt.txt").write_bytes(PAYLOAD[:-5] + b"XXXXX")
    with serve(www) as url:
        yield url.rstrip("/"), www


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_downloads_checks_and_caches(server, tmp_path):
    url, www = server
    cache = tmp_path / "cache"
    remote = data.RemoteFile(url=f"{url}/good.txt", sha256=SHA, filename="shakespeare.txt")
    path = data.fetch(remote, cache=cache)
    assert path == cache / "shakespeare.txt" and path.read_bytes() == PAYLOAD
    (www / "good.txt").unlink()  # a second call must use the cache, not the server
    assert data.fetch(remote, cache=cache).read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["shakespeare.txt"]


def test_fetch_rejects_corrupted_download_and_leaves_no_file(server, tmp_path):
    url, _ = server
    cache = tmp_path / "cache"
    remote = data.RemoteFile(url=f"{url}/corrupt.txt", sha256=SHA, filename="shakespeare.txt")
    with pytest.raises(data.ChecksumError, match="expected " + SHA):
        data.fetch(remote, cache=cache)
    assert list(cache.iterdir()) == []


def test_fetch_offline_error_names_url_and_cache_path(tmp_path):
    cache = tmp_path / "cache"
    # Port 9 on 127.0.0.1 has no server: the connection is refused, as it would be offline.
    remote = data.RemoteFile(url="http://127.0.0.1:9/input.txt", sha256=SHA, filename="input.txt")
    with pytest.raises(data.DownloadError) as info:
        data.fetch(remote, cache=cache, timeout=5)
    assert "http://127.0.0.1:9/input.txt" in str(info.value)
    assert str(cache / "input.txt") in str(info.value)
    assert list(cache.iterdir()) == []


def test_fetch_404_is_a_download_error(server, tmp_path):
    url, _ = server
    remote = data.RemoteFile(url=f"{url}/missing.txt", sha256=SHA, filename="missing.txt")
    with pytest.raises(data.DownloadError, match="404"):
        data.fetch(remote, cache=tmp_path / "cache")


def test_fetch_refuses_a_corrupted_cached_file_without_deleting_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "input.txt").write_bytes(b"something else")
    remote = data.RemoteFile(url="http://127.0.0.1:9/input.txt", sha256=SHA, filename="input.txt")
    with pytest.raises(data.ChecksumError, match="delete it"):
        data.fetch(remote, cache=cache)
    assert (cache / "input.txt").read_bytes() == b"something else"


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    assert data.cache_dir() == Path(tmp_path)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(url="ftp://x/y", sha256=SHA, filename="y"), "url"),
        (dict(url="https://x/y", sha256="abc", filename="y"), "sha256"),
        (dict(url="https://x/y", sha256=SHA, filename="../y"), "filename"),
    ],
)
def test_remote_file_validates(kwargs, field):
    with pytest.raises(ValueError, match=f"RemoteFile.{field}"):
        data.RemoteFile(**kwargs)
