"""The first language model of the book: bigram counts, P(next | previous), sampling and perplexity.

>>> model = Bigram.fit(np.array([0, 1, 0, 1, 0]), vocab_size=2, smoothing=0.0)
>>> model.probs[0].tolist()          # after 0 always comes 1
[0.0, 1.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_ids(ids: np.ndarray, vocab_size: int, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array; got shape {ids.shape}, dtype {ids.dtype}")
    if len(ids) < 2:
        raise ValueError(f"{name} must hold at least 2 tokens to form a bigram; got {len(ids)}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size - 1}]; got values from {ids.min()} to {ids.max()}")
    return ids


class Bigram:
    """P(next | previous) estimated from counts, with add-``smoothing`` (Laplace) smoothing."""

    def __init__(self, counts: np.ndarray, smoothing: float):
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(f"counts must be a square (V, V) matrix; got shape {counts.shape}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0; got {smoothing}")
        self.counts = counts  # (V, V): counts[a, b] = times b followed a
        self.smoothing = float(smoothing)
        smoothed = counts + smoothing
        totals = smoothed.sum(axis=1, keepdims=True)
        # A row never seen (and unsmoothed) has no evidence: predict uniformly rather than divide by zero.
        self.probs = np.where(totals > 0, smoothed / np.where(totals > 0, totals, 1), 1.0 / len(counts))  # (V, V)

    @classmethod
    def fit(cls, ids: np.ndarray, *, vocab_size: int, smoothing: float = 1.0) -> "Bigram":
        """Count every adjacent pair (ids[t], ids[t+1]) in ``ids``."""
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int; got {vocab_size!r}")
        ids = _check_ids(ids, vocab_size)
        counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
        np.add.at(counts, (ids[:-1], ids[1:]), 1)
        return cls(counts, smoothing)

    @property
    def vocab_size(self) -> int:
        return len(self.counts)

    def nll(self, ids: np.ndarray) -> float:
        """Mean negative log-likelihood, in nats per token, of each ids[t+1] given ids[t]."""
        ids = _check_ids(ids, self.vocab_size)
        p = self.probs[ids[:-1], ids[1:]]
        with np.errstate(divide="ignore"):
            return float(-np.mean(np.log(p)))

    def perplexity(self, ids: np.ndarray) -> float:
        """exp(mean negative log-likelihood): the number of equally likely choices the model is as unsure as."""
        return float(np.exp(self.nll(ids)))

    def sample(self, key: jax.Array, *, start: int, length: int, temperature: float = 1.0) -> np.ndarray:
        """``length`` ids drawn one after another, starting after ``start``; returns shape (length,)."""
        if not 0 <= start < self.vocab_size:
            raise ValueError(f"start must be a token id in [0, {self.vocab_size - 1}]; got {start}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int; got {length!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        with np.errstate(divide="ignore"):
            logits = jnp.asarray(np.log(self.probs) / temperature, dtype=jnp.float32)  # (V, V)
        return np.asarray(_sample_chain(logits, key, jnp.int32(start), length))


@jax.jit(static_argnames="length")
def _sample_chain(logits: jax.Array, key: jax.Array, start: jax.Array, length: int) -> jax.Array:
    def step(previous, step_key):
        token = jax.random.categorical(step_key, logits[previous])
        return token, token

    _, tokens = jax.lax.scan(step, start, jax.random.split(key, length))
    return tokens
