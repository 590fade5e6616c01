import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from labkit import audio

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_speech_data.py"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def maker():
    spec = importlib.util.spec_from_file_location("make_speech_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_speech_data"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["make_speech_data"]


@needs_espeak
def test_data_maker_is_deterministic(maker, tmp_path):
    for name in ("a", "b"):
        arguments = ["--out", str(tmp_path / f"{name}.npz"), "--voices", "2", "--digits", "2", "--seed", "3"]
        assert maker.main(arguments) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["waveforms"].shape == (2 * 2 * maker.TAKES, int(maker.WINDOW_SECONDS * maker.SAMPLE_RATE))
    other = maker.make_dataset(4, maker.VOICES[:2], maker.DIGITS[:2])
    assert not np.array_equal(other["waveforms"], a["waveforms"])  # the seed matters
    data = audio.load_spoken_digits(tmp_path / "a.npz")  # what the maker writes, the loader reads
    assert len(data) == 8 and set(data.labels.tolist()) == {0, 1}


@needs_espeak
def test_data_maker_reports_a_word_longer_than_the_window(maker, monkeypatch):
    monkeypatch.setattr(maker, "WINDOW_SECONDS", 0.1)
    with pytest.raises(ValueError, match="longer than the 0.1 s window"):
        maker.make_clip("seven", "en-us", 140, 50, 20.0, np.random.default_rng(0))


@needs_espeak
def test_noise_is_added_at_the_stated_snr(maker):
    rng = np.random.default_rng(0)
    clean = maker.make_clip("four", "en-us", 170, 50, 200.0, rng)  # 200 dB: no noise to speak of
    noisy = maker.make_clip("four", "en-us", 170, 50, 10.0, np.random.default_rng(0))
    assert (noisy[clean == 0] != 0).mean() > 0.9  # the noise fills the silence around the word
    speech = clean[clean != 0].astype(float)
    noise = (noisy - clean).astype(float)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=0.5)


def test_data_maker_needs_espeak(maker, monkeypatch, tmp_path):
    monkeypatch.setattr(maker.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="espeak-ng is not installed"):
        maker.main(["--out", str(tmp_path / "x.npz")])


def test_stored_file_has_the_documented_shapes_and_balance(maker):
    with np.load(audio.DATASET_PATH) as stored:
        assert set(stored.files) == {"waveforms", "labels", "voices", "speeds", "pitches", "snr_db", "sample_rate",
                                     "label_names"}
        waveforms, labels, voices = stored["waveforms"], stored["labels"], stored["voices"]
        n = len(maker.VOICES) * len(maker.DIGITS) * maker.TAKES
        assert waveforms.dtype == np.int16 and waveforms.shape == (n, int(maker.WINDOW_SECONDS * 8000))
        assert int(stored["sample_rate"]) == maker.SAMPLE_RATE
        assert np.bincount(labels).tolist() == [n // 10] * 10  # every digit equally often
        assert sorted(set(voices.tolist())) == sorted(maker.VOICES)
        for voice in maker.VOICES:  # every voice says every digit TAKES times
            assert np.bincount(labels[voices == voice], minlength=10).tolist() == [maker.TAKES] * 10
        assert set(stored["speeds"].tolist()) <= set(maker.SPEEDS)
        assert set(stored["pitches"].tolist()) <= set(maker.PITCHES)
        low, high = maker.SNR_DB
        assert (stored["snr_db"] >= low).all() and (stored["snr_db"] <= high).all()
    assert audio.DATASET_PATH.stat().st_size < 3.5e6  # small enough to ship inside the package
