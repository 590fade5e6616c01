"""The key/value cache of one attention layer: generation computes each position's keys and values only once.

The arrays are allocated once at their full size S and written in place at the current position (under ``jit`` the
update is done in place), so every decoding step has the same shapes and compiles once.

>>> cache = KVCache.empty(batch_size=2, size=16, num_kv_heads=4, head_width=8, dtype=jnp.float32)
>>> cache = cache.append(jnp.ones((2, 3, 4, 8)), jnp.ones((2, 3, 4, 8)))   # three positions written
>>> int(cache.length), cache.size
(3, 16)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCache:
    """Keys and values of positions 0 .. length-1 of one layer; slots at and after ``length`` are unused."""

    keys: Float[Array, "B S K H"]  # keys after the key projection (and rotary positions, if any)
    values: Float[Array, "B S K H"]  # values after the value projection
    length: Int[Array, ""]  # how many positions are filled: the next ``append`` writes here

    @classmethod
    def empty(cls, *, batch_size: int, size: int, num_kv_heads: int, head_width: int, dtype: Any) -> "KVCache":
        """A cache of ``size`` positions, all unused."""
        for name, v in (("batch_size", batch_size), ("size", size), ("num_kv_heads", num_kv_heads),
                        ("head_width", head_width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        zeros = jnp.zeros((batch_size, size, num_kv_heads, head_width), dtype)  # (B, S, K, H)
        return cls(keys=zeros, values=zeros, length=jnp.zeros((), jnp.int32))

    @property
    def size(self) -> int:
        """S: the most positions the cache can hold."""
        return self.keys.shape[1]

    def append(self, keys: Float[Array, "B T K H"], values: Float[Array, "B T K H"]) -> "KVCache":
        """A cache with ``keys`` and ``values`` written at positions length .. length+T-1.

        Outside ``jit`` a write past the end is an error; inside, the length is not known and such a write would
        overwrite the last slots (``dynamic_update_slice`` clamps), so callers size the cache first.
        """
        expected = (self.keys.shape[0], keys.shape[1], *self.keys.shape[2:])
        for name, x in (("keys", keys), ("values", values)):
            if x.ndim != 4 or x.shape != expected:
                raise ValueError(f"{name} must have shape (B, T, K, H) = {expected} to fit the cache; got {x.shape}")
        t = keys.shape[1]
        if not isinstance(self.length, jax.core.Tracer) and int(self.length) + t > self.size:
            raise ValueError(f"the cache holds {self.size} positions; {int(self.length)} are used and {t} more "
                             "do not fit")
        start = (0, self.length, 0, 0)
        return KVCache(
            keys=jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), start),
            values=jax.lax.dynamic_update_slice(self.values, values.astype(self.values.dtype), start),
            length=self.length + t,
        )
