"""ALiBi (Press, Smith and Lewis 2022) as a positions option, added through the one seam for scores (ScoreMods)."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import attention as A
from labkit.generate import generate
from labkit.gpt import GPT, GPTConfig, count_params, param_count
from labkit.masks import MASKED_SCORE, ScoreMods
from labkit.nn import cross_entropy
from labkit.positions import POSITION_SCHEMES, alibi_bias, alibi_slopes
from labkit.profiles import Accelerator
from labkit.train import make_train_step

TINY = dict(vocab_size=40, max_len=24, num_layers=2, num_heads=4, width=16, mlp_width=32)


# ---- the slopes ---------------------------------------------------------------------------------------------------


def test_slopes_of_eight_heads_are_the_papers_geometric_sequence():
    # Press et al.: for 8 heads, 1/2, 1/4, ..., 1/256 (start 2^(-8/8) and ratio 2^(-8/8)).
    assert alibi_slopes(8).tolist() == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(16).tolist() == pytest.approx([2 ** (-i / 2) for i in range(1, 17)])
    assert alibi_slopes(8).dtype == np.float32


def test_slopes_of_a_head_count_that_is_not_a_power_of_two():
    # The paper's rule: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...).
    expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256,
                2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    np.testing.assert_allclose(alibi_slopes(12), expected, rtol=1e-7)
    # 6 heads: the 4 slopes of 4 heads (1/4, 1/16, 1/64, 1/256), then slopes 1 and 3 of 8 heads (1/2, 1/8).
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    assert alibi_slopes(1).tolist() == [1 / 256]


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_slopes_need_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        alibi_slopes(bad)


# ---- a hand-worked case: 1 head, 3 tokens -------------------------------------------------------------------------


def _hand_case():
    q = np.array([1.0, 0.0, 2.0], np.float32).reshape(1, 3, 1, 1)  # (B, T, N, H): H = 1
    k = np.array([1.0, 1.0, 0.0], np.float32).reshape(1, 3, 1, 1)
    v = np.array([1.0, 2.0, 4.0], np.float32).reshape(1, 3, 1, 1)
    return q, k, v, ScoreMods(causal=True, scale=1.0, alibi_slopes=jnp.array([0.5]))


def test_alibi_scores_and_outputs_by_hand():
    q, k, v, mods = _hand_case()
    # q_i k_j = [[1, 1, 0], [0, 0, 0], [2, 2, 0]]; bias -0.5 (i - j) for j <= i; later keys masked.
    scores = np.asarray(mods.modify(jnp.asarray(q[0, :, 0, 0][:, None] * k[0, :, 0, 0][None, :])[None, None]))
    m = MASKED_SCORE
    np.testing.assert_allclose(scores[0, 0], [[1.0, m, m], [-0.5, 0.0, m], [1.0, 1.5, 0.0]], rtol=1e-6)
    e = np.exp
    weights = np.array([[1.0, 0.0, 0.0],
                        [e(-0.5) / (e(-0.5) + 1), 1 / (e(-0.5) + 1), 0.0],
                        [e(1) / (e(1) + e(1.5) + 1), e(1.5) / (e(1) + e(1.5) + 1), 1 / (e(1) + e(1.5) + 1)]])
    np.testing.assert_allclose(A.attention_weights(q, k, mods=mods)[0, 0], weights, rtol=1e-6)
    expected = weights @ np.array([1.0, 2.0, 4.0])  # row 1: 1.6225, row 2: 1.9251
    for implementation in A.IMPLEMENTATIONS:
        out = A.attention(q, k, v, mods=mods, implementation=implementation, block_size=2)
        np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-6, err_msg=implementation)


def test_bias_depends_only_on_the_distance():
    slopes = jnp.array([0.5, 0.25])
    near = alibi_bias(slopes, jnp.arange(3), jnp.arange(3))
    far = alibi_bias(slopes, 100 + jnp.arange(3), 100 + jnp.arange(3))  # the same pairs, 100 positions later
    np.testing.assert_array_equal(near, far)
    np.testing.assert_array_equal(near[1], [[0.0, -0.25, -0.5], [-0.25, 0.0, -0.25], [-0.5, -0.25, 0.0]])


# ---- the three implementations agree, values and gradients --------------------------------------------------------


def _case(b=2, t=5, s=7, n=4, k=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q, key, value = (rng.standard_normal(shape, np.float32) for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))
    mask = rng.random((b, 1, t, s)) < 0.8
    return q, key, value, mask


def _naive_alibi(q, k, v, allowed, slopes, offset):
    """The definition in float64 with NumPy: softmax(q·k/sqrt(H) - slope·(i - j)) over the allowed keys."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    s, groups = k.shape[1], n // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    distance = np.abs(offset + np.arange(t)[:, None] - np.arange(s)[None, :])  # (T, S)
    scores = scores - np.asarray(slopes, np.float64)[:, None, None] * distance
    scores = np.where(np.broadcast_to(allowed, scores.shape), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v)


