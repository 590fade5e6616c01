"""A decoder-only Transformer (GPT): token embedding, pre-norm blocks on a residual stream, final norm, LM head.

One config (``labkit.gpt_config.GPTConfig``, re-exported here) covers GPT-2 (LayerNorm, GELU, learned positions,
tied embeddings) and LLaMA-style models (RMSNorm, SwiGLU, rotary positions, untied head, grouped-query attention);
``positions="alibi"`` puts ALiBi's distance penalty on the attention scores instead of adding positions.

>>> config = GPTConfig.ci()
>>> model = GPT(config, rngs=nnx.Rngs(0))
>>> model(jnp.zeros((2, 10), jnp.int32)).shape              # logits (B, T, V)
(2, 10, 256)
>>> param_count(config) == count_params(model)
True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from labkit.attention import MultiHeadAttention
from labkit.gpt_config import GPTConfig, param_count
from labkit.kvcache import KVCache
from labkit.masks import values_readable
from labkit.nn import count_params
from labkit.positions import POSITION_SCHEMES, LearnedPositions, SinusoidalPositions

__all__ = ["GPT", "GPTConfig", "Block", "FeedForward", "make_norm", "param_count", "count_params"]


def make_norm(config: GPTConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The normalization the config names: LayerNorm (GPT-2) or RMSNorm (LLaMA), over the width D."""
    if config.norm == "rmsnorm":
        return nnx.RMSNorm(config.width, epsilon=config.norm_eps, dtype=config.dtype, rngs=rngs)
    return nnx.LayerNorm(config.width, epsilon=config.norm_eps, use_bias=config.bias, use_fast_variance=False,
                         dtype=config.dtype, rngs=rngs)


class FeedForward(nnx.Module):
    """The position-wise network: GELU (D -> F -> D) or SwiGLU (down(silu(gate(x)) * up(x)))."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.init_std)
        out_init = nnx.initializers.normal(config.init_std / (2 * config.num_layers) ** 0.5)  # GPT-2's residual scaling
        d, f = config.width, config.mlp_width

        def linear(i: int, o: int, kernel_init: Any) -> nnx.Linear:
            return nnx.Linear(i, o, use_bias=config.bias, dtype=config.dtype, kernel_init=kernel_init, rngs=rngs)

        self.approximate = config.gelu_approximate
        self.up = linear(d, f, init)
        self.gate = linear(d, f, init) if config.mlp == "swiglu" else None
        self.down = linear(f, d, out_init)

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        if self.gate is None:
            return self.down(jax.nn.gelu(self.up(x), approximate=self.approximate))  # (B, T, F) -> (B, T, D)
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))  # (B, T, F) -> (B, T, D)


class Block(nnx.Module):
    """One pre-norm Transformer block: x + attention(norm(x)), then x + feed_forward(norm(x)).

    ``causal=False`` makes it an encoder block (every position sees every other), as in a Vision Transformer.
    """

    def __init__(self, config: GPTConfig, *, causal: bool = True, rngs: nnx.Rngs):
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool; got {type(causal).__name__}")
        self.causal = causal
        self.attn_norm = make_norm(config, rngs=rngs)
        self.attn = MultiHeadAttention(
            config.width, config.num_heads, num_kv_heads=config.num_kv_heads, use_bias=config.bias,
            rotary_base=config.rope_base if config.positions == "rotary" else None,
            rotary_layout=config.rope_layout, alibi=config.positions == "alibi",
            implementation=config.attention, block_size=config.block_size, dtype=config.dtype,
            kernel_init=nnx.initializers.normal(config.init_std),
            out_init=nnx.initializers.normal(config.init_std / (2 * config.num_layers) ** 0.5), rngs=rngs)
        self.mlp_norm = make_norm(config, rngs=rngs)
        self.mlp = FeedForward(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, x: Float[Array, "B T D"], *, mask: Array | None = None,
                 cache: KVCache | None = None) -> Any:
        """The new residual stream (B, T, D); with a ``cache``, (stream, updated cache)."""
        attended = self.attn(self.attn_norm(x), mask=mask, causal=self.causal, cache=cache)
        if cache is not None:
            attended, cache = attended
        x = x + self.dropout(attended)  # (B, T, D)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))  # (B, T, D)
        return x if cache is None else (x, cache)


@nnx.remat
def _remat_block(block: Block, x: Float[Array, "B T D"], mask: Array | None) -> Float[Array, "B T D"]:
    """One block under activation checkpointing: only its input is kept for the backward pass, which runs the
    block's forward again (about a third more FLOPs for a step, far less memory for activations)."""
    return block(x, mask=mask)


