from itertools import pairwise

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import lm, optim, train
from labkit.gpt import GPT, GPTConfig
from labkit.optim import TrainConfig
from labkit.step import make_train_step
from labkit.tokens import TokenWindows

CORPUS = np.tile(np.arange(40, dtype=np.uint16), 60)  # a repeating stream: a language model can learn it


def _gpt(**overrides) -> GPT:
    # One layer: these tests are about the training machinery, and compilation time grows with depth.
    return GPT(GPTConfig.ci(vocab_size=64, max_len=16, num_layers=1, **overrides), rngs=nnx.Rngs(0))


# ---- schedule and optimizer ------------------------------------------------------------------------------------


def test_schedule_warms_up_peaks_and_decays_to_the_final_rate():
    config = TrainConfig.ci(steps=110, warmup_steps=10, learning_rate=1e-3, final_learning_rate=1e-4)
    lr = optim.make_schedule(config)
    assert float(lr(0)) == pytest.approx(1e-4)  # the first update: peak / warmup_steps, not 0
    assert float(lr(4)) == pytest.approx(5e-4)
    assert float(lr(9)) == pytest.approx(1e-3) and float(lr(10)) == pytest.approx(1e-3)  # the peak
    assert float(lr(60)) == pytest.approx(5.5e-4)  # half-way down the cosine: the mean of peak and final
    assert float(lr(110)) == pytest.approx(1e-4) and float(lr(500)) == pytest.approx(1e-4)
    decay = [float(lr(c)) for c in range(10, 111)]
    assert all(a >= b for a, b in pairwise(decay))
    no_warmup = optim.make_schedule(TrainConfig.ci(steps=10, warmup_steps=0, learning_rate=1e-3))
    assert float(no_warmup(0)) == pytest.approx(1e-3)


def _adam_mean_after_one_update(config: TrainConfig, grads: dict) -> dict:
    tx = optim.make_optimizer(config)
    params = jax.tree.map(jnp.zeros_like, grads)
    _, state = tx.update(grads, tx.init(params), params)
    adam_state = state[1][0] if config.clip_norm is not None else state[0]
    return jax.tree.map(lambda mu: mu / (1 - config.b1), adam_state.mu)  # the gradient Adam received


def test_clipping_bounds_the_global_norm_of_the_gradient():
    grads = {"w": jnp.full((3, 4), 100.0), "b": jnp.full((4,), -50.0)}  # global norm ~ 355
    clipped = _adam_mean_after_one_update(TrainConfig.ci(clip_norm=1.0), grads)
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(clipped["w"] / clipped["b"][0], grads["w"] / grads["b"][0], rtol=1e-5)  # direction
    unclipped = _adam_mean_after_one_update(TrainConfig.ci(clip_norm=None), grads)
    assert float(optax.tree.norm(unclipped)) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
    small = {"w": jnp.full((3, 4), 0.01), "b": jnp.zeros(4)}  # already inside the bound: left alone
    np.testing.assert_allclose(_adam_mean_after_one_update(TrainConfig.ci(clip_norm=1.0), small)["w"], 0.01)


