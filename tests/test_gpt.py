import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit.gpt import GPT, Block, GPTConfig, count_params, param_count
from labkit.lm import cross_entropy as lm_cross_entropy
from labkit.nn import cross_entropy
from labkit.profiles import get_profile
from labkit.train import make_train_step

TINY = dict(vocab_size=50, max_len=16, num_layers=2, num_heads=4, width=16, mlp_width=24)
CONFIGS = {
    "gpt2": GPTConfig(**TINY),
    "llama": GPTConfig.llama_style(**TINY, num_kv_heads=2),
    "sinusoidal-blockwise": GPTConfig(**TINY, positions="sinusoidal", attention="blockwise", block_size=3, bias=False),
    "mqa-jax": GPTConfig(**TINY, num_kv_heads=1, attention="jax", tie_embeddings=False, mlp="swiglu"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return GPT(CONFIGS[request.param], rngs=nnx.Rngs(0))


@nnx.jit
def forward(model, tokens):
    return model(tokens)


def tokens_for(config, shape=(2, 10), seed=0):
    # NumPy: an eager jax op costs a compilation per new shape, and the tests are kept fast.
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape, dtype=np.int32)


def test_param_count_formula_equals_counting(model):
    assert param_count(model.config) == count_params(model)


@pytest.mark.parametrize("preset", ["ci", "cpu", "gpu", "gpt2_small", "llama_style"])
def test_param_count_of_presets(preset):
    config = getattr(GPTConfig, preset)()
    assert param_count(config) == count_params(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))


def test_gpt2_small_has_124m_parameters():
    assert param_count(GPTConfig.gpt2_small()) == 124_439_808


def test_presets_follow_the_profile():
    assert GPTConfig.for_profile("ci") == GPTConfig.ci()
    assert GPTConfig.for_profile(get_profile("cpu")) == GPTConfig.cpu()
    assert GPTConfig.for_profile("tpu", num_layers=3) == GPTConfig.gpu(num_layers=3, remat=True)  # 16 GB chips
    assert GPTConfig.for_profile("gpu", remat=True).remat and not GPTConfig.for_profile("gpu").remat
    assert GPTConfig.gpu().dtype == jnp.bfloat16
    assert GPTConfig.for_profile("gpu").dtype == get_profile("gpu").compute_dtype
    llama = GPTConfig.llama_style()
    assert (llama.norm, llama.mlp, llama.positions, llama.tie_embeddings) == ("rmsnorm", "swiglu", "rotary", False)
    assert GPTConfig.ci().num_kv_heads == GPTConfig.ci().num_heads
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPTConfig.ci().width = 3


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(width=30, num_heads=4), "width D=30 must be divisible by num_heads N=4"),
        (dict(num_kv_heads=3), "num_heads N=4 must be divisible by num_kv_heads K=3"),
        (dict(width=12, num_heads=4, positions="rotary"), "rotary positions need an even head width D/N; got 3"),
        (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm; got 'batchnorm'"),
        (dict(mlp="relu"), "mlp must be one of gelu, swiglu"),
        (dict(attention="flash"), "attention must be one of plain, blockwise, jax"),
        (dict(dropout=1.0), "dropout must be in \\[0, 1\\)"),
        (dict(max_len=0), "max_len must be a positive int; got 0"),
        (dict(vocab_size=2.5), "vocab_size must be a positive int; got 2.5"),
        (dict(dtype=jnp.int32), "dtype must be a floating-point dtype"),
    ],
)
def test_config_invariants(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **change})


def test_causality_future_tokens_do_not_change_earlier_logits(model):
    config = model.config
    tokens = tokens_for(config, (2, 12))
    changed = tokens.copy()
    changed[:, 7:] = (tokens[:, 7:] + 1 + np.arange(5)) % config.vocab_size
    before, after = forward(model, tokens), forward(model, changed)
    np.testing.assert_allclose(after[:, :7], before[:, :7], atol=1e-5, rtol=1e-5)
    assert not np.allclose(after[:, 7:], before[:, 7:], atol=1e-3)  # the changed positions do change