class GPT(nnx.Module):
    """The decoder-only Transformer; ``model(tokens)`` gives next-token logits at every position."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig; got {type(config).__name__}")
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.width, dtype=config.dtype,
                               embedding_init=nnx.initializers.normal(config.init_std), rngs=rngs)
        scheme = POSITION_SCHEMES[config.positions]
        if not scheme.added_to_input:
            self.positions = None  # rotary or ALiBi: applied inside attention
        elif scheme.learned:
            self.positions = LearnedPositions(config.max_len, config.width, dtype=config.dtype,
                                              init=nnx.initializers.normal(config.init_std), rngs=rngs)
        else:
            self.positions = SinusoidalPositions(config.max_len, config.width, dtype=config.dtype)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = make_norm(config, rngs=rngs)
        self.head = None if config.tie_embeddings else nnx.Linear(
            config.width, config.vocab_size, use_bias=False, dtype=config.dtype,
            kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs)

    def init_cache(self, batch_size: int, size: int | None = None) -> tuple[KVCache, ...]:
        """An empty key/value cache per layer for ``size`` positions (default ``max_len``)."""
        c = self.config
        size = c.max_len if size is None else size
        if not isinstance(size, int) or not 1 <= size <= c.max_len:
            raise ValueError(f"size must be an int in [1, max_len={c.max_len}]; got {size!r}")
        return tuple(KVCache.empty(batch_size=batch_size, size=size, num_kv_heads=c.num_kv_heads,
                                   head_width=c.head_width, dtype=c.dtype) for _ in range(c.num_layers))

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        *,
        mask: Bool[Array, "#B #N #T #S"] | None = None,
        cache: tuple[KVCache, ...] | None = None,
    ) -> Float[Array, "B T V"] | tuple[Float[Array, "B T V"], tuple[KVCache, ...]]:
        """Logits (B, T, V) in float32; with a ``cache`` (from ``init_cache``), (logits, updated cache).

        ``mask`` (True = may attend, e.g. ``labkit.attention.padding_mask``) is combined with the causal mask; with
        a cache its last axis S is the cache size.
        """
        if cache is None:
            x = self.hidden(tokens, mask=mask)  # (B, T, D)
        else:
            x, cache = self._run_blocks(tokens, mask, cache)
        logits = self.logits(x)  # (B, T, V) float32
        return logits if cache is None else (logits, cache)

    def logits(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        """The LM head: x times the token table (tied) or the head's kernel, in the compute dtype with float32
        accumulation (``preferred_element_type``), so bf16 inputs still give float32 logits summed in float32."""
        if self.head is None:
            table = self.embed.embedding[...].astype(x.dtype)  # (V, D)
            return jnp.einsum("btd,vd->btv", x, table, preferred_element_type=jnp.float32)
        if type(self.head) is nnx.Linear:  # an adapted head (LoRA) computes itself
            kernel = self.head.kernel[...].astype(x.dtype)  # (D, V)
            return jnp.einsum("btd,dv->btv", x, kernel, preferred_element_type=jnp.float32)
        return self.head(x).astype(jnp.float32)

    def hidden(self, tokens: Int[Array, "B T"], *, mask: Bool[Array, "#B #N #T #T"] | None = None
               ) -> Float[Array, "B T D"]:
        """The final-normed residual stream (B, T, D) that the LM head reads: the features a task head builds on.

        >>> GPT(GPTConfig.ci(), rngs=nnx.Rngs(0)).hidden(jnp.zeros((2, 10), jnp.int32)).shape
        (2, 10, 32)
        """
        return self._run_blocks(tokens, mask, None)[0]

    def _run_blocks(self, tokens: Any, mask: Array | None, cache: tuple[KVCache, ...] | None) -> tuple[Array, Any]:
        self._check(tokens, cache)
        x = self._embed(tokens, 0 if cache is None else cache[0].length)  # (B, T, D)
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = _remat_block(block, x, mask) if self.config.remat else block(x, mask=mask)  # (B, T, D)
            else:
                x, layer_cache = block(x, mask=mask, cache=cache[i])
                new_cache.append(layer_cache)
        return self.final_norm(x), (None if cache is None else tuple(new_cache))  # (B, T, D)

    def attention_maps(self, tokens: Int[Array, "B T"], *,
                       mask: Bool[Array, "#B #N #T #T"] | None = None) -> list[Float[Array, "B N T T"]]:
        """The attention weights of every layer (row = query, column = key), for plots of what the model attends to.

        >>> model = GPT(GPTConfig.ci(), rngs=nnx.Rngs(0))       # L = 2 layers, N = 2 heads
        >>> [m.shape for m in model.attention_maps(jnp.zeros((1, 5), jnp.int32))]
        [(1, 2, 5, 5), (1, 2, 5, 5)]
        """
        self._check(tokens, None)
        x = self._embed(tokens, 0)  # (B, T, D)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.attn_norm(x), mask=mask, causal=block.causal))  # (B, N, T, T)
            x = block(x, mask=mask)
        return maps

    def _embed(self, tokens: Int[Array, "B T"], offset: int | Array) -> Float[Array, "B T D"]:
        x = self.embed(tokens)  # (B, T, D)
        if self.positions is not None:
            x = x + self.positions(tokens.shape[1], offset=offset)  # (T, D) broadcast over the batch
        return self.dropout(x)

    def _check(self, tokens: Any, cache: tuple[KVCache, ...] | None) -> None:
        c = self.config
        if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array of shape (B, T); got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        t = tokens.shape[1]
        if t > c.max_len:
            raise ValueError(f"tokens has T={t} positions but the model's max_len is {c.max_len}")
        if values_readable(tokens) and tokens.size:  # values can only be checked outside jit, on this process
            values = np.asarray(tokens)
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= c.vocab_size:
                raise ValueError(f"tokens must be ids in [0, {c.vocab_size - 1}] (the vocabulary); "
                                 f"got values from {low} to {high}")
        if cache is not None and (not isinstance(cache, tuple) or len(cache) != c.num_layers):
            raise ValueError(f"cache must be a tuple of {c.num_layers} KVCache (one per layer, from init_cache); "
                             f"got {type(cache).__name__} of length {len(cache) if hasattr(cache, '__len__') else '?'}")