IMPLEMENTATIONS = {"plain": A.dot_product_attention, "blockwise": partial(A.blockwise_attention, block_size=3),
                   "jax": A.jax_attention}


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_implementation_computes_the_definition(name):
    q, key, value, mask = _case()
    offset, slopes = 2, alibi_slopes(4)
    mods = ScoreMods(mask=mask, causal=True, query_offset=offset, alibi_slopes=jnp.asarray(slopes))
    got = jax.jit(lambda q, k, v, mods: IMPLEMENTATIONS[name](q, k, v, mods=mods))(q, key, value, mods)
    allowed = mask & (np.arange(7)[None, :] <= np.arange(5)[:, None] + offset)
    np.testing.assert_allclose(got, _naive_alibi(q, key, value, allowed, slopes, offset), atol=1e-5, rtol=1e-5)


def test_plain_blockwise_and_jax_have_the_same_gradients():
    q, key, value, mask = _case(seed=1)
    mods = ScoreMods(mask=mask, causal=True, query_offset=2, alibi_slopes=jnp.asarray(alibi_slopes(4)))

    def grads(fn):
        loss = lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mods=mods)) * jnp.arange(8.0))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, key, value)

    plain = grads(A.dot_product_attention)
    for name in ("blockwise", "jax"):
        for p, g in zip(plain, grads(IMPLEMENTATIONS[name]), strict=True):
            np.testing.assert_allclose(g, p, atol=1e-5, rtol=1e-5, err_msg=name)
    assert all(float(jnp.abs(g).max()) > 0 for g in plain)


