"""Scaled dot-product attention and multi-head self-attention (chapter 3).

Layout follows ``jax.nn.dot_product_attention``: queries (B, T, N, H), keys and values (B, S, K, H) with K key/value
heads (K = N is multi-head attention, K < N grouped-query attention: query head n reads key/value head n // (N / K)).
A mask is a boolean array that broadcasts to (B, N, T, S); **True means "may attend"**, False means "ignore". The
mask builders (``causal_mask``, ``padding_mask``, ``combine_masks``) live in ``labkit.masks`` and are re-exported here.
Everything that changes the scores (mask, causality, query offset, scale, ALiBi, soft-capping) can be passed as one
value, ``mods=ScoreMods(...)``, which every implementation reads the same way; the keywords mask, causal,
query_offset and scale are a shorthand that builds one.

>>> q = k = v = jnp.ones((2, 5, 4, 8))                       # (B, T, N, H)
>>> dot_product_attention(q, k, v, causal=True).shape
(2, 5, 4, 8)
>>> attention(q, k, v, causal=True, implementation="blockwise", block_size=2).shape   # same numbers, less memory
(2, 5, 4, 8)
>>> mods = ScoreMods(causal=True, alibi_slopes=alibi_slopes(4))                   # ALiBi: a bias on the scores
>>> attention(q, k, v, mods=mods, implementation="jax").shape
(2, 5, 4, 8)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from labkit.blockwise import blockwise_attention
from labkit.kvcache import KVCache
from labkit.masks import MASKED_SCORE, ScoreMods, causal_mask, check_mask, check_qkv, combine_masks, padding_mask
from labkit.positions import ROPE_LAYOUTS, alibi_slopes, apply_rotary
from labkit.profiles import Accelerator, accelerator

__all__ = [
    "IMPLEMENTATIONS", "MASKED_SCORE", "MultiHeadAttention", "ScoreMods", "alibi_slopes", "attention",
    "attention_weights", "blockwise_attention", "causal_mask", "check_mask", "choose_kernel", "combine_masks",
    "dot_product_attention", "jax_attention", "padding_mask", "share_heads",
]

IMPLEMENTATIONS = ("plain", "blockwise", "jax")

# ---- the computation --------------------------------------------------------------------------------------------


def share_heads(x: Float[Array, "B S K H"], num_heads: int) -> Float[Array, "B S N H"]:
    """Grouped-query attention: each of the K key/value heads serves N / K neighbouring query heads, so repeat it."""
    groups = num_heads // x.shape[2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def attention_weights(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
    mods: ScoreMods | None = None,
) -> Float[Array, "B N T S"]:
    """softmax(q kᵀ · scale) over keys, modified by ``mods`` (masked, biased); each row sums to 1 (in float32)."""
    mods = ScoreMods.merge(mods, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    b, t, n, h, s, k = check_qkv(query, key, key)
    mods = mods.checked((b, n, t, s), h)
    key = share_heads(key, n)  # (B, S, N, H)
    acc = jnp.promote_types(query.dtype, jnp.float32)  # accumulate in float32 (float64 if the inputs are)
    scores = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=acc)  # (B, N, T, S)
    return jax.nn.softmax(mods.modify(scores), axis=-1)  # (B, N, T, S)


def dot_product_attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
    mods: ScoreMods | None = None,
) -> Float[Array, "B T N H"]:
    """The plain attention: every query's weighted average of the values, weights = ``attention_weights``."""
    mods = ScoreMods.merge(mods, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    n = check_qkv(query, key, value)[2]
    weights = attention_weights(query, key, mods=mods)
    acc = jnp.promote_types(query.dtype, jnp.float32)
    out = jnp.einsum("bnts,bsnh->btnh", weights.astype(value.dtype), share_heads(value, n), preferred_element_type=acc)
    return out.astype(query.dtype)  # (B, T, N, H)


def choose_kernel(hardware: Accelerator, *, dtype: Any, masked: bool, head_width: int) -> str:
    """Which kernel ``jax_attention`` runs: ``"cudnn"`` (cuDNN's fused flash attention), ``"blockwise"`` (labkit's
    memory-efficient attention) or ``"xla"`` (``jax.nn.dot_product_attention``'s plain XLA version).

    cuDNN's kernel needs an NVIDIA GPU of compute capability 8.0 or more (Ampere on: not a T4 or V100), 16-bit
    inputs, head widths that are multiples of 8 up to 128, and no mask beyond the plain causal one nor any other
    change of the scores, such as an ALiBi bias (``masked`` says there is one; JAX has no fallback once "cudnn" is
    asked for, so every condition is checked here). Every other accelerator case (a TPU, an older or AMD GPU, a
    padding mask, a prefill at an offset, a score bias, float32) takes the blockwise attention, which never holds the
    B x N x T x S scores; on a CPU, XLA's attention.

    >>> ampere, t4 = Accelerator("gpu", "cuda", (8, 0)), Accelerator("gpu", "cuda", (7, 5))
    >>> [choose_kernel(hw, dtype=jnp.bfloat16, masked=False, head_width=64) for hw in (ampere, t4)]
    ['cudnn', 'blockwise']
    >>> choose_kernel(Accelerator("tpu"), dtype=jnp.bfloat16, masked=False, head_width=64)
    'blockwise'
    """
    if hardware.platform == "cpu":
        return "xla"
    fused = (hardware.gpu_stack == "cuda" and hardware.compute_capability is not None
             and hardware.compute_capability >= (8, 0) and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
             and not masked and head_width % 8 == 0 and head_width <= 128)
    return "cudnn" if fused else "blockwise"


def jax_attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
    mods: ScoreMods | None = None,
    block_size: int = 128,
) -> Float[Array, "B T N H"]:
    """The fastest attention for the hardware (``choose_kernel``): cuDNN's fused kernel on an NVIDIA GPU from
    Ampere on, labkit's blockwise attention on other accelerators and fallback cases, XLA's on a CPU.

    XLA's ``jax.nn.dot_product_attention`` takes the mask and additive biases (ALiBi) of ``mods``; what it cannot do
    (soft-capping) falls back to labkit's plain attention, the same computation.
    """
    mods = ScoreMods.merge(mods, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    b, t, n, h, s, k = check_qkv(query, key, value)
    mods.checked((b, n, t, s), h)
    offset = mods.query_offset
    plain_causal = mods.causal and t == s and isinstance(offset, int) and offset == 0
    query_pos, key_pos = offset + jnp.arange(t), jnp.arange(s)  # (T,), (S,)
    bias = mods.bias(query_pos, key_pos)  # (N, T, S): ALiBi and any other additive bias; None if there is none
    only_plain_causal = mods.mask is None and (plain_causal or not mods.causal) and bias is None and mods.additive
    kernel = choose_kernel(accelerator(), dtype=query.dtype, masked=not only_plain_causal, head_width=h)
    if kernel == "blockwise":
        return blockwise_attention(query, key, value, mods=mods, block_size=block_size)
    if not mods.additive:  # XLA's attention has no such argument
        return dot_product_attention(query, key, value, mods=mods)
    mask = mods.mask if plain_causal or not mods.causal else mods.allowed(query_pos, key_pos, mods.mask)
    return jax.nn.dot_product_attention(query, key, value, bias=None if bias is None else bias[None], mask=mask,
                                        scale=mods.scale, is_causal=plain_causal, implementation=kernel)


def attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
    mods: ScoreMods | None = None,
    implementation: str = "plain",
    block_size: int = 128,
) -> Float[Array, "B T N H"]:
    """Dispatch to one of ``IMPLEMENTATIONS``; all compute the same numbers (up to rounding)."""
    mods = ScoreMods.merge(mods, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    if implementation == "plain":
        return dot_product_attention(query, key, value, mods=mods)
    if implementation == "blockwise":
        return blockwise_attention(query, key, value, mods=mods, block_size=block_size)
    if implementation == "jax":
        return jax_attention(query, key, value, mods=mods, block_size=block_size)
    raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")


# ---- the module -------------------------------------------------------------------------------------------------


class MultiHeadAttention(nnx.Module):
    """Self-attention with N query heads and K key/value heads (K < N: grouped-query), query/key/value/out projections.

    Positions inside attention, if any: rotary (``rotary_base``: queries and keys rotated) or ALiBi (``alibi=True``:
    a bias on the scores, with ``alibi_slopes(N)``).

    >>> mha = MultiHeadAttention(32, 4, num_kv_heads=2, rngs=nnx.Rngs(0))
    >>> mha(jnp.ones((2, 7, 32)), causal=True).shape
    (2, 7, 32)
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        use_bias: bool = True,
        rotary_base: float | None = None,
        rotary_layout: str = "half",
        alibi: bool = False,
        implementation: str = "plain",
        block_size: int = 128,
        dtype: Any = jnp.float32,
        kernel_init: Any = nnx.initializers.lecun_normal(),
        out_init: Any = nnx.initializers.lecun_normal(),
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, v in (("width", width), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if width % num_heads:
            raise ValueError(f"width D={width} must be divisible by num_heads N={num_heads} (head width H = D / N)")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads N={num_heads} must be divisible by num_kv_heads K={num_kv_heads}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")
        self.num_heads, self.num_kv_heads, self.head_width = num_heads, num_kv_heads, width // num_heads
        if rotary_base is not None and self.head_width % 2:
            raise ValueError(f"rotary positions need an even head width; got H={self.head_width}")
        if rotary_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rotary_layout must be one of {', '.join(ROPE_LAYOUTS)}; got {rotary_layout!r}")
        self.rotary_base, self.rotary_layout = rotary_base, rotary_layout
        if not isinstance(alibi, bool):
            raise TypeError(f"alibi must be a bool; got {type(alibi).__name__}")
        if alibi and rotary_base is not None:
            raise ValueError("give the attention rotary positions (rotary_base) or ALiBi (alibi=True), not both")
        self.alibi = alibi
        self.implementation, self.block_size = implementation, block_size
        h = self.head_width

        def linear(i: int, o: int, init: Any) -> nnx.Linear:
            return nnx.Linear(i, o, use_bias=use_bias, dtype=dtype, kernel_init=init, rngs=rngs)

        self.query = linear(width, num_heads * h, kernel_init)
        self.key = linear(width, num_kv_heads * h, kernel_init)
        self.value = linear(width, num_kv_heads * h, kernel_init)
        self.out = linear(num_heads * h, width, out_init)

    def __call__(
        self,
        x: Float[Array, "B T D"],
        *,
        mask: Bool[Array, "#B #N #T #S"] | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> Float[Array, "B T D"] | tuple[Float[Array, "B T D"], KVCache]:
        """Attend within ``x``; with a ``cache``, also to the cached positions, and return (output, updated cache)."""
        offset = 0 if cache is None else cache.length
        q, k, v = self._project(x, offset)
        b, t = q.shape[:2]
        if cache is not None:
            cache = cache.append(k, v)
            k, v = cache.keys, cache.values  # (B, S, K, H): every slot; unwritten ones are masked below
            mask = combine_masks(mask, (jnp.arange(cache.size) < cache.length)[None, None, None, :])
        y = attention(q, k.astype(q.dtype), v.astype(q.dtype), mods=self._score_mods(mask, causal, offset),
                      implementation=self.implementation, block_size=self.block_size)  # (B, T, N, H)
        y = self.out(y.reshape(b, t, self.num_heads * self.head_width))  # (B, T, D)
        return y if cache is None else (y, cache)

    def weights(self, x: Float[Array, "B T D"], *, mask: Bool[Array, "#B #N #T #T"] | None = None,
                causal: bool = False) -> Float[Array, "B N T T"]:
        """The attention weights (each row sums to 1) that ``self(x, mask=mask, causal=causal)`` uses: for plots."""
        q, k, _ = self._project(x, 0)
        return attention_weights(q, k.astype(q.dtype), mods=self._score_mods(mask, causal, 0))

    def _score_mods(self, mask: Array | None, causal: bool, offset: int | Array) -> ScoreMods:
        """What this layer does to its scores: the mask, causality at the cache's offset, and ALiBi if used."""
        slopes = jnp.asarray(alibi_slopes(self.num_heads)) if self.alibi else None  # (N,), a constant
        return ScoreMods(mask=mask, causal=causal, query_offset=offset, alibi_slopes=slopes)

    def _project(self, x: Float[Array, "B T D"], offset: int | Array) -> tuple[Array, Array, Array]:
        """Queries (B, T, N, H), keys and values (B, T, K, H); rotary positions offset .. offset+T-1 if used."""
        if getattr(x, "ndim", None) != 3:
            raise ValueError(f"x must have shape (B, T, D); got {tuple(getattr(x, 'shape', ()))}")
        b, t, _ = x.shape
        q = self.query(x).reshape(b, t, self.num_heads, self.head_width)  # (B, T, N, H)
        k = self.key(x).reshape(b, t, self.num_kv_heads, self.head_width)  # (B, T, K, H)
        v = self.value(x).reshape(b, t, self.num_kv_heads, self.head_width)  # (B, T, K, H)
        if self.rotary_base is not None:
            positions = jnp.arange(t) + offset  # (T,)
            rotate = dict(base=self.rotary_base, layout=self.rotary_layout)
            q, k = apply_rotary(q, positions, **rotate), apply_rotary(k, positions, **rotate)  # (B, T, N|K, H)
        return q, k, v
