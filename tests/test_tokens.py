import jax
import numpy as np
import pytest
import scipy.stats

from labkit import tokens
from labkit.tokens import TokenWindows


def test_write_and_open_round_trip_as_a_memory_map(tmp_path):
    ids = np.array([0, 5, 65535, 17, 3])
    path = tokens.write_tokens(tmp_path / "ids.npy", ids, vocab_size=65536)
    opened = tokens.open_tokens(path, vocab_size=65536)
    assert isinstance(opened, np.memmap) and opened.dtype == np.uint16
    np.testing.assert_array_equal(opened, ids)
    big = tokens.write_tokens(tmp_path / "big.npy", [70000, 1], vocab_size=100277)  # beyond uint16
    assert tokens.open_tokens(big).dtype == np.uint32 and tokens.open_tokens(big).tolist() == [70000, 1]
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["big.npy", "ids.npy"]  # no temporary files left


def test_token_dtype_switches_at_65536_ids():
    assert tokens.token_dtype(65536) == np.uint16 and tokens.token_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        tokens.token_dtype(0)


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    path = tokens.write_tokens(tmp_path / "ids.npy", [1, 2, 3], vocab_size=10)
    real_save = np.save

    def save_half_then_fail(f, array, **kwargs):
        real_save(f, array[: len(array) // 2], **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tokens.write_tokens(path, np.arange(100), vocab_size=100, overwrite=True)
    monkeypatch.undo()
    assert tokens.open_tokens(path).tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["ids.npy"]


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    path = tokens.write_tokens(tmp_path / "ids.npy", [1, 2, 3], vocab_size=10)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tokens.write_tokens(path, [4, 5], vocab_size=10)
    tokens.write_tokens(path, [4, 5], vocab_size=10, overwrite=True)
    assert tokens.open_tokens(path).tolist() == [4, 5]


def test_write_and_open_reject_bad_ids_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"ids must be ids in \[0, 9\] \(the vocabulary\); got values from 0 to 10"):
        tokens.write_tokens(tmp_path / "a.npy", [0, 10], vocab_size=10)
    with pytest.raises(ValueError, match="ids is empty"):
        tokens.write_tokens(tmp_path / "a.npy", [], vocab_size=10)
    with pytest.raises(ValueError, match="non-negative"):
        tokens._check_ids(np.array([-1, 2]), None, "ids")
    with pytest.raises(ValueError, match=r"flat \(n,\) array"):
        tokens.write_tokens(tmp_path / "a.npy", np.zeros((2, 2), int), vocab_size=10)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokens.write_tokens(tmp_path / "no" / "a.npy", [1], vocab_size=10)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        tokens.open_tokens(tmp_path / "missing.npy")
    path = tokens.write_tokens(tmp_path / "b.npy", [0, 300], vocab_size=512)
    with pytest.raises(ValueError, match=r"in \[0, 255\] \(the vocabulary\); got values from 0 to 300"):
        tokens.open_tokens(path, vocab_size=256)
    np.save(tmp_path / "floats.npy", np.ones(3))
    with pytest.raises(ValueError, match="uint16 or uint32"):
        tokens.open_tokens(tmp_path / "floats.npy")
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ValueError, match="not a .npy array file"):
        tokens.open_tokens(tmp_path / "text.npy")
    np.save(tmp_path / "empty.npy", np.zeros(0, np.uint16))
    with pytest.raises(ValueError, match="is empty"):
        tokens.open_tokens(tmp_path / "empty.npy")


def test_split_is_contiguous_and_checked():
    train, valid = tokens.split_tokens(np.arange(100), validation_fraction=0.1)
    assert train.tolist() == list(range(90)) and valid.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="validation_fraction must be"):
        tokens.split_tokens(np.arange(100), validation_fraction=1.0)
    with pytest.raises(ValueError, match="leaves an empty part"):
        tokens.split_tokens(np.arange(3), validation_fraction=0.01)


def test_batches_are_windows_and_their_shift():
    windows = TokenWindows(np.arange(1000, dtype=np.uint16), seq_len=16)
    x, y = windows.batch(jax.random.key(0), 3, batch_size=8)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
    starts = windows.starts(jax.random.key(0), 3, batch_size=8)
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(16))  # consecutive ids from each start
    np.testing.assert_array_equal(y, x + 1)  # the next token of every position


def test_batches_are_a_pure_function_of_key_and_index():
    windows = TokenWindows(np.arange(5000) % 97, seq_len=8)
    first = windows.batch(jax.random.key(1), 7, batch_size=4)
    again = windows.batch(jax.random.key(1), 7, batch_size=4)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], windows.batch(jax.random.key(1), 8, batch_size=4)[0])
    assert not np.array_equal(first[0], windows.batch(jax.random.key(2), 7, batch_size=4)[0])


def test_start_positions_are_uniform_over_every_window():
    windows = TokenWindows(np.zeros(58, np.uint16), seq_len=8)  # 50 windows: starts 0 .. 49
    starts = np.concatenate([windows.starts(jax.random.key(0), i, batch_size=100) for i in range(100)])
    counts = np.bincount(starts, minlength=len(windows))
    assert len(counts) == 50 and counts.min() > 0  # the first and the last window are both drawn
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_windows_reject_bad_data_and_arguments():
    with pytest.raises(ValueError, match=r"ids has 8 tokens, fewer than seq_len \+ 1 = 9"):
        TokenWindows(np.arange(8), seq_len=8)
    only = TokenWindows(np.arange(9), seq_len=8)  # exactly one window
    assert len(only) == 1 and only.batch(jax.random.key(0), 0, 2)[0].tolist() == [list(range(8))] * 2
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        TokenWindows(np.arange(9), seq_len=0)
    with pytest.raises(ValueError, match="integer array"):
        TokenWindows(np.ones(20), seq_len=4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        only.batch(jax.random.key(0), 0, 0)
    with pytest.raises(TypeError, match="key must be one typed key"):
        only.batch(np.uint32([0, 0]), 0, 1)
    with pytest.raises(ValueError, match="index must be a non-negative int"):
        only.batch(jax.random.key(0), -1, 1)
