"""labkit.finetune: what each regime trains, costs, and the instruction loss that counts response tokens only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import lm
from labkit.data import ArrayData
from labkit.finetune import (IGNORE, AtPath, fit_early_stopping, instruction_data, masked_cross_entropy,
                             masked_lm_loss, optimizer_bytes, trainable, trainable_count)
from labkit.gpt import GPT, GPTConfig
from labkit.heads import Classifier, classifier_loss
from labkit.lora import apply_lora, lora_param_count
from labkit.nn import count_params
from labkit.train import fit

CONFIG = GPTConfig.ci(vocab_size=64, max_len=16)


def _classifier():
    model = Classifier(GPT(CONFIG, rngs=nnx.Rngs(0)), 5, pad_id=0, rngs=nnx.Rngs(1))
    apply_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(2))
    return model


def test_regimes_select_the_right_parameters_and_count_optimizer_memory():
    model = _classifier()
    head = CONFIG.width * 5 + 5
    assert trainable_count(model, trainable("probe")) == head
    assert trainable_count(model, trainable("lora")) == head + lora_param_count(model)
    assert trainable_count(model, trainable("full")) == count_params(model)
    assert trainable_count(model.backbone, trainable("lora", head=None)) == lora_param_count(model)
    for regime in ("probe", "lora", "full"):
        optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=trainable(regime))
        n = trainable_count(model, trainable(regime))
        assert optimizer_bytes(optimizer) == 2 * 4 * n + 4  # two float32 moments per parameter and a step count
    assert trainable("probe") == trainable("probe")  # equal filters: a jitted step is not compiled again
    assert AtPath("head")(("head", "kernel"), None) and not AtPath("head")(("backbone", "head", "kernel"), None)


def test_instruction_data_by_hand():
    d = instruction_data([([5, 6, 7], [8, 9]), ([4], [3])], separator=[1], end=[2], seq_len=7, pad_id=0)
    assert d.x.tolist() == [[5, 6, 7, 1, 8, 9, 0], [4, 1, 3, 0, 0, 0, 0]]
    assert d.y.tolist() == [[-1, -1, -1, 8, 9, 2, -1], [-1, 3, 2, -1, -1, -1, -1]]
    cut = instruction_data([(list(range(10, 20)), [8])], separator=[1], end=[2], seq_len=5, pad_id=0)
    assert cut.x.tolist() == [[17, 18, 19, 1, 8]] and cut.y.tolist() == [[-1, -1, -1, 8, 2]]  # prompt cut from the left


def test_masked_loss_ignores_prompt_tokens_and_matches_the_plain_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 6, 11))
    targets = jnp.array([[IGNORE, IGNORE, 3, 4, 5, IGNORE], [IGNORE, 1, 2, IGNORE, IGNORE, IGNORE]])
    changed = targets.at[:, 0].set(7)  # a target that counts now
    kept = targets != IGNORE
    expected = -jax.nn.log_softmax(logits)[kept, targets[kept]].mean()
    np.testing.assert_allclose(masked_cross_entropy(logits, targets), expected, rtol=1e-6)
    assert not np.isclose(masked_cross_entropy(logits, changed), expected)
    full = jnp.array(np.random.default_rng(0).integers(0, 11, size=(2, 6)), jnp.int32)
    np.testing.assert_allclose(masked_cross_entropy(logits, full), lm.cross_entropy(logits, full), rtol=1e-6)
    assert float(masked_cross_entropy(logits, jnp.full((2, 6), IGNORE))) == 0.0


def test_predictions_at_prompt_positions_do_not_change_the_loss():
    model = GPT(CONFIG, rngs=nnx.Rngs(0))
    data = instruction_data([([5, 6, 7], [8, 9]), ([4, 3], [9])], separator=[1], end=[2], seq_len=8, pad_id=0)
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    logits = model(x)
    prompt = (y == IGNORE)[..., None]  # (B, T, 1): positions whose next token is prompt or padding
    noise = 10.0 * jax.random.normal(jax.random.key(1), logits.shape)
    np.testing.assert_allclose(masked_cross_entropy(jnp.where(prompt, noise, logits), y),
                               masked_lm_loss(model, x, y), rtol=1e-6)
    counted = ~prompt[..., 0]
    by_hand = -jax.nn.log_softmax(logits)[counted, y[counted]].mean()
    np.testing.assert_allclose(masked_lm_loss(model, x, y), by_hand, rtol=1e-5)
    other = instruction_data([([40, 41, 42], [8, 9])], separator=[1], end=[2], seq_len=8, pad_id=0)
    np.testing.assert_array_equal(other.y[0], data.y[0])  # another prompt, the same targets


@pytest.mark.slow  # trains a GPT
def test_instruction_tuning_with_fit_lowers_the_response_loss():
    model = GPT(CONFIG, rngs=nnx.Rngs(0))
    pairs = [([10 + i % 7, 20 + i % 5], [30 + i % 7]) for i in range(40)]
    data = instruction_data(pairs, separator=[1], end=[2], seq_len=6, pad_id=0)
    before = float(masked_lm_loss(model, jnp.asarray(data.x), jnp.asarray(data.y)))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    fit(model, optimizer, masked_lm_loss, data, steps=30, batch_size=8, key=jax.random.key(0), progress=False)
    assert float(masked_lm_loss(model, jnp.asarray(data.x), jnp.asarray(data.y))) < 0.5 * before


def test_errors():
    with pytest.raises(ValueError, match="regime"):
        trainable("adapters")
    with pytest.raises(ValueError, match="head=None"):
        trainable("probe", head=None)
    with pytest.raises(ValueError, match="head"):
        trainable("full", head="")
    with pytest.raises(TypeError, match="optimizer"):
        optimizer_bytes(optax.adam(1e-3))
    ok = dict(separator=[1], end=[2], seq_len=6, pad_id=0)
    with pytest.raises(ValueError, match="seq_len"):
        instruction_data([([5], [6])], **{**ok, "seq_len": 1})
    with pytest.raises(ValueError, match="pad_id"):
        instruction_data([([5], [6])], **{**ok, "pad_id": -1})
    with pytest.raises(ValueError, match="end"):
        instruction_data([([5], [6])], **{**ok, "end": []})
    with pytest.raises(ValueError, match="pairs"):
        instruction_data([], **ok)
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        instruction_data([([5], [6], [7])], **ok)
    with pytest.raises(ValueError, match="room"):
        instruction_data([([5], [6] * 6)], **ok)
    with pytest.raises(ValueError, match="separator"):
        instruction_data([([5], [6])], **{**ok, "separator": [[1]]})
    with pytest.raises(ValueError, match="non-negative"):
        instruction_data([([5, -3], [6])], **ok)
    logits = jnp.zeros((1, 3, 5))
    with pytest.raises(ValueError, match="logits"):
        masked_cross_entropy(jnp.zeros((3, 5)), jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="targets must have shape"):
        masked_cross_entropy(logits, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(TypeError, match="integer"):
        masked_cross_entropy(logits, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="ignore = -1"):
        masked_cross_entropy(logits, jnp.array([[0, 5, -1]]))
    with pytest.raises(ValueError, match="ignore = -1"):
        masked_cross_entropy(logits, jnp.array([[0, -2, -1]]))


def _stopping_run(scores, *, max_steps, eval_every=2, patience=2):
    """fit_early_stopping on a tiny probe, with a score_fn that replays ``scores`` and records the head's weights."""
    model = Classifier(GPT(CONFIG, rngs=nnx.Rngs(0)), 3, pad_id=0, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable("probe"))
    rng = np.random.default_rng(0)
    data = ArrayData(rng.integers(1, 64, size=(12, 8)).astype(np.int32), np.arange(12) % 3)
    seen = []

    def score_fn(m):
        seen.append(np.asarray(m.head.kernel[...]).copy())
        return scores[len(seen) - 1]

    run = fit_early_stopping(model, optimizer, classifier_loss, data, score_fn=score_fn, max_steps=max_steps,
                             eval_every=eval_every, patience=patience, batch_size=4, key=jax.random.key(0))
    return model, run, seen


def test_early_stopping_keeps_the_best_weights_and_stops_on_patience():
    model, run, seen = _stopping_run([0.2, 0.5, 0.5, 0.4, 0.9], max_steps=10)
    # 0.5 at step 4 is the best; a tie (step 6) and a worse score (step 8) use up patience 2, so step 10 never runs.
    assert run.eval_steps == [2, 4, 6, 8] and run.scores == [0.2, 0.5, 0.5, 0.4] and run.steps == 8
    assert run.best_step == 4 and run.best_score == 0.5 and run.stopped_early
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), seen[1])
    assert not np.array_equal(seen[1], seen[3])  # training did move the weights after the best step


def test_early_stopping_runs_to_max_steps_while_improving():
    model, run, seen = _stopping_run([0.1, 0.2, 0.3], max_steps=5)
    assert run.eval_steps == [2, 4, 5] and run.best_step == 5 and not run.stopped_early
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), seen[-1])


def test_early_stopping_errors():
    with pytest.raises(ValueError, match="patience must be a positive int"):
        _stopping_run([0.1], max_steps=2, patience=0)
