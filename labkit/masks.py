"""What changes the attention scores, and the checks shared by every attention implementation (plain, blockwise, jax).

A mask is a boolean array that broadcasts to (B, N, T, S); **True means "may attend"**, False means "ignore".
``ScoreMods`` gathers everything that acts on the scores between q·k and the softmax (scale, additive biases such as
ALiBi, soft-capping, the mask and causality at a query offset) into one value that every implementation reads.

>>> causal_mask(3)[0, 0].astype(int).tolist()                # row = query, column = key
[[1, 0, 0], [1, 1, 0], [1, 1, 1]]
>>> mods = ScoreMods(causal=True, alibi_slopes=jnp.array([0.5]), scale=1.0)
>>> mods.modify(jnp.zeros((1, 1, 3, 3))).tolist()[0][0][2]   # last query: bias -0.5 per position of distance
[-1.0, -0.5, 0.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from labkit.positions import alibi_bias

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
    ok = mask.ndim == 4 and all(m in (1, s) for m, s in zip(mask.shape, shape, strict=True))
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




# ---- everything that modifies the scores, as one value ------------------------------------------------------------


def _static(default: Any) -> Any:
    """A field that is part of the pytree's structure (a Python value jit specializes on), not an array leaf."""
    return dataclasses.field(default=default, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreMods:
    """What happens to the raw scores q·k before the softmax, for every attention implementation.

    Queries sit at positions ``query_offset`` .. ``query_offset`` + T - 1 (a KV cache's length), keys at 0 .. S - 1.
    ``modify`` applies, in this order: the scale, the additive biases of ``bias`` (ALiBi), soft-capping, then the mask
    and causality. The plain and blockwise attentions and their gradients all go through ``modify`` (the blockwise
    backward pass differentiates it with ``jax.vjp``), and ``jax.nn.dot_product_attention`` gets ``bias`` as its bias
    argument. So a new modifier is one field here and one term in ``bias`` (additive) or ``modify`` (otherwise).
    The modifiers are constants: no gradient flows into them.

    It is a pytree: arrays (mask, query offset, slopes) are leaves, and the Python values jit specializes on (causal,
    scale, softcap) are static.

    >>> mods = ScoreMods(causal=True, scale=0.5)
    >>> bool((mods.modify(jnp.ones((1, 1, 2, 2))) == jnp.array([[0.5, MASKED_SCORE], [0.5, 0.5]])).all())
    True
    """

    mask: Bool[Array, "#B #N #T #S"] | None = None  # True = may attend; None: every key
    query_offset: int | Array = 0  # position of the first query: the number of keys already in a KV cache
    alibi_slopes: Float[Array, " N"] | None = None  # ALiBi: head n's score drops by slope[n] per position of distance
    causal: bool = _static(False)  # query i sees only keys j <= i
    scale: float | None = _static(None)  # multiplies q·k; None: 1/sqrt(H), filled in by ``checked``
    softcap: float | None = _static(None)  # scores -> c·tanh(scores / c), bounded by c (as in Gemma 2); None: off

    def __post_init__(self) -> None:  # only the static fields: the array leaves may be tracers or placeholders here
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be a bool; got {type(self.causal).__name__}")
        for name in ("scale", "softcap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None; got {value!r}")

    @classmethod
    def merge(cls, mods: "ScoreMods | None", *, mask: Any = None, causal: bool = False,
              query_offset: int | Array = 0, scale: float | None = None) -> "ScoreMods":
        """``mods``, or the one built from the attention functions' older keywords (which ``mods`` replaces)."""
        if mods is None:
            return cls(mask=mask, causal=causal, query_offset=query_offset, scale=scale)
        if not isinstance(mods, ScoreMods):
            raise TypeError(f"mods must be a ScoreMods or None; got {type(mods).__name__}")
        default_offset = isinstance(query_offset, int) and query_offset == 0
        if mask is not None or causal or not default_offset or scale is not None:
            raise ValueError("give the score modifiers either as mods=ScoreMods(...) or as the keywords mask, causal, "
                             "query_offset and scale, not both")
        return mods

    def checked(self, shape: tuple[int, int, int, int], head_width: int) -> "ScoreMods":
        """Raise unless the arrays fit scores of ``shape`` = (B, N, T, S); fill in the default scale 1/sqrt(H)."""
        check_mask(self.mask, shape)
        slopes = self.alibi_slopes
        if slopes is not None and (getattr(slopes, "shape", None) != (shape[1],)
                                   or not jnp.issubdtype(slopes.dtype, jnp.floating)):
            raise ValueError(f"alibi_slopes must be a float array of shape (N,) = ({shape[1]},), one per query head; "
                             f"got {getattr(slopes, 'dtype', type(slopes).__name__)} {getattr(slopes, 'shape', '')}")
        return self if self.scale is not None else dataclasses.replace(self, scale=head_width**-0.5)

    @property
    def additive(self) -> bool:
        """Whether everything besides the mask is scale + ``bias``, so ``jax.nn.dot_product_attention`` can do it."""
        return self.softcap is None

    def bias(self, query_pos: Int[Array, " T"], key_pos: Int[Array, " S"]) -> Float[Array, "#N T S"] | None:
        """The sum of the additive biases for these query and key positions (None if there are none)."""
        if self.alibi_slopes is None:
            return None
        return alibi_bias(self.alibi_slopes, query_pos, key_pos)  # (N, T, S)

    def allowed(self, query_pos: Int[Array, " T"], key_pos: Int[Array, " S"],
                mask: Bool[Array, "#B #N #T #S"] | None) -> Bool[Array, "#B #N T S"] | None:
        """Which (query, key) pairs may attend: ``mask`` (this block of it) and causality; None if all may."""
        causal = (key_pos[None, :] <= query_pos[:, None])[None, None] if self.causal else None  # (1, 1, T, S)
        return combine_masks(mask, causal)

    def modify(self, raw: Float[Array, "B N T S"], *, key_start: int | Array = 0) -> Float[Array, "B N T S"]:
        """The scores that go into the softmax, from raw q·k of keys ``key_start`` .. ``key_start`` + S - 1.

        The blockwise attention calls it once per key block; the mask must then cover every block in full
        (``pad_keys``). Masked scores become ``MASKED_SCORE``.
        """
        t, s = raw.shape[-2:]
        query_pos = self.query_offset + jnp.arange(t)  # (T,)
        key_pos = key_start + jnp.arange(s)  # (S,)
        if self.scale is None:
            raise ValueError("ScoreMods.modify needs a scale: give scale=, or call checked(shape, head_width) first")
        scores = raw * self.scale
        bias = self.bias(query_pos, key_pos)
        if bias is not None:
            scores = scores + bias.astype(scores.dtype)  # (B, N, T, S)
        if self.softcap is not None:
            scores = self.softcap * jnp.tanh(scores / self.softcap)
        allowed = self.allowed(query_pos, key_pos, self._mask_block(key_start, s))
        return scores if allowed is None else jnp.where(allowed, scores, MASKED_SCORE)

    def pad_keys(self, length: int) -> "ScoreMods":
        """The same modifiers for ``length`` keys, the extra keys masked (the blockwise attention's last block)."""
        if self.mask is None or self.mask.shape[3] in (1, length):
            return self
        extra = length - self.mask.shape[3]
        return dataclasses.replace(self, mask=jnp.pad(self.mask, ((0, 0),) * 3 + ((0, extra),)))

    def _mask_block(self, key_start: int | Array, s: int) -> Bool[Array, "#B #N #T #S"] | None:
        mask = self.mask
        if mask is None or mask.shape[3] == 1 or (isinstance(key_start, int) and key_start == 0
                                                  and mask.shape[3] == s):
            return mask
        return jax.lax.dynamic_slice_in_dim(mask, key_start, s, axis=3)  # (B', N', T', S)
