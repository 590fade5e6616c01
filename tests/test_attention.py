import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from labkit import attention as A
from labkit.kvcache import KVCache


def naive_attention(q, k, v, allowed):
    """Loops over batch, head and query in float64: the definition, written out."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    allowed = np.broadcast_to(np.asarray(allowed), (b, n, t, s))
    out = np.zeros((b, t, n, h))
    for bi, ni, ti in itertools.product(range(b), range(n), range(t)):
        kv = ni // (n // kv_heads)
        scores = np.array([q[bi, ti, ni] @ k[bi, si, kv] / np.sqrt(h) for si in range(s)])
        ok = allowed[bi, ni, ti]
        # A query that may see nothing averages all values (jax's convention).
        scores = np.where(ok, scores, -np.inf) if ok.any() else np.zeros(s)
        w = np.exp(scores - scores.max())
        out[bi, ti, ni] = (w / w.sum()) @ v[bi, :, kv]
    return out


def random_case(b, t, s, n, k, h, seed):
    # NumPy, not jax.random: every new shape of an eager jax op costs a compilation, and these tests use many shapes.
    rng = np.random.default_rng(seed)
    q, key, value = (rng.standard_normal(shape, np.float32) for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))
    mask = rng.random((b, n, t, s)) < 0.7  # with small S, some queries may see nothing at all
    return q, key, value, mask


def np_causal(t, s, offset):
    return np.arange(s)[None, :] <= np.arange(t)[:, None] + offset  # (T, S)


# (B, T, S, N, K, H): one query, more keys than queries, grouped-query (N > K), multi-query (K = 1), head width 1.
SHAPES = [(1, 1, 1, 1, 1, 4), (3, 1, 6, 2, 2, 8), (2, 5, 5, 4, 2, 8), (2, 4, 7, 3, 1, 4), (4, 6, 6, 2, 2, 1)]


def _jitted(fn, causal, **kw):
    return jax.jit(lambda q, k, v, m, o: fn(q, k, v, mask=m, causal=causal, query_offset=o, **kw))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_plain_matches_jax_and_naive_loop(shape):
    b, t, s, n, k, h = shape
    q, key, value, mask = random_case(b, t, s, n, k, h, seed=sum(shape))
    for causal, m in ((False, None), (True, mask)):
        offset = s - t  # queries are the last T positions
        ours = _jitted(A.dot_product_attention, causal)(q, key, value, m, offset)
        allowed = None if not causal else m & np_causal(t, s, offset)
        theirs = jax.jit(partial(jax.nn.dot_product_attention, implementation="xla"))(q, key, value, mask=allowed)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(ours, naive_attention(q, key, value, True if allowed is None else allowed),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_blockwise_matches_plain(shape):
    b, t, s, n, k, h = shape
    q, key, value, mask = random_case(b, t, s, n, k, h, seed=sum(shape))
    for causal, m, block_size in ((False, None, 4), (True, mask, 2), (True, mask, s + 3)):
        expected = _jitted(A.dot_product_attention, causal)(q, key, value, m, s - t)
        got = _jitted(A.blockwise_attention, causal, block_size=block_size)(q, key, value, m, s - t)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fn", [A.dot_product_attention, A.jax_attention, partial(A.blockwise_attention, block_size=3)],
                         ids=["plain", "jax", "blockwise"])
def test_masks_that_broadcast(fn):
    q, key, value, _ = random_case(2, 3, 7, 4, 2, 8, seed=1)
    for mask_shape in [(2, 1, 1, 7), (1, 4, 1, 7), (2, 1, 3, 1), (1, 1, 3, 7)]:
        mask = np.random.default_rng(2).random(mask_shape) < 0.6
        got = jax.jit(lambda q, k, v, m: fn(q, k, v, mask=m))(q, key, value, mask)
        np.testing.assert_allclose(got, naive_attention(q, key, value, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,block_size", [(33, 8), (5, 16)])
def test_blockwise_causal_lengths_not_a_multiple_of_the_block(t, block_size):
    q, key, value, _ = random_case(1, t, t, 2, 1, 8, seed=0)
    expected = jax.jit(lambda q, k, v: A.dot_product_attention(q, k, v, causal=True))(q, key, value)
    got = jax.jit(lambda q, k, v: A.blockwise_attention(q, k, v, causal=True, block_size=block_size))(q, key, value)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "blockwise"])
def test_gradients_match_finite_differences(implementation):
    with jax.enable_x64(True):
        q, key, value, _ = random_case(1, 3, 5, 2, 1, 4, seed=3)
        q, key, value = (jnp.asarray(x, jnp.float64) for x in (q, key, value))
        mask = np.array([True, True, False, True, True])[None, None, None, :]

        @jax.jit
        def loss(q, k, v):
            out = A.attention(q, k, v, mask=mask, causal=True, query_offset=2, implementation=implementation,
                              block_size=2)
            return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape))

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, key, value)
        eps = 1e-6
        for i, (arg, grad) in enumerate(zip((q, key, value), grads, strict=True)):
            direction = np.random.default_rng(i).standard_normal(arg.shape)
            args_plus = [q, key, value]
            args_minus = [q, key, value]
            args_plus[i], args_minus[i] = arg + eps * direction, arg - eps * direction
            numeric = (loss(*args_plus) - loss(*args_minus)) / (2 * eps)
            np.testing.assert_allclose(np.vdot(grad, direction), numeric, rtol=1e-6, atol=1e-8)
            assert float(jnp.abs(grad).max()) > 0


def test_blockwise_gradients_equal_plain_gradients():
    q, key, value, mask = random_case(2, 7, 7, 4, 2, 4, seed=5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.cos(fn(q, k, v, mask=mask, causal=True)))

    plain = jax.jit(jax.grad(loss(A.dot_product_attention), argnums=(0, 1, 2)))(q, key, value)
    blockwise = partial(A.blockwise_attention, block_size=4)
    blocks = jax.jit(jax.grad(loss(blockwise), argnums=(0, 1, 2)))(q, key, value)
    for p, b in zip(plain, blocks, strict=True):
        np.testing.assert_allclose(b, p, atol=1e-5, rtol=1e-5)


# ---- one value for everything that modifies the scores ------------------------------------------------------------


@pytest.mark.parametrize("implementation", A.IMPLEMENTATIONS)
def test_score_mods_are_the_keywords_as_one_value(implementation):
    q, key, value, mask = random_case(2, 3, 6, 4, 2, 8, seed=7)
    by_keywords = A.attention(q, key, value, mask=mask, causal=True, query_offset=3, scale=0.2,
                              implementation=implementation, block_size=4)
    mods = A.ScoreMods(mask=mask, causal=True, query_offset=3, scale=0.2)
    by_value = jax.jit(lambda q, k, v, mods: A.attention(q, k, v, mods=mods, implementation=implementation,
                                                         block_size=4))(q, key, value, mods)  # a pytree argument
    np.testing.assert_allclose(by_value, by_keywords, atol=1e-6, rtol=1e-6)


def test_a_nonlinear_modifier_reaches_every_implementation_and_the_blockwise_gradients():
    # Soft-capping (c·tanh(s / c)) is not a bias: jax.nn cannot take it, so the jax path falls back to the plain
    # attention, and the blockwise backward pass must differentiate it, which it does through ScoreMods.modify.
    q, key, value, mask = random_case(2, 5, 7, 4, 2, 4, seed=8)
    q = 4 * q  # large scores, so that the cap matters
    mods = A.ScoreMods(mask=mask, causal=True, query_offset=2, softcap=1.5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.cos(fn(q, k, v, mods=mods)))

    plain = A.dot_product_attention(q, key, value, mods=mods)
    assert not np.allclose(plain, A.dot_product_attention(q, key, value, mask=mask, causal=True, query_offset=2),
                           atol=1e-2)
    np.testing.assert_allclose(A.jax_attention(q, key, value, mods=mods), plain, atol=1e-6)
    blockwise = partial(A.blockwise_attention, block_size=3)
    np.testing.assert_allclose(blockwise(q, key, value, mods=mods), plain, atol=1e-5, rtol=1e-5)
    expected = jax.jit(jax.grad(loss(A.dot_product_attention), argnums=(0, 1, 2)))(q, key, value)
    got = jax.jit(jax.grad(loss(blockwise), argnums=(0, 1, 2)))(q, key, value)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5)


def test_masks_by_hand():
    assert A.causal_mask(3)[0, 0].astype(int).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert A.causal_mask(2, 4, offset=2)[0, 0].astype(int).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert A.padding_mask(jnp.array([1, 3]), 3)[:, 0, 0].astype(int).tolist() == [[1, 0, 0], [1, 1, 1]]
    assert A.combine_masks(None, None) is None
    weights = A.attention_weights(jnp.ones((1, 3, 1, 2)), jnp.ones((1, 3, 1, 2)), causal=True)
    np.testing.assert_allclose(weights[0, 0], [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)


@pytest.mark.parametrize("fn", [A.dot_product_attention, A.blockwise_attention, A.jax_attention])
def test_masks_that_do_not_broadcast_are_rejected(fn):
    q, key, value, _ = random_case(2, 3, 5, 4, 2, 8, seed=0)
    with pytest.raises(ValueError, match=r"mask must broadcast to \(B, N, T, S\) = \(2, 4, 3, 5\).*got \(2, 1, 1, 4\)"):
        fn(q, key, value, mask=jnp.ones((2, 1, 1, 4), bool))
    with pytest.raises(ValueError, match=r"mask must broadcast.*got \(3, 5\)"):
        fn(q, key, value, mask=jnp.ones((3, 5), bool))
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        fn(q, key, value, mask=jnp.ones((2, 1, 1, 5)))


def test_shape_errors_name_the_argument():
    q = jnp.ones((2, 3, 4, 8))
    with pytest.raises(ValueError, match="key must have 4 dims"):
        A.dot_product_attention(q, jnp.ones((2, 3, 8)), jnp.ones((2, 3, 8)))
    with pytest.raises(ValueError, match="value must have the shape of key"):
        A.dot_product_attention(q, jnp.ones((2, 5, 4, 8)), jnp.ones((2, 6, 4, 8)))
    with pytest.raises(ValueError, match="query heads N=4 must be a multiple of key/value heads K=3"):
        A.dot_product_attention(q, jnp.ones((2, 5, 3, 8)), jnp.ones((2, 5, 3, 8)))
    with pytest.raises(ValueError, match="implementation must be one of"):
        A.attention(q, q, q, implementation="flash")
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        A.blockwise_attention(q, q, q, block_size=0)
    with pytest.raises(ValueError, match="lengths must lie in"):
        A.padding_mask(jnp.array([1, 7]), 5)


def test_mha_errors():
    with pytest.raises(ValueError, match="width D=30 must be divisible by num_heads N=4"):
        A.MultiHeadAttention(30, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_heads N=4 must be divisible by num_kv_heads K=3"):
        A.MultiHeadAttention(32, 4, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x must have shape \\(B, T, D\\)"):
        A.MultiHeadAttention(32, 4, rngs=nnx.Rngs(0))(jnp.ones((3, 32)))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_mha_is_projections_around_attention(num_kv_heads):
    mha = A.MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 32), np.float32)
    assert mha.key.kernel.shape == (32, 8 * num_kv_heads)
    def project(linear, heads):
        return (x @ np.asarray(linear.kernel[...]) + np.asarray(linear.bias[...])).reshape(2, 5, heads, 8)

    q, k, v = project(mha.query, 4), project(mha.key, num_kv_heads), project(mha.value, num_kv_heads)
    k_full, v_full = (np.repeat(a, 4 // num_kv_heads, axis=2) for a in (k, v))  # GQA = shared heads
    expected = naive_attention(q, k_full, v_full, np_causal(5, 5, 0)).reshape(2, 5, 32)
    expected = expected @ np.asarray(mha.out.kernel[...]) + np.asarray(mha.out.bias[...])
    np.testing.assert_allclose(mha(x, causal=True), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["rotary", "alibi"])
@pytest.mark.parametrize("implementation", ["plain", "blockwise", "jax"])
def test_mha_with_cache_matches_full_sequence(implementation, positions):
    scheme = {"rotary_base": 10_000.0} if positions == "rotary" else {"alibi": True}
    mha = A.MultiHeadAttention(16, 4, num_kv_heads=2, implementation=implementation, block_size=3, rngs=nnx.Rngs(0),
                               **scheme)
    x = np.random.default_rng(2).standard_normal((2, 7, 16), np.float32)
    full = nnx.jit(lambda mha, x: mha(x, causal=True))(mha, x)

    @nnx.jit
    def in_two_pieces(mha, x):
        cache = KVCache.empty(batch_size=2, size=9, num_kv_heads=2, head_width=4, dtype=jnp.float32)
        first, cache = mha(x[:, :4], causal=True, cache=cache)
        rest, cache = mha(x[:, 4:], causal=True, cache=cache)
        return first, rest, cache

    first, rest, cache = in_two_pieces(mha, x)
    assert int(cache.length) == 7
    np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    cache = KVCache.empty(batch_size=1, size=2, num_kv_heads=1, head_width=2, dtype=jnp.float32)
    with pytest.raises(ValueError, match="the cache holds 2 positions; 0 are used and 3 more do not fit"):
        cache.append(jnp.ones((1, 3, 1, 2)), jnp.ones((1, 3, 1, 2)))
    with pytest.raises(ValueError, match="keys must have shape"):
        cache.append(jnp.ones((1, 1, 2, 2)), jnp.ones((1, 1, 2, 2)))


# ---- which kernel on which hardware ------------------------------------------------------------------------------

from labkit.profiles import Accelerator  # noqa: E402

AMPERE, HOPPER, T4, V100 = (Accelerator("gpu", "cuda", cc) for cc in ((8, 0), (9, 0), (7, 5), (7, 0)))


@pytest.mark.parametrize("hardware, dtype, masked, head_width, expected", [
    (AMPERE, jnp.bfloat16, False, 64, "cudnn"), (HOPPER, jnp.float16, False, 128, "cudnn"),
    (T4, jnp.float16, False, 64, "blockwise"), (V100, jnp.bfloat16, False, 64, "blockwise"),  # no flash kernel
    (Accelerator("gpu", "rocm"), jnp.bfloat16, False, 64, "blockwise"),  # AMD also reports "gpu"
    (Accelerator("tpu"), jnp.bfloat16, False, 64, "blockwise"),
    (HOPPER, jnp.float32, False, 64, "blockwise"), (HOPPER, jnp.bfloat16, True, 64, "blockwise"),  # fallbacks
    (HOPPER, jnp.bfloat16, False, 12, "blockwise"), (HOPPER, jnp.bfloat16, False, 256, "blockwise"),
    (Accelerator("cpu"), jnp.bfloat16, False, 64, "xla"), (Accelerator("cpu"), jnp.float32, True, 64, "xla")])
def test_choose_kernel(hardware, dtype, masked, head_width, expected):
    assert A.choose_kernel(hardware, dtype=dtype, masked=masked, head_width=head_width) == expected


@pytest.mark.parametrize("hardware", [Accelerator("tpu"), T4])
def test_jax_attention_on_a_tpu_or_an_old_gpu_is_the_blockwise_attention(monkeypatch, hardware):
    calls = []
    real = A.blockwise_attention
    monkeypatch.setattr(A, "accelerator", lambda: hardware)
    monkeypatch.setattr(A, "blockwise_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v, mask = random_case(2, 6, 6, 4, 2, 8, seed=3)
    out = A.jax_attention(q, k, v, mask=mask, causal=True, block_size=4)
    np.testing.assert_allclose(out, A.dot_product_attention(q, k, v, mask=mask, causal=True), atol=1e-5)
    assert len(calls) == 1 and calls[0]["block_size"] == 4


def _temp_bytes(fn, *args) -> int:
    """XLA's own figure for the scratch memory of the compiled forward and backward pass."""
    return jax.jit(jax.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2))).lower(*args).compile().memory_analysis(
    ).temp_size_in_bytes


def test_blockwise_attention_memory_grows_linearly_not_quadratically_in_T():
    def measure(t):
        q = k = v = jnp.zeros((1, t, 4, 16), jnp.float32)  # (B, T, N, H)
        plain = _temp_bytes(lambda q, k, v: A.dot_product_attention(q, k, v, causal=True), q, k, v)
        blockwise = _temp_bytes(lambda q, k, v: A.blockwise_attention(q, k, v, causal=True, block_size=64), q, k, v)
        return plain, blockwise

    (plain_1, block_1), (plain_2, block_2) = measure(1024), measure(2048)
    assert plain_2 >= 4 * 2048 * 2048 * 4  # the plain attention holds a float32 (B, N, T, T) matrix of scores
    assert plain_2 / plain_1 > 3.5 and block_2 / block_1 < 2.5  # doubling T: about 4x against about 2x
    assert block_2 < plain_2 / 4
