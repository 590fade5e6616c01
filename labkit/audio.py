"""Speech as tokens (chapter 5): log-mel spectrograms, the stored spoken-digit dataset, and a Transformer classifier.

A waveform is cut into overlapping frames, each frame is weighted by a Hann window and Fourier-transformed, the power
|X|^2 of each frequency bin is pooled by triangular filters evenly spaced on the mel scale (the HTK formula
mel = 2595 log10(1 + f / 700)), and the log is taken with a floor. Each frame's log-mel vector is then one token
of a bidirectional Transformer (``labkit.gpt.Block`` with ``causal=False``).

Dimensions: B batch, S samples, T frames (the sequence), K frequency bins (frame_length // 2 + 1), M mel bands,
D model width, C classes.

>>> data = load_spoken_digits()                        # 320 clips, 0.8 s at 8 kHz, 16 voices
>>> data.waveforms.shape, data.sample_rate
((320, 6400), 8000)
>>> log_mel_spectrogram(data.waveforms[:2], data.sample_rate).shape     # (B, T, M)
(2, 77, 40)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from labkit._checks import check_int
from labkit.gpt import Block, GPTConfig
from labkit.positions import POSITION_SCHEMES, LearnedPositions

__all__ = ["DATASET_PATH", "SpectrogramTransformer", "SpokenDigits", "frame_signal", "hz_to_mel",
           "load_spoken_digits", "log_mel_spectrogram", "mel_filterbank", "mel_to_hz", "power_spectrogram"]

DATASET_PATH = Path(__file__).parent / "datasets" / "spoken_digits.npz"  # made by scripts/make_speech_data.py


# ---- the front end: frames -> power spectrum -> mel bands -> log ------------------------------------------------

def _check_waveforms(waveforms: Any, frame_length: int) -> jax.Array:
    shape = tuple(getattr(waveforms, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"waveforms must have shape (B, samples); got shape {shape}")
    if shape[0] == 0:
        raise ValueError("waveforms is empty: expected at least one waveform (B >= 1)")
    if shape[1] < frame_length:
        raise ValueError(f"waveforms have {shape[1]} samples, fewer than one frame (frame_length={frame_length})")
    if not (np.issubdtype(waveforms.dtype, np.floating) or np.issubdtype(waveforms.dtype, np.integer)):
        raise TypeError(f"waveforms must be a float or int array; got dtype {waveforms.dtype}")
    return jnp.asarray(waveforms, dtype=jnp.float32)


def frame_signal(waveforms: Float[Array, "B S"], frame_length: int,
                 hop_length: int) -> Float[Array, "B T frame_length"]:
    """Overlapping frames: frame t is samples t*hop_length .. t*hop_length + frame_length - 1 (no padding).

    >>> frame_signal(jnp.arange(10.0)[None], 4, 3)[0]
    Array([[0., 1., 2., 3.],
           [3., 4., 5., 6.],
           [6., 7., 8., 9.]], dtype=float32)
    """
    check_int("frame_length", frame_length, minimum=2)
    check_int("hop_length", hop_length)
    x = _check_waveforms(waveforms, frame_length)
    num_frames = 1 + (x.shape[1] - frame_length) // hop_length
    index = np.arange(num_frames)[:, None] * hop_length + np.arange(frame_length)[None, :]  # (T, frame_length)
    return x[:, index]  # (B, T, frame_length)


def power_spectrogram(waveforms: Float[Array, "B S"], *, frame_length: int = 256,
                      hop_length: int = 80) -> Float[Array, "B T K"]:
    """|rfft(hann * frame)|^2 of every frame: K = frame_length // 2 + 1 bins from 0 Hz to the Nyquist frequency.

    The Hann window is the periodic one, w[n] = 0.5 - 0.5 cos(2 pi n / frame_length), as
    scipy.signal.get_window("hann", frame_length).
    """
    frames = frame_signal(waveforms, frame_length, hop_length)  # (B, T, frame_length)
    window = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(frame_length) / frame_length)  # (frame_length,)
    spectrum = jnp.fft.rfft(frames * window, axis=-1)  # (B, T, K) complex
    return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2


def hz_to_mel(hz: Any) -> Any:
    """The HTK mel scale: mel = 2595 log10(1 + f / 700); 1000 Hz is about 1000 mel."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: Any) -> Any:
    """The inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(*, num_mels: int, frame_length: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular filters (M, K), one row per mel band, with peak 1 (HTK style, not area-normalized).

    Band m rises linearly from edge m to its centre m + 1 and falls to edge m + 2, the M + 2 edges equally spaced in
    mel from ``f_min`` to ``f_max`` (default: the Nyquist frequency sample_rate / 2); the weights are read at the
    frequencies of the K = frame_length // 2 + 1 rfft bins.

    >>> mel_filterbank(num_mels=40, frame_length=256, sample_rate=8000).shape     # (M, K)
    (40, 129)
    """
    check_int("num_mels", num_mels)
    check_int("frame_length", frame_length, minimum=2)
    check_int("sample_rate", sample_rate)
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}; "
                         f"got f_min={f_min!r}, f_max={f_max!r}")
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), num_mels + 2))  # (M + 2,) in Hz
    bins = np.arange(frame_length // 2 + 1) * sample_rate / frame_length  # (K,) in Hz
    rising = (bins[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])  # (M, K)
    falling = (edges[2:, None] - bins[None, :]) / (edges[2:, None] - edges[1:-1, None])  # (M, K)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(weights.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"num_mels={num_mels} is too many for frame_length={frame_length} at {sample_rate} Hz: "
                         f"mel bands {empty.tolist()} fall between frequency bins; use fewer mels or longer frames")
    return weights.astype(np.float32)


