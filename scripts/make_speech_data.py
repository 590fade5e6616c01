"""Make the spoken-digit dataset of chapter 5: "zero" .. "nine" synthesized by espeak-ng, stored as one .npz file.

Every clip is one digit word spoken by one voice (an espeak-ng accent plus a voice variant) at one speed and pitch,
resampled from espeak-ng's 22,050 Hz to 8 kHz, trimmed of its leading and trailing silence, placed at a random offset
in a window of WINDOW_SECONDS of silence, and mixed with white noise at a random signal-to-noise ratio. The result is
written as int16 waveforms with their labels and metadata:

    waveforms   int16 (n, samples)   the clips, samples = WINDOW_SECONDS * SAMPLE_RATE
    labels      int64 (n,)           the digit, 0..9
    voices      str (n,)             the espeak-ng voice, e.g. "en-gb-x-rp+f3"
    speeds      int16 (n,)           speaking rate in words per minute (espeak-ng -s)
    pitches     int16 (n,)           base pitch, 0..99 (espeak-ng -p)
    snr_db      float32 (n,)         signal-to-noise ratio of the added noise, in dB (over the spoken part)
    sample_rate int64 ()             SAMPLE_RATE
    label_names str (10,)            "zero" .. "nine"

The same seed gives the same arrays: espeak-ng is deterministic, and every random choice (which speed and pitch,
where the word sits, the noise) comes from one seeded numpy Generator. A word longer than the window is an error,
never silently cut.

    python scripts/make_speech_data.py                      # writes labkit/datasets/spoken_digits.npz
    python scripts/make_speech_data.py --out /tmp/d.npz --seed 1
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Sixteen voices: eight espeak-ng English accents, each with a male and a female (or other) voice variant.
VOICES = (
    "en-us", "en-us+f3",
    "en-gb-x-rp", "en-gb-x-rp+f4",
    "en-gb-scotland+m3", "en-gb-scotland+f2",
    "en-029+m5", "en-029+f1",
    "en-us-nyc+m7", "en-us-nyc+f5",
    "en-gb-x-gbclan+m2", "en-gb-x-gbclan+f3",
    "en-gb-x-gbcwmd+m4", "en-gb-x-gbcwmd+f4",
    "en+klatt", "en+m6",
)
SPEEDS = (140, 170, 210)  # words per minute; espeak-ng's default is 175
PITCHES = (30, 50, 70)  # 0..99; espeak-ng's default is 50
TAKES = 2  # (speed, pitch) pairs per voice and digit, drawn without replacement from the 3 x 3 grid
SNR_DB = (5.0, 30.0)  # the noise's signal-to-noise ratio is uniform in this range, in dB
ESPEAK_RATE, SAMPLE_RATE = 22_050, 8_000
WINDOW_SECONDS = 0.8  # longer than the slowest word (about 0.73 s: "zero", en-gb-x-rp+f4 at 140 wpm)
SILENCE = 0.02  # |x| below this fraction of the clip's peak counts as silence when trimming
PEAK = 0.05  # the spoken part is scaled to this peak (of full scale; low keeps the file small) before noise
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "labkit" / "datasets" / "spoken_digits.npz"


def espeak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of ``word`` as float64 samples at 22,050 Hz in [-1, 1]."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "word.wav"
        command = ["espeak-ng", "-w", str(path), "-v", voice, "-s", str(speed), "-p", str(pitch), word]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0 or not path.is_file():
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode().strip()}")
        with wave.open(str(path)) as f:
            if f.getframerate() != ESPEAK_RATE or f.getsampwidth() != 2 or f.getnchannels() != 1:
                raise RuntimeError(f"espeak-ng gave {f.getframerate()} Hz, {8 * f.getsampwidth()} bit, "
                                   f"{f.getnchannels()} channel(s); expected {ESPEAK_RATE} Hz 16-bit mono")
            frames = f.readframes(f.getnframes())
    if not frames:
        raise RuntimeError(f"espeak-ng produced no sound for {word!r} with voice {voice!r}")
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0


def trim(x: np.ndarray) -> np.ndarray:
    """``x`` without the leading and trailing samples quieter than SILENCE times its peak."""
    loud = np.flatnonzero(np.abs(x) >= SILENCE * np.abs(x).max())
    return x[loud[0] : loud[-1] + 1]


def make_clip(word: str, voice: str, speed: int, pitch: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """One int16 clip of WINDOW_SECONDS at SAMPLE_RATE: the word at a random offset, plus noise at ``snr_db``."""
    speech = trim(resample_poly(espeak(word, voice, speed, pitch), SAMPLE_RATE // 50, ESPEAK_RATE // 50))
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    if len(speech) > window:
        raise ValueError(f"{word!r} by voice {voice} at {speed} wpm lasts {len(speech) / SAMPLE_RATE:.2f} s, longer "
                         f"than the {WINDOW_SECONDS} s window; raise WINDOW_SECONDS or the slowest speed")
    speech = speech * (PEAK / np.abs(speech).max())
    clip = np.zeros(window)
    start = int(rng.integers(0, window - len(speech) + 1))
    clip[start : start + len(speech)] = speech
    noise_power = np.mean(speech**2) / 10 ** (snr_db / 10)
    clip += rng.normal(0.0, np.sqrt(noise_power), window)
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


def make_dataset(seed: int, voices: tuple[str, ...] = VOICES, digits: tuple[str, ...] = DIGITS,
                 takes: int = TAKES) -> dict[str, np.ndarray]:
    """All clips (voice by voice, digit by digit, ``takes`` speed/pitch pairs each) and their metadata."""
    rng = np.random.default_rng(seed)
    grid = [(s, p) for s in SPEEDS for p in PITCHES]
    rows: dict[str, list] = {k: [] for k in ("waveforms", "labels", "voices", "speeds", "pitches", "snr_db")}
    for voice in voices:
        for word in digits:
            for pair in rng.choice(len(grid), size=takes, replace=False):
                speed, pitch = grid[pair]
                snr_db = round(float(rng.uniform(*SNR_DB)), 1)
                rows["waveforms"].append(make_clip(word, voice, speed, pitch, snr_db, rng))
                for key, value in (("labels", DIGITS.index(word)), ("voices", voice), ("speeds", speed),
                                   ("pitches", pitch), ("snr_db", snr_db)):
                    rows[key].append(value)
    return {
        "waveforms": np.stack(rows["waveforms"]),  # (n, samples) int16
        "labels": np.array(rows["labels"], dtype=np.int64),
        "voices": np.array(rows["voices"], dtype=str),
        "speeds": np.array(rows["speeds"], dtype=np.int16),
        "pitches": np.array(rows["pitches"], dtype=np.int16),
        "snr_db": np.array(rows["snr_db"], dtype=np.float32),
        "sample_rate": np.array(SAMPLE_RATE, dtype=np.int64),
        "label_names": np.array(DIGITS, dtype=str),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz file (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--voices", type=int, default=len(VOICES), help="use only the first this many voices")
    parser.add_argument("--digits", type=int, default=len(DIGITS), help="use only the first this many digits")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("error: espeak-ng is not installed (on Debian/Ubuntu: sudo apt-get install espeak-ng); "
                 "the stored dataset labkit/datasets/spoken_digits.npz needs no espeak-ng to be used")
    if not 1 <= args.voices <= len(VOICES) or not 1 <= args.digits <= len(DIGITS):
        sys.exit(f"error: --voices must be in 1..{len(VOICES)} and --digits in 1..{len(DIGITS)}")
    data = make_dataset(args.seed, VOICES[: args.voices], DIGITS[: args.digits])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    n, samples = data["waveforms"].shape
    print(f"wrote {args.out}: {n} clips of {samples} samples at {SAMPLE_RATE} Hz, "
          f"{len(set(data['voices']))} voices, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
