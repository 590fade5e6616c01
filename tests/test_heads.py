"""labkit.heads: pooling over real tokens only, padding cannot change a prediction, a frozen backbone under probing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit.data import ArrayData
from labkit.finetune import trainable
from labkit.gpt import GPT, GPTConfig
from labkit.heads import (Classifier, balanced_accuracy, classifier_accuracy, classifier_loss, lengths_of, pool,
                          predict)
from labkit.train import fit

CONFIG = GPTConfig.ci(vocab_size=64, max_len=16)


def _classifier(pooling="last"):
    return Classifier(GPT(CONFIG, rngs=nnx.Rngs(0)), 3, pad_id=0, pooling=pooling, rngs=nnx.Rngs(1))


def test_pool_by_hand():
    h = jnp.arange(24.0).reshape(2, 4, 3)  # (B, T, D)
    lengths = jnp.array([1, 3])
    np.testing.assert_allclose(pool(h, lengths, "last"), [h[0, 0], h[1, 2]])
    np.testing.assert_allclose(pool(h, lengths, "mean"), [h[0, 0], h[1, :3].mean(0)])
    np.testing.assert_array_equal(lengths_of(jnp.array([[5, 0, 0], [5, 6, 7]]), 0), [1, 3])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_does_not_change_the_features(pooling):
    model = _classifier(pooling)
    model.head.kernel[...] = jax.random.normal(jax.random.key(2), model.head.kernel.shape)
    short = jnp.array([[5, 6, 7, 0, 0, 0]])
    longer = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(model(short), model(longer), rtol=1e-5, atol=1e-6)
    unpadded = model.head(pool(model.backbone.hidden(jnp.array([[5, 6, 7]])), jnp.array([3]), pooling))
    np.testing.assert_allclose(model(short), unpadded, rtol=1e-5, atol=1e-6)


def test_frozen_backbone_stays_bit_identical_under_linear_probing():
    model = _classifier()
    before = [np.asarray(a).copy() for a in jax.tree.leaves(nnx.state(model.backbone, nnx.Param))]
    head_before = np.asarray(model.head.kernel[...]).copy()
    rng = np.random.default_rng(0)
    x = rng.integers(1, 64, size=(32, 8)).astype(np.int32)
    data = ArrayData(x, (x[:, 0] % 3).astype(np.int32))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable("probe"))
    fit(model, optimizer, classifier_loss, data, steps=5, batch_size=8, key=jax.random.key(0), progress=False)
    after = jax.tree.leaves(nnx.state(model.backbone, nnx.Param))
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert not np.array_equal(head_before, np.asarray(model.head.kernel[...]))
    assert 0.0 <= float(classifier_accuracy(model, jnp.asarray(x), jnp.asarray(data.y))) <= 1.0


def test_errors():
    backbone = GPT(CONFIG, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="backbone"):
        Classifier(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 3, pad_id=0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(backbone, 1, pad_id=0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="pad_id"):
        Classifier(backbone, 3, pad_id=64, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="pooling"):
        Classifier(backbone, 3, pad_id=0, pooling="max", rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="only of pad_id"):
        _classifier()(jnp.array([[0, 0, 0], [1, 2, 3]]))
    h = jnp.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="hidden"):
        pool(jnp.zeros((2, 4)), jnp.array([1, 2]))
    with pytest.raises(ValueError, match="lengths"):
        pool(h, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="how"):
        pool(h, jnp.array([1, 2]), "max")


def test_balanced_accuracy_by_hand_and_against_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([0, 0, 0, 0, 1, 1, 2])
    assert balanced_accuracy(y, np.zeros(7, int), 3) == pytest.approx(1 / 3)  # one class for all: exactly 1 / C
    assert balanced_accuracy(y, np.array([0, 0, 1, 1, 1, 1, 2]), 3) == pytest.approx((0.5 + 1 + 1) / 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        true, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        assert balanced_accuracy(true, pred, 4) == pytest.approx(balanced_accuracy_score(true, pred))
    with pytest.raises(ValueError, match=r"y_pred must hold int labels in \[0, 2\]"):
        balanced_accuracy(y, np.full(7, 3), 3)
    with pytest.raises(ValueError, match="same non-zero length"):
        balanced_accuracy(y, y[:3], 3)


def test_predict_is_the_argmax_in_batches():
    model = Classifier(GPT(GPTConfig.ci(vocab_size=64, max_len=16), rngs=nnx.Rngs(0)), 3, pad_id=0,
                       rngs=nnx.Rngs(1))
    model.head.kernel[...] = jax.random.normal(jax.random.key(2), model.head.kernel.shape)
    model.eval()
    x = np.random.default_rng(0).integers(1, 64, size=(10, 8)).astype(np.int32)
    expected = np.asarray(jnp.argmax(model(jnp.asarray(x)), -1))
    np.testing.assert_array_equal(predict(model, x, batch_size=3), expected)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predict(model, x, batch_size=0)
