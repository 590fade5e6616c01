import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import nn


def test_mlp_shapes_and_param_count():
    model = nn.MLP([64, 32, 10], rngs=nnx.Rngs(0))
    assert model(jnp.zeros((5, 64))).shape == (5, 10)
    assert nn.count_params(model) == 64 * 32 + 32 + 32 * 10 + 10


def test_mlp_is_the_composition_it_claims():
    model = nn.MLP([3, 4, 2], activation="tanh", rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (6, 3))
    first, second = model.layers
    expected = jnp.tanh(x @ first.kernel[...] + first.bias[...]) @ second.kernel[...] + second.bias[...]
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sizes", [[10], [], [3, 0, 2], [3, 2.5], [True, 2]])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        nn.MLP(sizes, rngs=nnx.Rngs(0))


def test_mlp_rejects_unknown_activation_and_wrong_input_width():
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.MLP([2, 2], activation="swish!", rngs=nnx.Rngs(0))
    model = nn.MLP([4, 2], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="last dimension 4; got shape \\(3, 5\\)"):
        model(jnp.zeros((3, 5)))


def test_mse_value_and_shape_check():
    assert float(nn.mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        nn.mse(jnp.zeros((3, 1)), jnp.zeros(3))  # would silently broadcast to (3, 3)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 10_000))
def test_cross_entropy_matches_definition(batch, classes, seed):
    # The reference is NumPy in float64, so each example compiles only labkit's function (seconds, not minutes).
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)
    wide = logits.astype(np.float64)
    top = wide.max(1, keepdims=True)
    log_p = wide - (top + np.log(np.exp(wide - top).sum(1, keepdims=True)))
    expected = -np.mean(log_p[np.arange(batch), labels])
    np.testing.assert_allclose(nn.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5,
                               atol=1e-6)


def test_cross_entropy_errors_name_the_argument():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match="logits must have shape \\(B, C\\)"):
        nn.cross_entropy(jnp.zeros(4), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels must have shape \\(3,\\)"):
        nn.cross_entropy(logits, jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="labels must be integer"):
        nn.cross_entropy(logits, jnp.zeros(3))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\]; got values from 0 to 4"):
        nn.cross_entropy(logits, jnp.array([0, 1, 4]))


def test_accuracy():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert float(nn.accuracy(logits, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)


def test_losses_work_under_jit_and_grad():
    model = nn.MLP([4, 3], rngs=nnx.Rngs(0))
    x, y = jnp.ones((2, 4)), jnp.array([0, 2])

    @nnx.jit
    def loss(model):
        return nn.cross_entropy(model(x), y)

    grads = nnx.grad(lambda m: nn.cross_entropy(m(x), y))(model)
    assert np.isfinite(float(loss(model)))
    assert grads.layers[0].kernel[...].shape == (4, 3)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    optimizer.update(model, grads)