def test_weight_decay_shrinks_matrices_but_not_biases_or_norm_scales():
    model = _gpt()
    config = TrainConfig.ci(warmup_steps=0, learning_rate=0.1, weight_decay=0.5)
    optimizer = nnx.Optimizer(model, optim.make_optimizer(config), wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    nnx.jit(lambda m, o, g: o.update(m, g))(model, optimizer, jax.tree.map(jnp.zeros_like, before))  # decay only
    after = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(after["embed"]["embedding"][...], before["embed"]["embedding"][...] * (1 - 0.05),
                               rtol=1e-6)
    np.testing.assert_array_equal(after["final_norm"]["scale"][...], before["final_norm"]["scale"][...])
    np.testing.assert_array_equal(after["blocks"][0]["mlp"]["up"]["bias"][...],
                                  before["blocks"][0]["mlp"]["up"]["bias"][...])


def test_train_config_validates_and_has_profile_presets():
    assert TrainConfig.for_profile("ci") == TrainConfig.ci()
    assert TrainConfig.for_profile("tpu") == TrainConfig.gpu()
    assert TrainConfig.cpu(accumulation=2).tokens_per_step == 2 * 16 * 128
    with pytest.raises(ValueError, match="TrainConfig.accumulation must be a positive int; got 0"):
        TrainConfig.ci(accumulation=0)
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must be at most steps \(10\)"):
        TrainConfig.ci(steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="final_learning_rate must be in"):
        TrainConfig.ci(learning_rate=1e-3, final_learning_rate=1e-2)
    with pytest.raises(ValueError, match="TrainConfig.clip_norm must be a positive number"):
        TrainConfig.ci(clip_norm=0.0)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        optim.make_optimizer({"steps": 10})


# ---- the language-model loss -----------------------------------------------------------------------------------


def test_cross_entropy_is_the_mean_negative_log_likelihood_of_the_next_tokens():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[0, 4, 2], [1, 1, 3]])
    by_hand = -np.mean(np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1))
    assert float(lm.cross_entropy(logits, targets)) == pytest.approx(by_hand, rel=1e-6)
    uniform = lm.cross_entropy(jnp.zeros((2, 3, 256)), targets)
    assert float(uniform) == pytest.approx(np.log(256))
    assert float(lm.perplexity(uniform)) == pytest.approx(256, rel=1e-5)
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\)"):
        lm.cross_entropy(logits, targets[:, :2])
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\)"):
        lm.cross_entropy(logits[0], targets[0])
    with pytest.raises(ValueError, match=r"ids in \[0, 4\] \(V = 5\); got values from 1 to 5"):
        lm.cross_entropy(logits, targets.at[0, 0].set(5))
    with pytest.raises(TypeError, match="integer token ids"):
        lm.cross_entropy(logits, targets.astype(jnp.float32))


# ---- the train step: accumulation and mixed precision ----------------------------------------------------------


def test_accumulated_micro_batches_give_the_update_of_one_big_batch():
    windows = TokenWindows(CORPUS, seq_len=12)
    x, y = windows.batch(jax.random.key(0), 0, batch_size=8)  # (8, 12)
    results = {}
    for k in (1, 4):
        model = _gpt()
        optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
        shape = (k, 8 // k, 12) if k > 1 else (8, 12)
        loss = make_train_step(lm.loss, accumulation=k)(model, optimizer, x.reshape(shape), y.reshape(shape))
        results[k] = (float(loss), nnx.state(model, nnx.Param))
    assert results[4][0] == pytest.approx(results[1][0], rel=1e-6)
    changed = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), results[1][1], nnx.state(_gpt(), nnx.Param))
    assert max(jax.tree.leaves(changed)) > 1e-3  # the step moved the parameters
    for big, accumulated in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[4][1]), strict=True):
        np.testing.assert_allclose(accumulated, big, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # trains a GPT twice to compare
def test_fit_with_accumulation_matches_fit_with_the_big_batch():
    config = TrainConfig.ci(steps=4, warmup_steps=1)

    def run(batch_size, accumulation):
        model = _gpt()
        optimizer = nnx.Optimizer(model, optim.make_optimizer(config), wrt=nnx.Param)
        return train.fit(model, optimizer, lm.loss, TokenWindows(CORPUS, seq_len=12), steps=4, batch_size=batch_size,
                         accumulation=accumulation, key=jax.random.key(3), progress=False)

    big, accumulated = run(8, 1), run(2, 4)
    np.testing.assert_allclose(accumulated.loss, big.loss, rtol=1e-4)
    assert accumulated.tokens == big.tokens == [96, 192, 288, 384]


@pytest.mark.slow  # trains a GPT twice to compare
def test_bf16_compute_keeps_float32_parameters_and_a_close_loss():
    windows = TokenWindows(CORPUS, seq_len=12)
    x, y = windows.batch(jax.random.key(0), 0, batch_size=4)
    model = _gpt(dtype=jnp.bfloat16)
    optimizer = nnx.Optimizer(model, optim.make_optimizer(TrainConfig.ci()), wrt=nnx.Param)
    loss = make_train_step(lm.loss)(model, optimizer, x, y)  # the loss before the update
    assert loss.dtype == jnp.float32
    assert float(loss) == pytest.approx(float(lm.loss(_gpt(), x, y)), rel=2e-2)  # float32 compute, same init
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}  # master weights
    moments = [p for p in jax.tree.leaves(nnx.state(optimizer)) if jnp.issubdtype(p.dtype, jnp.floating)]
    assert {p.dtype for p in moments} == {jnp.dtype(jnp.float32)}
    assert model.blocks[0].mlp.up(jnp.ones((1, 32))).dtype == jnp.bfloat16  # while the products run in bf16


