"""Scaled dot-product attention and multi-head self-attention (chapter 3).

Layout follows ``jax.nn.dot_product_attention``: queries (B, T, N, H), keys and values (B, S, K, H) with K key/value
heads (K = N is multi-head attention, K < N grouped-query attention: query head n reads key/value head n // (N / K)).
A mask is a boolean array that broadcasts to (B, N, T, S); **True means "may attend"**, False means "ignore". The
mask builders (``causal_mask``, ``padding_mask``, ``combine_masks``) live in ``labkit.masks`` and are re-exported here.

>>> q = k = v = jnp.ones((2, 5, 4, 8))                       # (B, T, N, H)
>>> dot_product_attention(q, k, v, causal=True).shape
(2, 5, 4, 8)
>>> attention(q, k, v, causal=True, implementation="blockwise", block_size=2).shape   # same numbers, less memory
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
from labkit.masks import MASKED_SCORE, causal_mask, check_mask, check_qkv, combine_masks, padding_mask
from labkit.positions import ROPE_LAYOUTS, apply_rotary
from labkit.profiles import Accelerator, accelerator

__all__ = [
    "IMPLEMENTATIONS", "MASKED_SCORE", "MultiHeadAttention", "attention", "attention_weights", "blockwise_attention",
    "causal_mask", "check_mask", "choose_kernel", "combine_masks", "dot_product_attention", "jax_attention",
    "padding_mask", "share_heads",
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
) -> Float[Array, "B N T S"]:
    """softmax(q kᵀ · scale) over keys, masked; each row sums to 1 (computed in float32)."""
    b, t, n, h, s, k = check_qkv(query, key, key)
    check_mask(mask, (b, n, t, s))
    scale = h**-0.5 if scale is None else scale
    key = share_heads(key, n)  # (B, S, N, H)
    acc = jnp.promote_types(query.dtype, jnp.float32)  # accumulate in float32 (float64 if the inputs are)
    scores = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=acc) * scale  # (B, N, T, S)
    allowed = combine_masks(mask, causal_mask(t, s, offset=query_offset) if causal else None)
    if allowed is not None:
        scores = jnp.where(allowed, scores, MASKED_SCORE)
    return jax.nn.softmax(scores, axis=-1)  # (B, N, T, S)


def dot_product_attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
) -> Float[Array, "B T N H"]:
    """The plain attention: every query's weighted average of the values, weights = ``attention_weights``."""
    n = check_qkv(query, key, value)[2]
    weights = attention_weights(query, key, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    acc = jnp.promote_types(query.dtype, jnp.float32)
    out = jnp.einsum("bnts,bsnh->btnh", weights.astype(value.dtype), share_heads(value, n), preferred_element_type=acc)
    return out.astype(query.dtype)  # (B, T, N, H)


def choose_kernel(hardware: Accelerator, *, dtype: Any, masked: bool, head_width: int) -> str:
    """Which kernel ``jax_attention`` runs: ``"cudnn"`` (cuDNN's fused flash attention), ``"blockwise"`` (labkit's
    memory-efficient attention) or ``"xla"`` (``jax.nn.dot_product_attention``'s plain XLA version).

    cuDNN's kernel needs an NVIDIA GPU of compute capability 8.0 or more (Ampere on: not a T4 or V100), 16-bit
    inputs, head widths that are multiples of 8 up to 128, and no mask beyond the plain causal one (JAX has no
    fallback once "cudnn" is asked for, so every condition is checked here). Every other accelerator case (a TPU, an
    older or AMD GPU, a padding mask, a prefill at an offset, float32) takes the blockwise attention, which never
    holds the B x N x T x S scores; on a CPU, XLA's attention.

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
    block_size: int = 128,
) -> Float[Array, "B T N H"]:
    """The fastest attention for the hardware (``choose_kernel``): cuDNN's fused kernel on an NVIDIA GPU from
    Ampere on, labkit's blockwise attention on other accelerators and fallback cases, XLA's on a CPU."""
    b, t, n, h, s, k = check_qkv(query, key, value)
    check_mask(mask, (b, n, t, s))
    plain_causal = causal and t == s and isinstance(query_offset, int) and query_offset == 0
    kernel = choose_kernel(accelerator(), dtype=query.dtype, masked=mask is not None or (causal and not plain_causal),
                           head_width=h)
    if kernel == "blockwise":
        return blockwise_attention(query, key, value, mask=mask, causal=causal, query_offset=query_offset,
                                   scale=scale, block_size=block_size)
    if causal and not plain_causal:
        mask = combine_masks(mask, causal_mask(t, s, offset=query_offset))
    return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, is_causal=plain_causal,
                                        implementation=kernel)


def attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    *,
    mask: Bool[Array, "#B #N #T #S"] | None = None,
    causal: bool = False,
    query_offset: int | Array = 0,
    scale: float | None = None,
    implementation: str = "plain",
    block_size: int = 128,
) -> Float[Array, "B T N H"]:
    """Dispatch to one of ``IMPLEMENTATIONS``; all compute the same numbers (up to rounding)."""
    kwargs = dict(mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    if implementation == "plain":
        return dot_product_attention(query, key, value, **kwargs)
    if implementation == "blockwise":
        return blockwise_attention(query, key, value, block_size=block_size, **kwargs)
    if implementation == "jax":
        return jax_attention(query, key, value, block_size=block_size, **kwargs)
    raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")


# ---- the module -------------------------------------------------------------------------------------------------


class MultiHeadAttention(nnx.Module):
    """Self-attention with N query heads and K key/value heads (K < N: grouped-query), query/key/value/out projections.

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
        y = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, causal=causal, query_offset=offset,
                      implementation=self.implementation, block_size=self.block_size)  # (B, T, N, H)
        y = self.out(y.reshape(b, t, self.num_heads * self.head_width))  # (B, T, D)
        return y if cache is None else (y, cache)

    def weights(self, x: Float[Array, "B T D"], *, mask: Bool[Array, "#B #N #T #T"] | None = None,
                causal: bool = False) -> Float[Array, "B N T T"]:
        """The attention weights (each row sums to 1) that ``self(x, mask=mask, causal=causal)`` uses: for plots."""
        q, k, _ = self._project(x, 0)
        return attention_weights(q, k.astype(q.dtype), mask=mask, causal=causal)

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
