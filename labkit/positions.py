"""Where each token is: learned, sinusoidal, rotary (RoPE) and ALiBi positional information (chapter 3).

Attention itself ignores order (permute the keys and values together and the output does not change), so position
must be put in: added to the token embeddings (a learned table as in GPT-2, or fixed sinusoids as in Vaswani et al.
2017), turned into a rotation of every query and key (RoPE, Su et al. 2021; used by LLaMA), which makes the score
of query i and key j depend on i - j only, or subtracted from the scores as a penalty proportional to the distance
(ALiBi, Press, Smith and Lewis 2022; ``alibi_slopes``, applied through ``labkit.masks.ScoreMods``).
``POSITION_SCHEMES`` describes each option of ``GPTConfig.positions`` once, for every module that needs to know.

RoPE comes in two layouts that pair a head's H coordinates differently: "half" pairs i with i + H/2 (GPT-NeoX, Hugging
Face's LLaMA; labkit's default) and "interleaved" pairs 2i with 2i + 1 (the RoPE paper, Meta's LLaMA code). They are
the same rotation after a fixed permutation of each head's coordinates (``rotary_permutation``), so a checkpoint in one
layout runs in the other once its query and key projections are permuted (``convert_rotary_layout``).

>>> sinusoidal_positions(4, 8).shape                         # (T, D)
(4, 8)
>>> x = jnp.ones((1, 4, 2, 8))                               # (B, T, N, H)
>>> apply_rotary(x, jnp.arange(4)).shape
(1, 4, 2, 8)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

ROPE_LAYOUTS = ("half", "interleaved")  # which coordinates of a head are rotated together: (i, i + H/2) or (2i, 2i + 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PositionScheme:
    """How one option of ``GPTConfig.positions`` gives the model the order of its inputs."""

    name: str
    added_to_input: bool  # a (T, D) table added to the token embeddings before the first block
    learned: bool  # that table is trained: max_len x D parameters (otherwise there are none)
    in_attention: bool  # applied inside every attention layer, so even an encoder that adds no table sees the order


POSITION_SCHEMES = {s.name: s for s in (
    PositionScheme(name="learned", added_to_input=True, learned=True, in_attention=False),  # GPT-2
    PositionScheme(name="sinusoidal", added_to_input=True, learned=False, in_attention=False),  # Vaswani et al.
    PositionScheme(name="rotary", added_to_input=False, learned=False, in_attention=True),  # RoPE: LLaMA
    PositionScheme(name="alibi", added_to_input=False, learned=False, in_attention=True),  # ALiBi: a score bias
)}


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


def _check_layout(layout: str, argument: str = "layout") -> None:
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"{argument} must be one of {', '.join(ROPE_LAYOUTS)}; got {layout!r}")


def apply_rotary(x: Float[Array, "B T N H"], positions: Int[Array, "*B T"], *, base: float = 10_000.0,
                 layout: str = "half") -> Float[Array, "B T N H"]:
    """Rotate each pair of coordinates of every head by its position's angle; pair i turns by p · base^(-2i/H).

    ``layout="half"`` pairs (x[i], x[i + H/2]), as GPT-NeoX and Hugging Face's LLaMA do; ``"interleaved"`` pairs
    (x[2i], x[2i + 1]), as the RoPE paper and Meta's LLaMA code do. ``positions`` is (T,) for the whole batch or (B, T)
    per row.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must have shape (B, T, N, H); got {tuple(getattr(x, 'shape', ()))}")
    _check_layout(layout)
    positions = jnp.asarray(positions)
    if positions.shape not in ((x.shape[1],), x.shape[:2]):
        raise ValueError(f"positions must have shape (T,) = ({x.shape[1]},) or (B, T) = {x.shape[:2]}; "
                         f"got {positions.shape}")
    angles = rotary_angles(positions, x.shape[-1], base=base)[..., None, :]  # (T, 1, H/2) or (B, T, 1, H/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    if layout == "half":
        x1, x2 = jnp.split(x32, 2, axis=-1)  # (B, T, N, H/2) each
        rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B, T, N, H)
    else:
        x1, x2 = x32[..., 0::2], x32[..., 1::2]  # (B, T, N, H/2) each
        rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)  # (B, T, N, H)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's slope of each head (Press, Smith and Lewis 2022), float32 (N,): head n's score drops by slope[n] per
    position between query and key.

    For N a power of two, the geometric sequence 2^(-8/N), 2^(-16/N), .., 2^(-8). Otherwise the paper's rule: the
    slopes of the largest power of two P below N, then every other slope of 2P heads, the first N - P of them.

    >>> alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    >>> alibi_slopes(6).tolist()                  # the 4 above, then slopes 1 and 3 of 8 heads: 2^-1, 2^-3
    [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    """
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")

    def geometric(n: int) -> np.ndarray:  # n a power of two
        return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)

    power = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = np.concatenate([geometric(power), geometric(2 * power)[0::2][: num_heads - power]])
    return slopes.astype(np.float32)  # (N,)


def alibi_bias(slopes: Float[Array, " N"], query_pos: Int[Array, " T"],
               key_pos: Int[Array, " S"]) -> Float[Array, "N T S"]:
    """ALiBi's additive score bias -slope[n] · |i - j| for query position i and key position j.

    In causal attention j <= i, so it is the paper's -slope · (i - j); an encoder (which sees later keys too) is
    penalised by the distance either way.

    >>> alibi_bias(jnp.array([0.5]), jnp.arange(3), jnp.arange(3))[0].tolist()
    [[0.0, -0.5, -1.0], [-0.5, 0.0, -0.5], [-1.0, -0.5, 0.0]]
    """
    slopes = jnp.asarray(slopes)
    distance = jnp.abs(query_pos[:, None] - key_pos[None, :])  # (T, S)
    return slopes[:, None, None] * (-distance).astype(slopes.dtype)  # (N, T, S)


def rotary_permutation(head_width: int) -> np.ndarray:
    """The order (0, 2, 4, .., H-2, 1, 3, .., H-1) that takes a head from the interleaved to the half layout.

    ``apply_rotary(x[..., perm], p, layout="half") == apply_rotary(x, p, layout="interleaved")[..., perm]``, and the
    inverse order is ``np.argsort(perm)``. Hugging Face's LLaMA converter permutes query and key weights this way.

    >>> rotary_permutation(6).tolist()
    [0, 2, 4, 1, 3, 5]
    """
    if not isinstance(head_width, int) or isinstance(head_width, bool) or head_width < 2 or head_width % 2:
        raise ValueError(f"head_width must be a positive even int; got {head_width!r}")
    return np.concatenate([np.arange(0, head_width, 2), np.arange(1, head_width, 2)])


def convert_rotary_layout(weights: Any, num_heads: int, *, source: str, target: str) -> Any:
    """A query or key projection's ``weights`` moved from the ``source`` to the ``target`` RoPE layout.

    The last axis holds the projection's outputs, ``num_heads`` heads of H coordinates each: the kernel (D, N·H) of an
    ``nnx.Linear`` or its bias (N·H,); transpose a PyTorch (N·H, D) weight first. Each head's H outputs are reordered
    by ``rotary_permutation``; the scores, and so the model's outputs, stay the same. Value and output projections
    carry no rotation and need no change.

    >>> w = jnp.arange(8.0)[None, :]          # (D=1, N·H=8): two heads of width 4
    >>> convert_rotary_layout(w, 2, source="interleaved", target="half").tolist()
    [[0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]]
    """
    _check_layout(source, "source")
    _check_layout(target, "target")
    shape = tuple(getattr(weights, "shape", ()))
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
    if not shape or shape[-1] % num_heads or (shape[-1] // num_heads) % 2:
        raise ValueError(f"weights must have a last axis of num_heads={num_heads} heads of even width; "
                         f"got shape {shape}")
    if source == target:
        return weights
    perm = rotary_permutation(shape[-1] // num_heads)
    order = perm if source == "interleaved" else np.argsort(perm)
    heads = weights.reshape(*shape[:-1], num_heads, shape[-1] // num_heads)  # (..., N, H)
    return heads[..., order].reshape(shape)