def log_mel_spectrogram(waveforms: Float[Array, "B S"], sample_rate: int, *, frame_length: int = 256,
                        hop_length: int = 80, num_mels: int = 40, f_min: float = 0.0, f_max: float | None = None,
                        floor: float = 1e-10) -> Float[Array, "B T M"]:
    """log(max(mel power, floor)) of every frame: (B, samples) -> (B, T, M), T = 1 + (samples - frame_length) // hop.

    At 8 kHz the defaults are 32 ms frames every 10 ms, and 40 mel bands up to 4 kHz.
    """
    if not isinstance(floor, (int, float)) or not floor > 0:
        raise ValueError(f"floor must be a positive number (the log of 0 is -inf); got {floor!r}")
    filters = mel_filterbank(num_mels=num_mels, frame_length=frame_length, sample_rate=sample_rate, f_min=f_min,
                             f_max=f_max)  # (M, K)
    power = power_spectrogram(waveforms, frame_length=frame_length, hop_length=hop_length)  # (B, T, K)
    return jnp.log(jnp.maximum(power @ filters.T, floor))  # (B, T, M)


# ---- the stored dataset -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SpokenDigits:
    """Spoken digits "zero".."nine": waveforms with their labels and how each was synthesized (one entry per clip)."""

    waveforms: np.ndarray  # float32 (n, samples) in [-1, 1]
    labels: np.ndarray  # int64 (n,): the digit 0..9
    voices: np.ndarray  # str (n,): the espeak-ng voice, e.g. "en-gb-x-rp+f4"
    speeds: np.ndarray  # int16 (n,): words per minute
    pitches: np.ndarray  # int16 (n,): espeak-ng base pitch, 0..99
    snr_db: np.ndarray  # float32 (n,): signal-to-noise ratio of the added white noise, dB
    sample_rate: int  # samples per second
    label_names: tuple[str, ...]  # "zero" .. "nine"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> "SpokenDigits":
        """The clips where the boolean mask ``keep`` (n,) is True, e.g. ``data.subset(np.isin(data.voices, test))``."""
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(self),):
            raise ValueError(f"keep must be a boolean mask of shape ({len(self)},); got {keep.dtype} {keep.shape}")
        if not keep.any():
            raise ValueError("keep selects no clip; the subset would be empty")
        per_clip = {f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)
                    if f.name not in ("sample_rate", "label_names")}
        return dataclasses.replace(self, **per_clip)


