import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import audio
from labkit.gpt import Block, GPTConfig


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([16, 64, 256]), st.integers(1, 100), st.integers(0, 300))
def test_power_spectrogram_matches_scipy_stft(seed, frame_length, hop, extra):
    x = np.random.default_rng(seed).normal(size=(2, frame_length + extra)).astype(np.float32)
    ours = np.asarray(audio.power_spectrogram(x, frame_length=frame_length, hop_length=hop))  # (B, T, K)
    # scipy scales each frame by 1 / sum(window) ("spectrum" scaling); undo it to get |rfft(w * frame)|^2.
    window = scipy.signal.get_window("hann", frame_length)
    _, _, z = scipy.signal.stft(x, window=window, nperseg=frame_length, noverlap=frame_length - hop,
                                boundary=None, padded=False, detrend=False)  # (B, K, T)
    reference = np.abs(z.transpose(0, 2, 1)) ** 2 * window.sum() ** 2
    assert ours.shape == reference.shape == (2, 1 + extra // hop, frame_length // 2 + 1)
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * reference.max())


def test_power_spectrogram_matches_a_hand_written_dft():
    x = np.random.default_rng(0).normal(size=(1, 32))
    n = np.arange(16)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 16)
    frame = x[0, 8:24] * window  # the third frame at hop 8
    dft = np.array([np.sum(frame * np.exp(-2j * np.pi * k * n / 16)) for k in range(9)])
    ours = np.asarray(audio.power_spectrogram(x, frame_length=16, hop_length=8))
    np.testing.assert_allclose(ours[0, 1], np.abs(dft) ** 2, rtol=1e-4, atol=1e-4)


def test_frame_signal_cuts_overlapping_frames():
    frames = audio.frame_signal(jnp.arange(10.0)[None], 4, 3)
    np.testing.assert_array_equal(frames[0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])


def test_mel_scale_round_trip_and_anchor():
    assert audio.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # HTK's scale puts 1 kHz at ~1000 mel
    f = np.linspace(0, 8000, 50)
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(f)), f, atol=1e-6)


@pytest.mark.parametrize("num_mels,frame_length,sample_rate,f_min,f_max",
                         [(40, 256, 8000, 0.0, None), (20, 512, 16000, 100.0, 7000.0), (8, 64, 8000, 0.0, 3000.0)])
def test_mel_filterbank_rows_are_nonnegative_triangles_that_cover_the_band(num_mels, frame_length, sample_rate,
                                                                          f_min, f_max):
    filters = audio.mel_filterbank(num_mels=num_mels, frame_length=frame_length, sample_rate=sample_rate,
                                   f_min=f_min, f_max=f_max)
    assert filters.shape == (num_mels, frame_length // 2 + 1)
    assert (filters >= 0).all() and filters.max() <= 1.0 + 1e-6
    assert (filters.sum(axis=1) > 0).all()  # no empty band
    bins = np.arange(frame_length // 2 + 1) * sample_rate / frame_length
    edges = audio.mel_to_hz(np.linspace(audio.hz_to_mel(f_min), audio.hz_to_mel(f_max or sample_rate / 2),
                                        num_mels + 2))
    inside = (bins >= edges[1]) & (bins <= edges[-2])  # between the first and the last centre
    np.testing.assert_allclose(filters[:, inside].sum(axis=0), 1.0, atol=1e-5)  # neighbours add up to one
    outside = (bins <= edges[0]) | (bins >= edges[-1])
    assert (filters[:, outside] == 0).all()  # nothing outside [f_min, f_max]
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # band centres rise with the band index


@pytest.mark.parametrize("band", [15, 22, 30, 38])
def test_a_pure_tone_lands_in_its_mel_band(band):
    sample_rate, num_mels = 8000, 40
    edges = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(sample_rate / 2), num_mels + 2))
    t = np.arange(4000) / sample_rate
    tone = np.sin(2 * np.pi * edges[band + 1] * t)[None]  # the centre frequency of `band`
    features = audio.log_mel_spectrogram(tone, sample_rate, num_mels=num_mels)  # (1, T, M)
    assert (np.asarray(features).argmax(axis=-1) == band).all()


