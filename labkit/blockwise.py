"""Memory-efficient attention: keys and values in blocks, with an online softmax (the idea of FlashAttention).

The plain attention builds the (T, S) matrix of scores for every head: memory grows as T². Here a ``jax.lax.scan``
walks over blocks of ``block_size`` keys and keeps, for every query, only a running maximum m, a running sum of
exponentials and a running weighted sum of values; when a block raises the maximum, what was summed so far is
rescaled by exp(m_old - m_new). The largest temporary is (T, block_size) per head. The backward pass recomputes the
scores block by block from the saved softmax statistics instead of storing them (Dao et al. 2022, FlashAttention;
Rabe and Staats 2021), so training is memory-efficient too. Queries are not split into blocks here.

What happens to the scores of a block (scale, ALiBi, soft-capping, mask, causality) is ``labkit.masks.ScoreMods``'s
``modify``, in the forward pass and, differentiated with ``jax.vjp``, in the backward pass: a new modifier needs no
change here.

>>> q = k = v = jnp.ones((1, 100, 2, 8))                    # (B, T, N, H); 100 is not a multiple of the block
>>> blockwise_attention(q, k, v, causal=True, block_size=32).shape
(1, 100, 2, 8)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from labkit.masks import ScoreMods, check_qkv


def blockwise_attention(
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
    """The same numbers as ``labkit.attention.dot_product_attention``, never holding a (T, S) matrix.

    The scores are modified by ``mods`` (or by the keywords mask, causal, query_offset and scale, which build one).
    """
    mods = ScoreMods.merge(mods, mask=mask, causal=causal, query_offset=query_offset, scale=scale)
    b, t, n, h, s, k = check_qkv(query, key, value)
    mods = mods.checked((b, n, t, s), h)
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size!r}")
    block = min(block_size, s)
    num_blocks = -(-s // block)  # ceil: the last block is padded with keys that nobody may see
    q = query.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)  # (B, K, G, T, H)
    kb, vb = (_to_blocks(x, num_blocks, block) for x in (key, value))  # (nb, B, K, block, H)
    out = _flash(q, kb, vb, mods.pad_keys(num_blocks * block), s)  # (B, K, G, T, H)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(query.dtype)


def _to_blocks(x: Array, num_blocks: int, block: int) -> Array:
    b, s, k, h = x.shape
    x = jnp.pad(x, ((0, 0), (0, num_blocks * block - s), (0, 0), (0, 0)))
    return x.reshape(b, num_blocks, block, k, h).transpose(1, 0, 3, 2, 4)  # (nb, B, K, block, H)


def _raw_scores(q: Array, k_block: Array) -> Array:
    """q·k of one key block (B, K, G, T, block), accumulated in float32 (float64 if the inputs are)."""
    return jnp.einsum("bkgth,bksh->bkgts", q, k_block, preferred_element_type=_acc(q))


def _modified(raw: Array, index: Array, mods: ScoreMods, s: int) -> Array:
    """The scores of key block ``index`` that go into the softmax (B, K, G, T, block); padding keys get -inf."""
    b, k, g, t, block = raw.shape
    scores = mods.modify(raw.reshape(b, k * g, t, block), key_start=index * block)  # heads n = k * G + g: (B, N, ...)
    real = index * block + jnp.arange(block) < s  # padding keys past the end are not keys at all
    return jnp.where(real, scores.reshape(raw.shape), -jnp.inf)


def _acc(x):  # accumulate in float32, or float64 when the inputs are
    return jnp.promote_types(x.dtype, jnp.float32)


def _forward(q, kb, vb, mods, s):
    def step(carry, xs):
        m, total, o = carry  # running max (B, K, G, T), running sum, running unnormalised output (B, K, G, T, H)
        i, k_block, v_block = xs
        scores = _modified(_raw_scores(q, k_block), i, mods, s)  # (B, K, G, T, block)
        m_new = jnp.maximum(m, scores.max(axis=-1))
        rescale = jnp.exp(m - m_new)  # exp(-inf) = 0 on the first block
        p = jnp.exp(scores - m_new[..., None])  # (B, K, G, T, block)
        total = rescale * total + p.sum(axis=-1)
        pv = jnp.einsum("bkgts,bksh->bkgth", p.astype(v_block.dtype), v_block, preferred_element_type=_acc(q))
        return (m_new, total, rescale[..., None] * o + pv), None

    stats_shape = q.shape[:4]
    init = (jnp.full(stats_shape, -jnp.inf, _acc(q)), jnp.zeros(stats_shape, _acc(q)), jnp.zeros(q.shape, _acc(q)))
    (m, total, o), _ = jax.lax.scan(step, init, (jnp.arange(kb.shape[0]), kb, vb))
    return o / total[..., None], (m, total)  # output (B, K, G, T, H); softmax max and sum (B, K, G, T)


# Only the key length is a non-differentiable argument; every score modifier travels inside ``mods``, whose
# cotangent is None (the modifiers are constants), so adding one changes nothing here.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, kb, vb, mods, s):
    return _forward(q, kb, vb, mods, s)[0]


def _flash_fwd(q, kb, vb, mods, s):
    out, (m, total) = _forward(q, kb, vb, mods, s)
    return out, (q, kb, vb, mods, out, m, total)


def _flash_bwd(s, residuals, d_out):
    q, kb, vb, mods, out, m, total = residuals
    acc = _acc(q)
    d_out = d_out.astype(acc)
    delta = jnp.sum(d_out * out, axis=-1)  # (B, K, G, T): rowsum(dO ∘ O), the softmax's correction term

    def step(dq, xs):
        i, k_block, v_block = xs
        # The forward's scores, recomputed, and the map back from their gradient to that of the raw q·k: for the
        # scale, a bias, soft-capping and the mask alike (masked scores are constants and get none).
        scores, to_raw = jax.vjp(lambda raw: _modified(raw, i, mods, s), _raw_scores(q, k_block))
        # The forward's softmax weights (B, K, G, T, block). Not exp(scores - log-sum-exp): for a query that may see
        # nothing, m is MASKED_SCORE, so huge that m + log(total) rounds back to m.
        p = jnp.exp(scores - m[..., None]) / total[..., None]
        dv = jnp.einsum("bkgts,bkgth->bksh", p, d_out)  # (B, K, block, H), summed over the G query heads
        dp = jnp.einsum("bkgth,bksh->bkgts", d_out, v_block.astype(acc))
        (ds,) = to_raw(p * (dp - delta[..., None]))  # gradient of the raw scores q·k (B, K, G, T, block)
        dq = dq + jnp.einsum("bkgts,bksh->bkgth", ds, k_block.astype(acc))
        dk = jnp.einsum("bkgts,bkgth->bksh", ds, q.astype(acc))
        return dq, (dk, dv)

    dq, (dkb, dvb) = jax.lax.scan(step, jnp.zeros(q.shape, acc), (jnp.arange(kb.shape[0]), kb, vb))
    return dq.astype(q.dtype), dkb.astype(kb.dtype), dvb.astype(vb.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)
