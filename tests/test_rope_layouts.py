"""The two RoPE layouts: half-split (GPT-NeoX, Hugging Face) and interleaved (the RoPE paper, Meta's LLaMA code)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from labkit.gpt import GPT, GPTConfig
from labkit.positions import ROPE_LAYOUTS, apply_rotary, convert_rotary_layout, rotary_permutation


def meta_reference(x: np.ndarray, positions: np.ndarray, base: float = 10_000.0) -> np.ndarray:
    """Meta's llama/model.py: view (x[2i], x[2i+1]) as one complex number and multiply by exp(i p theta_i)."""
    h = x.shape[-1]
    theta = base ** (-np.arange(0, h, 2) / h)  # (H/2,)
    turn = np.exp(1j * positions[:, None] * theta)[None, :, None, :]  # (1, T, 1, H/2)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * turn  # (B, T, N, H/2)
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def hf_reference(x: np.ndarray, positions: np.ndarray, base: float = 10_000.0) -> np.ndarray:
    """Hugging Face's modeling_llama: x * cos + rotate_half(x) * sin, with the angles repeated: cat(freqs, freqs)."""
    h = x.shape[-1]
    theta = base ** (-np.arange(0, h, 2) / h)
    angles = np.concatenate([positions[:, None] * theta] * 2, axis=-1)[None, :, None, :]  # (1, T, 1, H)
    rotate_half = np.concatenate([-x[..., h // 2:], x[..., : h // 2]], axis=-1)
    return x * np.cos(angles) + rotate_half * np.sin(angles)


@pytest.fixture
def x() -> jax.Array:
    return jax.random.normal(jax.random.key(0), (2, 5, 3, 8))  # (B, T, N, H)


def test_each_layout_matches_the_code_it_is_named_after(x):
    positions = jnp.arange(3, 8)
    np.testing.assert_allclose(apply_rotary(x, positions, layout="interleaved"),
                               meta_reference(np.asarray(x, np.float64), np.arange(3, 8)), atol=1e-5)
    np.testing.assert_allclose(apply_rotary(x, positions, layout="half"),
                               hf_reference(np.asarray(x, np.float64), np.arange(3, 8)), atol=1e-5)
    assert not np.allclose(apply_rotary(x, positions, layout="half"), apply_rotary(x, positions, layout="interleaved"))


def test_interleaved_by_hand():
    # H = 4, base 100: pair (x0, x1) turns by p radians, pair (x2, x3) by p / 10.
    x = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 4)
    for p in (0, 1, 2):
        rotated = apply_rotary(x, jnp.array([p]), base=100.0, layout="interleaved")[0, 0, 0]
        np.testing.assert_allclose(rotated, [np.cos(p), np.sin(p), -np.sin(p / 10), np.cos(p / 10)], atol=1e-6)


def test_the_layouts_are_one_permutation_apart(x):
    perm, inverse = rotary_permutation(8), np.argsort(rotary_permutation(8))
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    for positions in (jnp.arange(5), jnp.array([[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]])):  # (T,) and (B, T)
        half = apply_rotary(x[..., perm], positions, layout="half")
        interleaved = apply_rotary(x, positions, layout="interleaved")
        np.testing.assert_allclose(half, interleaved[..., perm], atol=1e-6)
        np.testing.assert_allclose(apply_rotary(x[..., inverse], positions, layout="interleaved"),
                                   apply_rotary(x, positions, layout="half")[..., inverse], atol=1e-6)


@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
def test_both_layouts_keep_norms_dtypes_and_relative_scores(layout):
    q = jax.random.normal(jax.random.key(1), (1, 1, 2, 8))
    k = jax.random.normal(jax.random.key(2), (1, 1, 2, 8))

    def score(i, j):
        return jnp.sum(apply_rotary(q, jnp.array([i]), layout=layout) * apply_rotary(k, jnp.array([j]), layout=layout),
                       axis=-1)

    np.testing.assert_allclose(jnp.linalg.norm(apply_rotary(q, jnp.array([7]), layout=layout), axis=-1),
                               jnp.linalg.norm(q, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(score(3, 1), score(13, 11), rtol=1e-4, atol=1e-5)
    assert apply_rotary(q.astype(jnp.bfloat16), jnp.array([1]), layout=layout).dtype == jnp.bfloat16


def test_converted_projections_give_the_same_scores():
    n, h, d = 2, 6, 5
    wq, wk = (jax.random.normal(jax.random.key(i), (d, n * h)) for i in (3, 4))
    tokens = jax.random.normal(jax.random.key(5), (1, 7, d))  # (B, T, D)
    positions = jnp.arange(7)

    def scores(wq, wk, layout):
        q = apply_rotary((tokens @ wq).reshape(1, 7, n, h), positions, layout=layout)
        k = apply_rotary((tokens @ wk).reshape(1, 7, n, h), positions, layout=layout)
        return jnp.einsum("btnh,bsnh->bnts", q, k)  # (B, N, T, T)

    convert = dict(num_heads=n, source="interleaved", target="half")
    converted = scores(convert_rotary_layout(wq, **convert), convert_rotary_layout(wk, **convert), "half")
    np.testing.assert_allclose(converted, scores(wq, wk, "interleaved"), rtol=1e-4, atol=1e-4)
    back = convert_rotary_layout(convert_rotary_layout(wq, **convert), n, source="half", target="interleaved")
    np.testing.assert_array_equal(back, wq)
    assert convert_rotary_layout(wq, n, source="half", target="half") is wq
    bias = jnp.arange(12.0)  # (N·H,): a bias moves with its kernel
    assert convert_rotary_layout(bias, n, **{k: convert[k] for k in ("source", "target")}).tolist() == [
        0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]


def test_layout_errors():
    with pytest.raises(ValueError, match="layout must be one of half, interleaved; got 'neox'"):
        apply_rotary(jnp.ones((1, 2, 1, 4)), jnp.arange(2), layout="neox")
    with pytest.raises(ValueError, match="source must be one of half, interleaved"):
        convert_rotary_layout(jnp.ones((4, 8)), 2, source="meta", target="half")
    with pytest.raises(ValueError, match=r"last axis of num_heads=3 heads of even width; got shape \(4, 8\)"):
        convert_rotary_layout(jnp.ones((4, 8)), 3, source="interleaved", target="half")
    with pytest.raises(ValueError, match="head_width must be a positive even int; got 5"):
        rotary_permutation(5)
    with pytest.raises(ValueError, match="GPTConfig.rope_layout must be one of half, interleaved; got 'meta'"):
        GPTConfig.ci(positions="rotary", rope_layout="meta")
    assert GPTConfig.ci().rope_layout == "half" and GPTConfig.llama_style().rope_layout == "half"


def test_gpt_runs_a_checkpoint_of_either_layout():
    # Weights trained with Meta's interleaved layout run in labkit's default half layout once the query and key
    # projections of every block are permuted, as Hugging Face's converter does; grouped-query keys have K heads.
    meta_config = GPTConfig.llama_style(max_len=16, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                                        mlp_width=96, rope_layout="interleaved")
    meta = GPT(meta_config, rngs=nnx.Rngs(0))
    half = GPT(dataclasses.replace(meta_config, rope_layout="half"), rngs=nnx.Rngs(1))
    nnx.update(half, nnx.state(meta))  # the same weights, read in the other layout
    tokens = jax.random.randint(jax.random.key(6), (2, 16), 0, meta_config.vocab_size)
    assert not np.allclose(half(tokens), meta(tokens), atol=1e-3)
    for block in half.blocks:
        pairs = ((block.attn.query, meta_config.num_heads), (block.attn.key, meta_config.num_kv_heads))
        for projection, heads in pairs:
            projection.kernel[...] = convert_rotary_layout(projection.kernel[...], heads, source="interleaved",
                                                           target="half")
    np.testing.assert_allclose(half(tokens), meta(tokens), rtol=1e-4, atol=1e-4)
