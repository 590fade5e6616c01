import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import data, nn, train


def _digits():
    digits = data.load("digits")
    scaled = data.ArrayData((digits.x / 16).astype(np.float32), digits.y.astype(np.int32))
    return data.train_test_split(scaled, test_fraction=0.2, key=jax.random.key(0))


def _loss(model, x, y):
    return nn.cross_entropy(model(x), y)


def _accuracy(model, x, y):
    return nn.accuracy(model(x), y)


@pytest.mark.slow  # trains an MLP on digits
def test_fit_learns_digits_and_records_history():
    train_set, test_set = _digits()
    model = nn.MLP([64, 64, 10], rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    history = train.fit(model, optimizer, _loss, train_set, steps=300, batch_size=64, key=jax.random.key(1),
                        eval_data=test_set, metrics={"accuracy": _accuracy}, eval_every=100, progress=False)
    assert history.step == list(range(1, 301)) and len(history.loss) == 300
    assert history.eval_step == [100, 200, 300]
    assert history.eval["accuracy"][-1] > 0.9
    assert np.mean(history.loss[-20:]) < 0.5 * np.mean(history.loss[:20])


def test_fit_is_reproducible_from_its_keys():
    train_set, _ = _digits()

    def run():
        model = nn.MLP([64, 16, 10], rngs=nnx.Rngs(3))
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        return train.fit(model, optimizer, _loss, train_set, steps=20, batch_size=32, key=jax.random.key(7),
                         progress=False).loss

    assert run() == run()


def test_batches_cover_every_example_once_per_epoch_when_divisible():
    it = train.batches(12, 4, jax.random.key(0))
    epoch = np.concatenate([next(it) for _ in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))


def test_batches_validate():
    with pytest.raises(ValueError, match="empty"):
        next(train.batches(0, 1, jax.random.key(0)))
    with pytest.raises(ValueError, match="batch_size must be between 1 and the number of examples \\(5\\); got 6"):
        next(train.batches(5, 6, jax.random.key(0)))


def test_fit_rejects_bad_arguments():
    train_set, _ = _digits()
    model = nn.MLP([64, 10], rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train.fit(model, optimizer, _loss, train_set, steps=0, batch_size=8, key=jax.random.key(0))
    with pytest.raises(TypeError, match="train must be an ArrayData"):
        train.fit(model, optimizer, _loss, (train_set.x, train_set.y), steps=1, batch_size=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="eval_every"):
        train.fit(model, optimizer, _loss, train_set, steps=1, batch_size=8, key=jax.random.key(0), eval_every=0)


def test_fit_stops_on_a_diverging_loss():
    train_set, _ = _digits()
    model = nn.MLP([64, 10], rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(10.0), wrt=nnx.Param)  # far beyond 2 / (largest curvature)

    def squared_error(model, x, y):
        return nn.mse(model(x), jax.nn.one_hot(y, 10))

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train.fit(model, optimizer, squared_error, train_set, steps=50, batch_size=64, key=jax.random.key(0),
                  progress=False)


def test_evaluate_weights_batches_by_size():
    x = np.arange(5, dtype=np.float32)[:, None]
    mean_x = {"mean": lambda model, x, y: jnp.mean(x)}
    result = train.evaluate(None, mean_x, data.ArrayData(x, np.zeros(5)), batch_size=2)
    assert result["mean"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="metrics is empty"):
        train.evaluate(None, {}, data.ArrayData(x, np.zeros(5)))


def test_fit_default_metric_is_the_loss_on_eval_data():
    train_set, test_set = _digits()
    model = nn.MLP([64, 10], rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    history = train.fit(model, optimizer, _loss, train_set, steps=20, batch_size=32, key=jax.random.key(0),
                        eval_data=test_set, eval_every=10)
    assert list(history.eval) == ["loss"] and len(history.eval["loss"]) == 2
    assert history.eval["loss"][1] < history.eval["loss"][0]
