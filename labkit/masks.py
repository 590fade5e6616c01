"""Attention masks and the shape checks shared by every attention implementation (plain, blockwise, jax).

A mask is a boolean array that broadcasts to (B, N, T, S); **True means "may attend"**, False means "ignore".

>>> causal_mask(3)[0, 0].astype(int).tolist()                # row = query, column = key
[[1, 0, 0], [1, 1, 0], [1, 1, 1]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

# What a masked score becomes: very negative but finite, as in jax.nn.dot_product_attention, so that a query that may
# attend to nothing gets the plain average of the values instead of NaN.
MASKED_SCORE = -0.7 * float(np.finfo(np.float32).max)


def causal_mask(query_len: int, key_len: int | None = None, *, offset: int | Array = 0) -> Bool[Array, "1 1 T S"]:
    """True where query i may see key j: j <= i + ``offset`` (the queries sit at positions offset, offset + 1, ...)."""
    key_len = query_len if key_len is None else key_len
    for name, value in (("query_len", query_len), ("key_len", key_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    query_pos = jnp.arange(query_len)[:, None] + offset  # (T, 1)
    return (jnp.arange(key_len)[None, :] <= query_pos)[None, None]  # (1, 1, T, S)


def values_readable(x: Any) -> bool:
    """Whether this process can read ``x``'s values to check them: not a tracer inside ``jit``, and not an array
    sharded over devices of other processes (reading one of those would fail in a multi-process run).

    >>> values_readable(jnp.ones(3)), values_readable(np.ones(3))
    (True, True)
    """
    return not isinstance(x, jax.core.Tracer) and bool(getattr(x, "is_fully_addressable", True))


def padding_mask(lengths: Int[Array, " B"], key_len: int) -> Bool[Array, "B 1 1 S"]:
    """True for the first ``lengths[b]`` keys of row b: real tokens, not padding at the end.

    >>> padding_mask(jnp.array([2, 3]), 4)[:, 0, 0].astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 0]]
    """
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1 or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be a 1-D integer array (B,); got shape {lengths.shape}, dtype {lengths.dtype}")
    if not isinstance(key_len, int) or key_len < 1:
        raise ValueError(f"key_len must be a positive int; got {key_len!r}")
    if values_readable(lengths) and lengths.size:  # values can only be checked outside jit, on this process
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0 or high > key_len:
            raise ValueError(f"lengths must lie in [0, {key_len}]; got values from {low} to {high}")
    return (jnp.arange(key_len)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)


def combine_masks(*masks: Bool[Array, "..."] | None) -> Bool[Array, "..."] | None:
    """Logical AND of the masks that are not None (None if all are)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def check_mask(mask: Any, shape: tuple[int, int, int, int]) -> None:
    """Raise unless ``mask`` is None or a boolean array that broadcasts to ``shape`` = (B, N, T, S)."""
    if mask is None:
        return
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(f"mask must be a boolean array or None; got {type(mask).__name__}")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must have dtype bool (True = may attend); got dtype {mask.dtype}")
    ok = mask.ndim == 4 and all(m in (1, s) for m, s in zip(mask.shape, shape))
    if not ok:
        raise ValueError(f"mask must broadcast to (B, N, T, S) = {shape} (4 dims, each 1 or equal); "
                         f"got {tuple(mask.shape)}")


def check_qkv(query: Array, key: Array, value: Array) -> tuple[int, int, int, int, int, int]:
    """Check the shapes of query (B, T, N, H), key and value (B, S, K, H); return (B, T, N, H, S, K)."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must have 4 dims {'(B, T, N, H)' if name == 'query' else '(B, S, K, H)'}; "
                             f"got shape {tuple(getattr(x, 'shape', ()))}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    b, t, n, h = query.shape
    _, s, k, _ = key.shape
    if value.shape != key.shape:
        raise ValueError(f"value must have the shape of key {tuple(key.shape)}; got {tuple(value.shape)}")
    if key.shape[0] != b or key.shape[3] != h:
        raise ValueError(f"key must have batch {b} and head width {h} like query {tuple(query.shape)}; "
                         f"got {tuple(key.shape)}")
    if n % k:
        raise ValueError(f"query heads N={n} must be a multiple of key/value heads K={k}")
    return b, t, n, h, s, k