def test_cache_gives_the_logits_of_the_full_sequence(model):
    tokens = tokens_for(model.config, (2, 9), seed=1)
    full = forward(model, tokens)

    @nnx.jit
    def pieces(model, tokens):
        cache = model.init_cache(2, 12)
        first, cache = model(tokens[:, :5], cache=cache)
        second, cache = model(tokens[:, 5:6], cache=cache)
        third, cache = model(tokens[:, 6:], cache=cache)
        return jnp.concatenate([first, second, third], axis=1), cache[0].length

    logits, length = pieces(model, tokens)
    assert int(length) == 9
    np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)


def test_attention_maps_are_causal_distributions():
    model = GPT(CONFIGS["llama"], rngs=nnx.Rngs(0))
    maps = nnx.jit(lambda model, tokens: model.attention_maps(tokens))(model, tokens_for(model.config, (2, 6)))
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)
    for m in maps:
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(np.triu(np.asarray(m), k=1), 0.0)  # no weight on later positions


def test_weight_tying():
    tied = GPT(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    assert tied.head is None
    # The logits are the final stream times the embedding matrix: scaling the embedding row of token 3 by 2 while
    # keeping the input free of token 3 doubles column 3 of the logits and nothing else.
    tokens = jnp.array([[0, 1, 2]])
    before = forward(tied, tokens)
    tied.embed.embedding[...] = tied.embed.embedding[...].at[3].multiply(2.0)
    after = forward(tied, tokens)
    np.testing.assert_allclose(after[..., 3], 2 * before[..., 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.delete(after, 3, axis=-1), np.delete(before, 3, axis=-1), rtol=1e-6)
    untied = GPT(CONFIGS["mqa-jax"], rngs=nnx.Rngs(0))
    assert untied.head.kernel.shape == (16, 50)


def test_token_and_length_errors():
    model = GPT(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids in \[0, 49\] \(the vocabulary\); got values from 0 to 50"):
        model(jnp.array([[0, 50]]))
    with pytest.raises(ValueError, match="got values from -1 to 3"):
        model(jnp.array([[-1, 3]]))
    with pytest.raises(ValueError, match="tokens has T=17 positions but the model's max_len is 16"):
        model(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match=r"tokens must be an integer array of shape \(B, T\)"):
        model(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"mask must broadcast to \(B, N, T, S\) = \(1, 4, 4, 4\)"):
        model(jnp.zeros((1, 4), jnp.int32), mask=jnp.ones((1, 1, 4, 5), bool))
    with pytest.raises(ValueError, match="cache must be a tuple of 2 KVCache"):
        model(jnp.zeros((1, 4), jnp.int32), cache=model.init_cache(1)[:1])


def test_padding_mask_hides_padding_from_real_tokens():
    from labkit.attention import padding_mask

    model = GPT(CONFIGS["llama"], rngs=nnx.Rngs(0))
    short = tokens_for(model.config, (1, 5))
    padded = np.concatenate([short, np.zeros((1, 3), np.int32)], axis=1)  # right padding: no effect by causality
    np.testing.assert_allclose(forward(model, padded)[:, :5], forward(model, short), atol=1e-5)
    # A mask that also hides key 0 from every query changes every position after 0.
    mask = padding_mask(np.array([8]), 8) & (np.arange(8) > 0)[None, None, None, :]
    masked = nnx.jit(lambda model, tokens, mask: model(tokens, mask=mask))(model, padded, mask)
    assert not np.allclose(masked[:, 1:5], forward(model, short)[:, 1:5], atol=1e-3)


@pytest.mark.slow  # trains a GPT
def test_training_lowers_the_loss_and_dropout_only_in_training():
    config = dataclasses.replace(CONFIGS["llama"], dropout=0.1)
    model = GPT(config, rngs=nnx.Rngs(params=0, dropout=1))
    tokens = tokens_for(config, (4, 12), seed=3)

    def loss_fn(model, x, y):
        logits = model(x)
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    step = make_train_step(loss_fn)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    losses = [float(step(model, optimizer, tokens[:, :-1], tokens[:, 1:])) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]
    assert not np.allclose(forward(model, tokens), forward(model, tokens))  # dropout draws new masks
    model.eval()
    np.testing.assert_array_equal(forward(model, tokens), forward(model, tokens))


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    config = CONFIGS["llama"]
    model32 = GPT(config, rngs=nnx.Rngs(0))
    model16 = GPT(dataclasses.replace(config, dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
    tokens = tokens_for(config)
    logits16 = forward(model16, tokens)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, forward(model32, tokens), atol=0.1)


def test_hidden_is_what_the_head_reads():
    model = GPT(GPTConfig.ci(), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)
    hidden = model.hidden(tokens)
    assert hidden.shape == (2, 12, 32)
    np.testing.assert_allclose(model.embed.attend(hidden), model(tokens), atol=1e-5)


def test_an_encoder_block_sees_the_future_and_a_decoder_block_does_not():
    config = GPTConfig.ci()
    x = jax.random.normal(jax.random.key(0), (1, 6, config.width))
    later_changed = x.at[:, -1].set(jax.random.normal(jax.random.key(1), (1, config.width)))
    for causal in (True, False):
        block = Block(config, causal=causal, rngs=nnx.Rngs(0))
        first_moved = not np.allclose(block(x)[:, 0], block(later_changed)[:, 0])
        assert first_moved is (not causal)
    with pytest.raises(TypeError, match="causal must be a bool"):
        Block(config, causal="no", rngs=nnx.Rngs(0))


def test_remat_gives_the_same_loss_and_gradients():
    config = GPTConfig.ci(num_layers=2, max_len=16)
    tokens = tokens_for(config, (2, 16))

    def loss_and_grads(remat):
        model = GPT(dataclasses.replace(config, remat=remat), rngs=nnx.Rngs(0))
        return nnx.jit(nnx.value_and_grad(lambda m, x: lm_cross_entropy(m(x[:, :-1]), x[:, 1:])))(model, tokens)

    (loss, grads), (loss_remat, grads_remat) = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="GPTConfig.remat must be a bool"):
        GPTConfig.ci(remat="yes")


def test_remat_recomputes_the_blocks_in_the_backward_pass():
    config = GPTConfig.ci(num_layers=2, max_len=16)
    tokens = tokens_for(config, (2, 16))

    def grad_jaxpr(remat):
        model = GPT(dataclasses.replace(config, remat=remat), rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p: lm_cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(tokens[:, :-1]), tokens[:, 1:])  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(params))

    assert "checkpoint" in grad_jaxpr(True) or "remat" in grad_jaxpr(True)
    assert "checkpoint" not in grad_jaxpr(False) and "remat" not in grad_jaxpr(False)


@pytest.mark.parametrize("tie", [True, False])
def test_lm_head_accumulates_in_float32(tie):
    config = GPTConfig.ci(dtype=jnp.bfloat16, tie_embeddings=tie)
    model = GPT(config, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 3, config.width)).astype(jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(model.logits)(x))
    assert "preferred_element_type=float32" in jaxpr
    logits = model.logits(x)
    weight = model.embed.embedding[...].T if tie else model.head.kernel[...]
    exact = np.asarray(x, np.float64) @ np.asarray(jnp.asarray(weight, jnp.bfloat16), np.float64)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, exact, rtol=1e-4, atol=1e-4)  # bf16 products, summed in float32


class _Elsewhere:
    """An array sharded over devices of other processes: shape and dtype known, values not readable here."""

    ndim, shape, size, dtype, is_fully_addressable = 2, (1, 4), 4, np.dtype(np.int32), False

    def __array__(self, *args, **kwargs):
        raise AssertionError("the values of an array on other processes were read")


def test_value_checks_skip_arrays_this_process_cannot_read():
    from labkit.masks import values_readable
    assert values_readable(np.ones(2)) and values_readable(jnp.ones(2)) and not values_readable(_Elsewhere())
    GPT(GPTConfig.ci(), rngs=nnx.Rngs(0))._check(_Elsewhere(), None)  # no error: the check is skipped
