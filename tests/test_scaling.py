import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import scaling
from labkit.gpt import GPT, GPTConfig, count_params
from labkit.scaling import (compute_optimal, fit_power_law, fit_saturating_power_law, flops_per_token,
                            non_embedding_params, pareto_frontier, training_compute)


@pytest.mark.parametrize("config", [GPTConfig.ci(), GPTConfig.llama_style(num_layers=1, width=64, num_heads=4,
                                                                          num_kv_heads=2, mlp_width=96)])
def test_non_embedding_params_leaves_out_the_tables_of_a_built_model(config):
    model = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))  # shapes only: no weights are drawn
    tables = config.vocab_size * config.width * (1 if config.tie_embeddings else 2)
    tables += config.max_len * config.width if config.positions == "learned" else 0
    assert non_embedding_params(config) == count_params(model) - tables


def test_non_embedding_params_is_about_12_L_D_squared():
    config = GPTConfig(vocab_size=512, max_len=64, num_layers=6, num_heads=8, width=512, mlp_width=2048, bias=False)
    d = config.width
    assert non_embedding_params(config) == 6 * (12 * d * d + 2 * d) + d  # 12 D² per block plus the norm scales


def test_flops_per_token_by_hand():
    # 6 x (the block kernels + the V x D head) + attention, causal half or full square; biases, norm scales and the
    # position table are not matrix products (the book's count).
    c = GPTConfig.ci()
    weights = 2 * 12 * 32 * 32 + 256 * 32  # 2 blocks of 4 D² (attention) + 8 D² (MLP, F = 4D); the tied head
    assert flops_per_token(c, 64, attention="none") == 6 * weights
    assert flops_per_token(c, 64) == 6 * weights + 6 * 2 * 64 * 32
    assert flops_per_token(c, 64, attention="full") == 6 * weights + 12 * 2 * 64 * 32
    untied = GPTConfig.ci(positions="rotary", tie_embeddings=False)  # the untied input table is a look-up: free
    assert flops_per_token(untied, 16, attention="none") == 6 * weights


def _kernel_count(config):
    """Parameters of a built model that sit in a matrix product: every Linear kernel, plus a tied embedding."""
    model = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    total = 0
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "kernel" or (path[-1] == "embedding" and config.tie_embeddings and "embed" in path):
            total += value.get_value().size
    return total


@pytest.mark.parametrize("config", [
    GPTConfig.ci(), GPTConfig.ci(tie_embeddings=False, bias=False, norm="rmsnorm"),
    GPTConfig.llama_style(num_layers=1, width=64, num_heads=4, num_kv_heads=2, mlp_width=96)])
def test_matmul_weights_are_the_kernels_of_a_built_model(config):
    assert scaling.matmul_weights(config) == _kernel_count(config)
    # the formula agrees with the book: biases and norms do not change it
    assert scaling.matmul_weights(dataclasses.replace(config, bias=not config.bias)) == scaling.matmul_weights(config)


def test_training_compute_is_flops_per_token_times_tokens_and_close_to_6ND_for_a_wide_model():
    c = GPTConfig(vocab_size=256, max_len=128, num_layers=4, num_heads=8, width=1024, mlp_width=4096)
    tokens = 10**6
    compute = training_compute(c, 128, tokens)
    assert compute == flops_per_token(c, 128) * tokens
    assert 1.0 < compute / (6 * non_embedding_params(c) * tokens) < 1.05  # wide and short: 6ND is a fair estimate


def test_compute_optimal_spends_the_budget_at_20_tokens_per_parameter():
    params, tokens = compute_optimal(1e21)
    assert math.isclose(6 * params * tokens, 1e21) and math.isclose(tokens / params, 20.0)
    params, tokens = compute_optimal(6e6, tokens_per_param=1.0)
    assert math.isclose(params, 1e3) and math.isclose(tokens, 1e3)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1e20"])
def test_compute_optimal_rejects_bad_numbers(bad):
    with pytest.raises(ValueError, match="compute"):
        compute_optimal(bad)
    with pytest.raises(ValueError, match="tokens_per_param"):
        compute_optimal(1e20, tokens_per_param=bad)


def test_compute_functions_reject_bad_arguments():
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        flops_per_token({"width": 32}, 64)
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        non_embedding_params(None)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        flops_per_token(GPTConfig.ci(), 0)
    with pytest.raises(ValueError, match="attention must be one of causal, full, none"):
        flops_per_token(GPTConfig.ci(), 64, attention="half")
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        training_compute(GPTConfig.ci(), 64, 1.5)