def test_log_mel_is_the_log_of_filtered_power_with_a_floor():
    x = np.random.default_rng(1).normal(size=(3, 1000))
    power = audio.power_spectrogram(x, frame_length=128, hop_length=64)
    filters = audio.mel_filterbank(num_mels=16, frame_length=128, sample_rate=8000)
    expected = np.log(np.asarray(power) @ filters.T)
    ours = audio.log_mel_spectrogram(x, 8000, frame_length=128, hop_length=64, num_mels=16)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    silent = audio.log_mel_spectrogram(np.zeros((1, 1000)), 8000, num_mels=16, floor=1e-6)
    np.testing.assert_allclose(silent, np.log(1e-6), rtol=1e-6)
    ints = audio.log_mel_spectrogram((x * 1000).astype(np.int16), 8000, num_mels=16)  # int input is accepted
    assert ints.shape == (3, 1 + (1000 - 256) // 80, 16)


@pytest.mark.parametrize("waveforms,match", [
    (np.zeros(1000), r"shape \(B, samples\); got shape \(1000,\)"),
    (np.zeros((2, 3, 1000)), r"shape \(B, samples\)"),
    (np.zeros((0, 1000)), "empty"),
    (np.zeros((2, 100)), "fewer than one frame"),
])
def test_front_end_rejects_bad_shapes_and_empty_input(waveforms, match):
    with pytest.raises(ValueError, match=match):
        audio.log_mel_spectrogram(waveforms, 8000)


def test_front_end_rejects_bad_settings():
    x = np.zeros((1, 1000))
    with pytest.raises(TypeError, match="float or int"):
        audio.power_spectrogram(np.full((1, 1000), "a"))
    for rate in (0, -8000, 8000.5, True):
        with pytest.raises(ValueError, match="sample_rate must be a positive int"):
            audio.log_mel_spectrogram(x, rate)
    with pytest.raises(ValueError, match="f_max <= sample_rate / 2 = 4000"):
        audio.log_mel_spectrogram(x, 8000, f_max=6000.0)
    with pytest.raises(ValueError, match="f_min"):
        audio.mel_filterbank(num_mels=10, frame_length=256, sample_rate=8000, f_min=3000.0, f_max=2000.0)
    with pytest.raises(ValueError, match="too many for frame_length=32"):
        audio.mel_filterbank(num_mels=64, frame_length=32, sample_rate=8000)
    with pytest.raises(ValueError, match="hop_length must be a positive int"):
        audio.power_spectrogram(x, hop_length=0)
    with pytest.raises(ValueError, match="frame_length must be an int >= 2"):
        audio.power_spectrogram(x, frame_length=1)
    with pytest.raises(ValueError, match="floor must be a positive number"):
        audio.log_mel_spectrogram(x, 8000, floor=0.0)


def test_stored_dataset_loads_with_its_metadata():
    data = audio.load_spoken_digits()
    n, samples = data.waveforms.shape
    assert data.sample_rate == 8000 and samples == int(0.8 * 8000)
    assert data.waveforms.dtype == np.float32 and np.abs(data.waveforms).max() <= 1.0
    for field in (data.labels, data.voices, data.speeds, data.pitches, data.snr_db):
        assert field.shape == (n,)
    assert data.label_names == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert len(data) == n


def test_subset_keeps_metadata_aligned_and_rejects_bad_masks():
    data = audio.load_spoken_digits()
    keep = data.voices == data.voices[0]
    part = data.subset(keep)
    assert len(part) == keep.sum() and set(part.voices) == {data.voices[0]}
    np.testing.assert_array_equal(part.waveforms, data.waveforms[keep])
    np.testing.assert_array_equal(part.snr_db, data.snr_db[keep])
    with pytest.raises(ValueError, match="boolean mask"):
        data.subset(np.arange(len(data)))
    with pytest.raises(ValueError, match="empty"):
        data.subset(np.zeros(len(data), bool))


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_speech_data.py"):
        audio.load_spoken_digits(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", waveforms=np.zeros((2, 10), np.int16))
    with pytest.raises(ValueError, match="missing"):
        audio.load_spoken_digits(tmp_path / "other.npz")


def test_spectrogram_transformer_shapes_and_its_blocks():
    config = GPTConfig.ci(max_len=32)
    model = audio.SpectrogramTransformer(config, num_mels=12, num_classes=10, rngs=nnx.Rngs(0))
    assert model(jnp.zeros((3, 20, 12))).shape == (3, 10)
    assert len(model.blocks) == config.num_layers
    assert all(isinstance(b, Block) and b.causal is False for b in model.blocks)  # labkit's blocks, bidirectional


def test_spectrogram_transformer_pools_over_every_frame():
    # Bidirectional attention + mean pooling: changing the last frame changes the output (a causal model read at
    # the first position would not see it).
    model = audio.SpectrogramTransformer(GPTConfig.ci(), num_mels=8, num_classes=3, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(1, 10, 8)).astype(np.float32)
    y = x.copy()
    y[0, -1] += 1.0
    assert not np.allclose(model(jnp.asarray(x)), model(jnp.asarray(y)))


def test_spectrogram_transformer_errors():
    model = audio.SpectrogramTransformer(GPTConfig.ci(max_len=16), num_mels=8, num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, T, M=8\); got \(2, 5, 7\)"):
        model(jnp.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="T=17 frames, 17 tokens of 1 frames, but the model takes 1 to "
                                         "config.max_len=16"):
        model(jnp.zeros((2, 17, 8)))
    with pytest.raises(TypeError, match="GPTConfig"):
        audio.SpectrogramTransformer({"width": 8}, num_mels=8, num_classes=3, rngs=nnx.Rngs(0))
    for positions in ("rotary", "alibi"):  # the encoder adds learned positions; a second scheme is refused
        with pytest.raises(ValueError, match=f"config.positions is '{positions}', applied inside attention"):
            audio.SpectrogramTransformer(GPTConfig.ci(positions=positions), num_mels=8, num_classes=3,
                                         rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        audio.SpectrogramTransformer(GPTConfig.ci(), num_mels=8, num_classes=1, rngs=nnx.Rngs(0))