def test_the_jax_path_gives_the_bias_to_jax_nn(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, key, value, _ = _case(t=4, s=4)
    mods = ScoreMods(causal=True, alibi_slopes=jnp.asarray(alibi_slopes(4)))
    out = A.jax_attention(q, key, value, mods=mods)
    assert calls and calls[0]["bias"].shape == (1, 4, 4, 4) and calls[0]["is_causal"]
    np.testing.assert_allclose(out, A.dot_product_attention(q, key, value, mods=mods), atol=1e-5)


def test_on_a_gpu_with_cudnn_alibi_falls_back_to_the_blockwise_attention(monkeypatch):
    calls = []
    real = A.blockwise_attention
    monkeypatch.setattr(A, "accelerator", lambda: Accelerator("gpu", "cuda", (9, 0)))  # cuDNN's flash kernel there
    monkeypatch.setattr(A, "blockwise_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, key, value, _ = (x.astype(jnp.bfloat16) for x in _case(t=4, s=4))
    mods = ScoreMods(causal=True, alibi_slopes=jnp.asarray(alibi_slopes(4)))
    out = A.jax_attention(q, key, value, mods=mods, block_size=2)
    assert len(calls) == 1 and calls[0]["mods"] is mods  # cuDNN is asked only for the plain causal case
    np.testing.assert_allclose(out.astype(np.float32), A.dot_product_attention(q, key, value, mods=mods).astype(
        np.float32), atol=2e-2)


# ---- the KV cache and the GPT -------------------------------------------------------------------------------------


def test_alibi_gpt_has_no_position_table_and_its_maps_carry_the_bias():
    config = GPTConfig(**TINY, positions="alibi")
    model = GPT(config, rngs=nnx.Rngs(0))
    assert model.positions is None and param_count(config) == count_params(model)
    assert param_count(config) == param_count(GPTConfig(**TINY, positions="rotary"))
    assert POSITION_SCHEMES["alibi"].in_attention and not POSITION_SCHEMES["alibi"].added_to_input
    # With every token the same, the scores are equal, so a row's weights fall off with the distance.
    weights = model.attention_maps(jnp.zeros((1, 4), jnp.int32))[0][0]  # (N, T, T) of layer 0
    slopes = alibi_slopes(4)
    np.testing.assert_allclose(weights[:, 3, 2] / weights[:, 3, 3], np.exp(-slopes), rtol=1e-4)


def test_generation_with_the_cache_equals_the_full_forward():
    model = GPT(GPTConfig(**TINY, positions="alibi", init_std=0.3), rngs=nnx.Rngs(0))
    prompt = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    cached = generate(model, prompt, max_new_tokens=6, key=None, temperature=0.0)
    reference = generate(model, prompt, max_new_tokens=6, key=None, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(cached, reference)

    tokens = np.random.default_rng(1).integers(0, 40, (2, 9), dtype=np.int32)

    @nnx.jit
    def pieces(model, tokens):
        cache = model.init_cache(2, 12)
        first, cache = model(tokens[:, :5], cache=cache)
        rest, cache = model(tokens[:, 5:], cache=cache)
        return jnp.concatenate([first, rest], axis=1)

    np.testing.assert_allclose(pieces(model, tokens), nnx.jit(lambda m, t: m(t))(model, tokens), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.slow  # trains a GPT
def test_an_alibi_gpt_trains():
    config = GPTConfig(**TINY, positions="alibi", attention="blockwise", block_size=4)
    model = GPT(config, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, (4, 12), dtype=np.int32)

    def loss_fn(model, x, y):
        logits = model(x)
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    step = make_train_step(loss_fn)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    losses = [float(step(model, optimizer, tokens[:, :-1], tokens[:, 1:])) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


# ---- errors -------------------------------------------------------------------------------------------------------


def test_config_and_layer_errors():
    with pytest.raises(ValueError, match="positions must be one of learned, sinusoidal, rotary, alibi; got 'ALiBi'"):
        GPTConfig(**TINY, positions="ALiBi")
    six_heads = GPTConfig(**{**TINY, "width": 12, "num_heads": 6}, positions="alibi")  # not a power of two: allowed
    assert GPT(six_heads, rngs=nnx.Rngs(0)).blocks[0].attn.alibi
    with pytest.raises(ValueError, match="rotary positions .* or ALiBi .*, not both"):
        A.MultiHeadAttention(16, 4, rotary_base=10_000.0, alibi=True, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="alibi must be a bool"):
        A.MultiHeadAttention(16, 4, alibi="yes", rngs=nnx.Rngs(0))


def test_score_mods_errors():
    q = jnp.ones((1, 3, 4, 8))
    with pytest.raises(ValueError, match=r"alibi_slopes must be a float array of shape \(N,\) = \(4,\)"):
        A.dot_product_attention(q, q, q, mods=ScoreMods(alibi_slopes=jnp.ones(3)))
    with pytest.raises(ValueError, match="either as mods=ScoreMods.* not both"):
        A.attention(q, q, q, causal=True, mods=ScoreMods())
    with pytest.raises(TypeError, match="mods must be a ScoreMods or None; got dict"):
        A.blockwise_attention(q, q, q, mods={"causal": True})
    with pytest.raises(ValueError, match="softcap must be a positive number or None; got 0"):
        ScoreMods(softcap=0)
    with pytest.raises(TypeError, match="causal must be a bool"):
        ScoreMods(causal=1)
    with pytest.raises(ValueError, match="needs a scale"):
        ScoreMods().modify(jnp.ones((1, 1, 2, 2)))
    assert dataclasses.is_dataclass(ScoreMods) and ScoreMods.__dataclass_params__.frozen