def test_power_law_recovers_exact_numbers_without_noise():
    x = np.geomspace(1e3, 1e7, 6)
    fit = fit_power_law(x, 12.0 * x ** -0.076)
    assert fit.a == pytest.approx(12.0, rel=1e-9) and fit.alpha == pytest.approx(0.076, rel=1e-9)
    assert fit.c == 0.0 and fit.r2 == pytest.approx(1.0) and fit.num_points == 6
    np.testing.assert_allclose(fit.predict([1e8, 1e9]), 12.0 * np.array([1e8, 1e9]) ** -0.076, rtol=1e-9)
    assert "x^(-0.076)" in str(fit)


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.1, 100.0), alpha=st.floats(-1.0, 2.0), low=st.floats(-3.0, 3.0), n=st.integers(3, 12))
def test_power_law_recovers_any_exponent_without_noise(a, alpha, low, n):
    x = np.geomspace(10.0**low, 10.0 ** (low + 4), n)
    fit = fit_power_law(x, a * x ** (-alpha))
    assert fit.alpha == pytest.approx(alpha, abs=1e-8) and fit.a == pytest.approx(a, rel=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_power_law_recovers_the_exponent_from_noisy_points(seed):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e4, 1e8, 20)
    y = 7.0 * x**-0.3 * np.exp(rng.normal(0.0, 0.02, size=x.shape))  # 2% multiplicative noise
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(0.3, abs=0.02)
    assert 0.95 < fit.r2 < 1.0


def test_saturating_power_law_recovers_exact_numbers_without_noise():
    x = np.geomspace(1e3, 1e9, 8)
    fit = fit_saturating_power_law(x, 40.0 * x**-0.34 + 1.69)  # the shape of Hoffmann et al.'s L(N)
    assert fit.alpha == pytest.approx(0.34, rel=1e-5) and fit.c == pytest.approx(1.69, rel=1e-5)
    assert fit.a == pytest.approx(40.0, rel=1e-4) and fit.r2 == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saturating_power_law_from_noisy_points_beats_the_plain_fit(seed):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e3, 1e8, 16)
    y = (20.0 * x**-0.4 + 2.0) * np.exp(rng.normal(0.0, 0.005, size=x.shape))
    saturating, plain = fit_saturating_power_law(x, y), fit_power_law(x, y)
    assert saturating.alpha == pytest.approx(0.4, abs=0.08) and saturating.c == pytest.approx(2.0, abs=0.1)
    assert saturating.r2 > plain.r2
    assert plain.alpha < saturating.alpha  # a plain power law bends the curve flat: it underestimates the exponent


def test_saturating_power_law_on_a_plain_power_law_finds_no_level():
    x = np.geomspace(1.0, 1e4, 5)
    fit = fit_saturating_power_law(x, 3.0 * x**-0.5)
    assert fit.c == pytest.approx(0.0, abs=1e-6) and fit.alpha == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("fit", [fit_power_law, fit_saturating_power_law])