# ---- fit on tokens ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains a GPT twice to compare
def test_fit_on_token_windows_learns_and_reports_tokens_evaluations_and_throughput():
    train_ids, valid_ids = CORPUS[:2000], CORPUS[2000:]
    config = TrainConfig.ci(steps=40, warmup_steps=5, learning_rate=1e-2, final_learning_rate=1e-3)
    model = _gpt(dropout=0.1)
    optimizer = nnx.Optimizer(model, optim.make_optimizer(config), wrt=nnx.Param)
    history = train.fit(model, optimizer, lm.loss, TokenWindows(train_ids, seq_len=12), steps=40, batch_size=8,
                        key=jax.random.key(0), eval_data=TokenWindows(valid_ids, seq_len=12), eval_every=20,
                        eval_batches=2, progress=False)
    assert history.step == list(range(1, 41)) and history.tokens[-1] == 40 * 8 * 12
    assert history.eval_step == [20, 40] and history.eval["loss"][1] < 0.5 * np.log(64)
    assert np.mean(history.loss[-5:]) < 0.5 * np.mean(history.loss[:5])
    assert all(a < b for a, b in pairwise(history.seconds)) and history.throughput(skip=1) > 0
    assert float(lm.perplexity(history.eval["loss"][-1])) < 64
    with pytest.raises(ValueError, match=r"skip must be an int in \[0, 39\]"):
        history.throughput(skip=40)


def test_fit_evaluates_the_same_windows_each_time():
    model = _gpt()
    optimizer = nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param)  # nothing changes: evaluations must agree
    history = train.fit(model, optimizer, lm.loss, TokenWindows(CORPUS, seq_len=12), steps=3, batch_size=4,
                        key=jax.random.key(0), eval_data=TokenWindows(CORPUS[::-1].copy(), seq_len=12), eval_every=1,
                        eval_batches=2, progress=False)
    assert len(set(history.eval["loss"])) == 1


def test_fit_rejects_bad_pretraining_arguments():
    model = _gpt()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    windows = TokenWindows(CORPUS, seq_len=12)
    for name in ("accumulation", "eval_batches"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int; got 0"):
            train.fit(model, optimizer, lm.loss, windows, steps=1, batch_size=2, key=jax.random.key(0), **{name: 0})
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int or None"):
        train.fit(model, optimizer, lm.loss, windows, steps=1, batch_size=2, key=jax.random.key(0), checkpoint_every=0)
    with pytest.raises(TypeError, match="train must be an ArrayData .* or TokenWindows"):
        train.fit(model, optimizer, lm.loss, CORPUS, steps=1, batch_size=2, key=jax.random.key(0))


def test_cross_entropy_can_leave_out_an_ignored_target():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 7)), jnp.float32)
    targets = jnp.asarray([[1, -1, 3, -1], [-1, -1, 0, 6]])
    kept = np.asarray(targets) != -1
    per_position = -jax.nn.log_softmax(logits)[np.arange(2)[:, None], np.arange(4), np.where(kept, targets, 0)]
    expected = np.asarray(per_position)[kept].mean()
    np.testing.assert_allclose(lm.cross_entropy(logits, targets, ignore=-1), expected, rtol=1e-6)
    assert float(lm.cross_entropy(logits, jnp.full((2, 4), -1), ignore=-1)) == 0.0
    with pytest.raises(ValueError, match="ignore = -1; got values from -2"):
        lm.cross_entropy(logits, targets.at[0, 0].set(-2), ignore=-1)
    with pytest.raises(ValueError, match="targets must be ids in \\[0, 6\\]"):
        lm.cross_entropy(logits, targets)  # without ignore, -1 is not an id
    with pytest.raises(ValueError, match="ignore must be a negative int"):
        lm.cross_entropy(logits, targets, ignore=3)
