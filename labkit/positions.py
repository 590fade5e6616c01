"""Where each token is: learned, sinusoidal and rotary (RoPE) positional information (chapter 3).

Attention itself ignores order (permute the keys and values together and the output does not change), so position
must be put in: added to the token embeddings (a learned table as in GPT-2, or fixed sinusoids as in Vaswani et al.
2017), or turned into a rotation of every query and key (RoPE, Su et al. 2021; used by LLaMA), which makes the score
of query i and key j depend on i - j only.

>>> sinusoidal_positions(4, 8).shape                         # (T, D)
(4, 8)
>>> x = jnp.ones((1, 4, 2, 8))                               # (B, T, N, H)
>>> apply_rotary(x, jnp.arange(4)).shape
(1, 4, 2, 8)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int


def _check_length(length: int, offset: int | Array, max_len: int) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int; got {length!r}")
    if length > max_len:
        raise ValueError(f"sequence length T={length} is longer than the positional table (max_len={max_len})")
    if not isinstance(offset, jax.core.Tracer) and int(offset) + length > max_len:
        raise ValueError(f"positions {int(offset)}..{int(offset) + length - 1} run past the positional table "
                         f"(max_len={max_len})")


class LearnedPositions(nnx.Module):
    """A trained vector per position (GPT-2's ``wpe``): a (max_len, D) table, read at positions offset..offset+T-1.

    >>> LearnedPositions(16, 8, rngs=nnx.Rngs(0))(5).shape
    (5, 8)
    """

    def __init__(self, max_len: int, width: int, *, init: Any = nnx.initializers.normal(0.02), dtype: Any = None,
                 rngs: nnx.Rngs):
        for name, v in (("max_len", max_len), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.max_len, self.dtype = max_len, dtype
        self.table = nnx.Param(init(rngs.params(), (max_len, width), jnp.float32))  # (max_len, D)

    def __call__(self, length: int, *, offset: int | Array = 0) -> Float[Array, "T D"]:
        _check_length(length, offset, self.max_len)
        rows = jax.lax.dynamic_slice_in_dim(self.table[...], offset, length, axis=0)  # (T, D)
        return rows if self.dtype is None else rows.astype(self.dtype)


def sinusoidal_positions(length: int, width: int, *, offset: int | Array = 0,
                         base: float = 10_000.0) -> Float[Array, "T D"]:
    """PE[p, 2i] = sin(p / base^(2i/D)), PE[p, 2i+1] = cos(p / base^(2i/D)) for p = offset .. offset+T-1."""
    if not isinstance(width, int) or width < 2 or width % 2:
        raise ValueError(f"width must be a positive even int (sines and cosines in pairs); got {width!r}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int; got {length!r}")
    pos = (jnp.arange(length) + offset).astype(jnp.float32)[:, None]  # (T, 1)
    freq = base ** (-jnp.arange(0, width, 2, dtype=jnp.float32) / width)  # (D/2,)
    angles = pos * freq  # (T, D/2)
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(length, width)  # interleaved (T, D)


class SinusoidalPositions(nnx.Module):
    """The fixed sinusoids of Vaswani et al. (2017), up to ``max_len`` positions; nothing to train.

    >>> SinusoidalPositions(16, 8)(5).shape
    (5, 8)
    """

    def __init__(self, max_len: int, width: int, *, base: float = 10_000.0, dtype: Any = None):
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be a positive int; got {max_len!r}")
        if not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"width must be a positive even int (sines and cosines in pairs); got {width!r}")
        self.max_len, self.width, self.base, self.dtype = max_len, width, base, dtype

    def __call__(self, length: int, *, offset: int | Array = 0) -> Float[Array, "T D"]:
        _check_length(length, offset, self.max_len)
        rows = sinusoidal_positions(length, self.width, offset=offset, base=self.base)  # (T, D)
        return rows if self.dtype is None else rows.astype(self.dtype)


def rotary_angles(positions: Int[Array, "*B T"], head_width: int, *, base: float = 10_000.0) -> Float[Array, "*B T H2"]:
    """Angle p · base^(-2i/H) of every position p and pair i = 0 .. H/2-1."""
    if not isinstance(head_width, int) or head_width < 2 or head_width % 2:
        raise ValueError(f"rotary positions need a positive even head width; got {head_width!r}")
    freq = base ** (-jnp.arange(0, head_width, 2, dtype=jnp.float32) / head_width)  # (H/2,)
    return jnp.asarray(positions, jnp.float32)[..., None] * freq  # (..., T, H/2)


def apply_rotary(x: Float[Array, "B T N H"], positions: Int[Array, "*B T"], *,
                 base: float = 10_000.0) -> Float[Array, "B T N H"]:
    """Rotate each pair (x[i], x[i + H/2]) of every head by its position's angle.

    This is the half-split layout of GPT-NeoX and Hugging Face's LLaMA (Meta's reference code pairs neighbours).

    ``positions`` is (T,) for the whole batch or (B, T) per row.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must have shape (B, T, N, H); got {tuple(getattr(x, 'shape', ()))}")
    positions = jnp.asarray(positions)
    if positions.shape not in ((x.shape[1],), x.shape[:2]):
        raise ValueError(f"positions must have shape (T,) = ({x.shape[1]},) or (B, T) = {x.shape[:2]}; "
                         f"got {positions.shape}")
    angles = rotary_angles(positions, x.shape[-1], base=base)[..., None, :]  # (T, 1, H/2) or (B, T, 1, H/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, N, H/2) each
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B, T, N, H)
    return rotated.astype(x.dtype)