def test_fits_reject_bad_points(fit):
    with pytest.raises(ValueError, match="same length; got 4 and 3"):
        fit([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="at least"):
        fit([1, 2], [2, 1])
    with pytest.raises(ValueError, match="x must hold finite positive numbers"):
        fit([0, 1, 2, 3], [4, 3, 2, 1])
    with pytest.raises(ValueError, match="y must hold finite positive numbers"):
        fit([1, 2, 3, 4], [4, 3, -2, 1])
    with pytest.raises(ValueError, match="y must hold finite positive numbers"):
        fit([1, 2, 3, 4], [4, 3, float("nan"), 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        fit([[1, 2], [3, 4]], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="two different values"):
        fit([2, 2, 2, 2], [4, 3, 2, 1])
    with pytest.raises(TypeError, match="x must be a sequence of numbers"):
        fit(["a", "b", "c", "d"], [4, 3, 2, 1])


def test_saturating_fit_needs_four_points_and_a_valid_grid():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_saturating_power_law([1, 2, 3], [3, 2, 1])
    with pytest.raises(ValueError, match="grid must be a positive int"):
        fit_saturating_power_law([1, 2, 3, 4], [4, 3, 2, 1], grid=0)


def test_predict_rejects_non_positive_x():
    fit = fit_power_law([1, 2, 4], [4, 2, 1])
    with pytest.raises(ValueError, match="x must be positive"):
        fit.predict([0.0, 1.0])


def test_pareto_frontier_is_the_lower_envelope():
    # two training curves: a small model (fast early, flat late) and a large one (slow early, lower late)
    compute = [1, 2, 4, 8, 3, 6, 12, 24]
    loss = [5.0, 4.0, 3.6, 3.5, 4.5, 3.8, 3.2, 2.9]
    assert pareto_frontier(compute, loss).tolist() == [0, 1, 2, 3, 6, 7]  # (3, 4.5) and (6, 3.8) are beaten
    assert pareto_frontier([1, 1, 2], [3.0, 2.0, 2.0]).tolist() == [1]  # equal x: the lower point; equal y: not lower
    with pytest.raises(ValueError, match="same length"):
        pareto_frontier([1, 2], [1.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 100.0), st.floats(0.1, 10.0)), min_size=1, max_size=30))
def test_pareto_frontier_points_are_not_beaten_by_any_cheaper_point(points):
    x, y = (np.array(v) for v in zip(*points, strict=True))
    frontier = pareto_frontier(x, y)
    assert np.all(np.diff(x[frontier]) >= 0) and np.all(np.diff(y[frontier]) < 0)
    for i in range(len(x)):
        on_frontier = i in frontier
        beaten = np.any((x <= x[i]) & (y <= y[i]) & (np.arange(len(x)) != i) & ((x < x[i]) | (y < y[i])))
        if not beaten:  # nothing cheaper or as cheap is as good: the point (or an identical twin) is on the frontier
            assert on_frontier or np.any((x == x[i]) & (y == y[i]) & np.isin(np.arange(len(x)), frontier))
        else:
            assert not on_frontier


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=4, max_size=10))
def test_saturating_fit_of_arbitrary_points_is_finite_and_below_the_data(ys):
    y = np.array(ys)
    fit = fit_saturating_power_law(np.arange(1.0, len(y) + 1), y, grid=20)
    assert all(math.isfinite(v) for v in (fit.a, fit.alpha, fit.c, fit.r2))
    assert 0.0 <= fit.c < y.min() and fit.a > 0
    assert fit.r2 >= fit_power_law(np.arange(1.0, len(y) + 1), y).r2 - 1e-9  # c = 0 is one of its candidates


# ---- sizing a run to its data ------------------------------------------------------------------------------------

from labkit.optim import TrainConfig  # noqa: E402


def test_ci_and_cpu_keep_their_presets():
    for name in ("ci", "cpu"):
        run = scaling.size_to_data(name, 100_000, vocab_size=512)
        assert run.config == GPTConfig.for_profile(name, vocab_size=512) and run.train == TrainConfig.for_profile(name)


@pytest.mark.parametrize("profile", ["gpu", "tpu"])
@pytest.mark.parametrize("train_tokens", [85_000, 3 * 10**6, 2 * 10**7, 6 * 10**7, 2 * 10**8, 5 * 10**8, 10**10])
def test_gpu_and_tpu_runs_are_sized_to_their_data(profile, train_tokens):
    run = scaling.size_to_data(profile, train_tokens, vocab_size=8192)
    assert run.config.dtype == jnp.bfloat16 and run.config.max_len >= run.train.seq_len
    if run.config.width == GPTConfig.cpu().width:  # too little data: the cpu recipe, passes stated
        assert train_tokens * scaling.MAX_PASSES < scaling.TOKENS_PER_PARAM * 3_000_000
        assert run.train == TrainConfig.cpu() and "cpu recipe" in run.reason
    else:  # about 20 tokens per parameter, never more than 4 passes
        assert run.passes <= scaling.MAX_PASSES and 20 <= run.tokens_per_param < 20.1
    assert run.train.total_tokens == run.train.steps * run.train.tokens_per_step


def test_more_data_never_gets_a_smaller_model_and_pydoc_never_gets_gpt2_small():
    sizes = [scaling.non_embedding_params(scaling.size_to_data("gpu", n, vocab_size=8192).config)
             for n in np.geomspace(1e4, 1e10, 25).astype(int).tolist()]
    assert sizes == sorted(sizes)
    pydoc = scaling.size_to_data("gpu", 94_000, vocab_size=8192)  # the old gpu preset: 1.3B tokens, ~14,000 passes
    assert pydoc.passes < 20 and pydoc.config.num_layers < 12
    assert scaling.size_to_data("gpu", 10**9, vocab_size=50257).train.accumulation == 8  # GPT-2 small's k x B x T