def load_spoken_digits(path: str | Path | None = None) -> SpokenDigits:
    """The spoken-digit dataset stored with labkit (made by ``scripts/make_speech_data.py``), or the file at ``path``.

    >>> data = load_spoken_digits()
    >>> len(data), data.label_names[7], sorted(set(data.voices.tolist()))[:2]
    (320, 'seven', ['en+klatt', 'en+m6'])
    """
    path = DATASET_PATH if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no spoken-digit dataset at {path}; make it with "
                                "`python scripts/make_speech_data.py --out PATH` (needs espeak-ng)")
    with np.load(path, allow_pickle=False) as stored:
        names = ("waveforms", "labels", "voices", "speeds", "pitches", "snr_db", "sample_rate", "label_names")
        missing = [name for name in names if name not in stored.files]
        if missing:
            raise ValueError(f"{path} is not a spoken-digit dataset: arrays {missing} are missing")
        arrays = {name: stored[name] for name in names}
    waveforms = arrays.pop("waveforms")
    if waveforms.dtype != np.int16 or waveforms.ndim != 2:
        raise ValueError(f"{path}: waveforms must be int16 of shape (n, samples); got {waveforms.dtype} "
                         f"{waveforms.shape}")
    return SpokenDigits(waveforms=waveforms.astype(np.float32) / 32768.0,
                        sample_rate=int(arrays.pop("sample_rate")),
                        label_names=tuple(str(s) for s in arrays.pop("label_names")), **arrays)


# ---- the classifier: spectrogram frames as the tokens of a Transformer encoder ----------------------------------

class SpectrogramTransformer(nnx.Module):
    """Frames -> linear to D + learned positions -> encoder blocks (``Block(causal=False)``) -> mean -> class logits.

    ``config`` gives the blocks' sizes (width D, layers, heads, feed-forward width) and ``max_len``, the most
    tokens the positional table holds; its ``vocab_size`` is not used. With ``frames_per_token`` k > 1, every k
    consecutive frames are concatenated into one token of k * M numbers (a patch in time, as a Vision Transformer's
    patches; T // k tokens, the last T % k frames are dropped): k times fewer tokens, each seeing k times as long.

    >>> model = SpectrogramTransformer(GPTConfig.ci(), num_mels=40, num_classes=10, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 50, 40))).shape                # (B, C)
    (2, 10)
    """

    def __init__(self, config: GPTConfig, *, num_mels: int, num_classes: int, frames_per_token: int = 1,
                 rngs: nnx.Rngs):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig; got {type(config).__name__}")
        if POSITION_SCHEMES[config.positions].in_attention:  # the encoder adds its own learned positions
            raise ValueError(f"config.positions is {config.positions!r}, applied inside attention, but this encoder "
                             "adds learned positions to its input; use a config with positions='learned' (the "
                             "blocks then add nothing)")
        check_int("num_mels", num_mels)
        check_int("num_classes", num_classes, minimum=2)
        check_int("frames_per_token", frames_per_token)
        self.config, self.num_mels, self.frames_per_token = config, num_mels, frames_per_token
        init = nnx.initializers.normal(config.init_std)
        self.embed = nnx.Linear(frames_per_token * num_mels, config.width, dtype=config.dtype, kernel_init=init,
                                rngs=rngs)
        self.positions = LearnedPositions(config.max_len, config.width, init=init, dtype=config.dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.blocks = nnx.List([Block(config, causal=False, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.LayerNorm(config.width, dtype=config.dtype, rngs=rngs)
        self.head = nnx.Linear(config.width, num_classes, kernel_init=init, rngs=rngs)

    def __call__(self, features: Float[Array, "B T M"]) -> Float[Array, "B C"]:
        shape, k = tuple(features.shape), self.frames_per_token
        if len(shape) != 3 or shape[2] != self.num_mels:
            raise ValueError(f"features must have shape (B, T, M={self.num_mels}); got {shape}")
        tokens = shape[1] // k
        if not 1 <= tokens <= self.config.max_len:
            raise ValueError(f"features have T={shape[1]} frames, {tokens} tokens of {k} frames, but the model "
                             f"takes 1 to config.max_len={self.config.max_len} tokens")
        patches = features[:, : tokens * k].reshape(shape[0], tokens, k * shape[2])  # (B, T/k, k*M)
        x = self.embed(patches.astype(self.config.dtype)) + self.positions(tokens)  # (B, T/k, D)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)  # (B, T, D): every frame attends to every frame
        pooled = self.final_norm(x).mean(axis=1)  # (B, D)
        return self.head(pooled).astype(jnp.float32)  # (B, C)
