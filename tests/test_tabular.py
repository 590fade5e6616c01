import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import nn, tabular, train
from labkit.data import ArrayData
from labkit.gpt import Block
from labkit.gpt_config import GPTConfig

P = 5  # features


def _model(seed=0, **overrides):
    config = GPTConfig.ci(**{"num_layers": 1, **overrides})
    return tabular.TableTransformer(config, num_features=P, num_classes=3, rngs=nnx.Rngs(seed))


def _rows(b=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, P))


# ---- the feature tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_is_x_times_w_plus_b_after_cls():
    tokenizer = tabular.FeatureTokenizer(P, 8, rngs=nnx.Rngs(0))
    x = _rows(3)
    tokens = tokenizer(x)
    assert tokens.shape == (3, P + 1, 8)
    w, b, cls = tokenizer.weight[...], tokenizer.bias[...], tokenizer.cls[...]
    for j in range(P):
        np.testing.assert_allclose(tokens[:, j + 1], x[:, j : j + 1] * w[j] + b[j], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tokens[:, 0], jnp.broadcast_to(cls, (3, 8)))  # [CLS] does not depend on x
    bound = 8**-0.5
    assert all(float(jnp.abs(t).max()) <= bound for t in (w, b, cls))  # FT-Transformer's uniform initialization
    assert nn.count_params(tokenizer) == 2 * P * 8 + 8


def test_tokenizer_output_dtype():
    tokenizer = tabular.FeatureTokenizer(P, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert tokenizer(_rows()).dtype == jnp.bfloat16
    assert tokenizer.weight[...].dtype == jnp.float32


# ---- the model --------------------------------------------------------------------------------------------------


def test_shapes_and_reuse_of_gpt_blocks():
    model = _model(num_layers=2)
    x = _rows(4)
    logits = model(x)
    assert logits.shape == (4, 3) and logits.dtype == jnp.float32
    assert model.tokens(x).shape == (4, P + 1, 32)
    assert len(model.blocks) == 2 and all(type(b) is Block and not b.causal for b in model.blocks)
    maps = model.attention_maps(x)
    assert [m.shape for m in maps] == [(4, 2, P + 1, P + 1)] * 2
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, rtol=1e-5)
    assert float(maps[0][:, :, 0, -1].min()) > 0  # bidirectional: [CLS] (token 0) sees the last feature


def test_head_reads_the_cls_token():
    model = _model()
    x = _rows(2)
    np.testing.assert_allclose(model(x), model.head(model.tokens(x)[:, 0]), rtol=1e-6, atol=1e-6)


def test_permuting_features_with_their_weights_changes_nothing():
    # Features are identified by their own w_j, b_j (no positions), and attention treats tokens as a set, so
    # permuting the columns of x together with the rows of w and b leaves the logits unchanged.
    model = _model()
    x = _rows(6)
    before = model(x)
    perm = np.array([3, 0, 4, 1, 2])
    model.tokenizer.weight[...] = model.tokenizer.weight[...][perm]
    model.tokenizer.bias[...] = model.tokenizer.bias[...][perm]
    np.testing.assert_allclose(model(x[:, perm]), before, rtol=1e-5, atol=1e-5)


def test_permuting_columns_alone_changes_the_output():
    model = _model()
    x = _rows(6)
    perm = np.array([3, 0, 4, 1, 2])
    assert float(jnp.abs(model(x[:, perm]) - model(x)).max()) > 1e-4  # column identity matters


def test_rows_are_independent_and_jit_agrees():
    model = _model()
    x = _rows(5)
    np.testing.assert_allclose(model(x[2:3]), model(x)[2:3], rtol=1e-5, atol=1e-6)  # no mixing across the batch
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), model(x), rtol=1e-5, atol=1e-6)


def test_dropout_is_off_in_eval_mode():
    model = _model(dropout=0.5)
    x = _rows()
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    assert not np.allclose(model(x), model(x))


@pytest.mark.slow  # trains
def test_fit_learns_a_feature_rule():
    # Class = whether feature 2 is positive: a few hundred steps of labkit.train.fit must learn it.
    x = np.asarray(jax.random.normal(jax.random.key(0), (256, P)), np.float32)
    data = ArrayData(x, (x[:, 2] > 0).astype(np.int32))
    model = tabular.TableTransformer(GPTConfig.ci(width=16, num_layers=1), num_features=P, num_classes=2,
                                     rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    def loss_fn(model, x, y):
        return nn.cross_entropy(model(x), y)

    history = train.fit(model, optimizer, loss_fn, data, steps=80, batch_size=64, key=jax.random.key(1),
                        progress=False)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert train.evaluate(model, {"acc": lambda m, x, y: nn.accuracy(m(x), y)}, data)["acc"] > 0.9


# ---- errors -----------------------------------------------------------------------------------------------------


def test_wrong_feature_count_or_shape():
    model = _model()
    for bad in (jnp.zeros((4, P + 1)), jnp.zeros((4, P - 1)), jnp.zeros((P,)), jnp.zeros((2, P, 1))):
        with pytest.raises(ValueError, match=f"shape \\(B, P\\) with P = {P} features"):
            model(bad)
    with pytest.raises(ValueError, match="x is empty: it has 0 rows"):
        model(jnp.zeros((0, P)))
    with pytest.raises(ValueError, match="P = 5 features"):
        model.attention_maps(jnp.zeros((1, 4)))


def test_constructor_errors():
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        tabular.TableTransformer({"width": 8}, num_features=P, num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rotary"):
        tabular.TableTransformer(GPTConfig.llama_style(), num_features=P, num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'alibi', which orders the features inside attention"):
        tabular.TableTransformer(GPTConfig.ci(positions="alibi"), num_features=P, num_classes=2, rngs=nnx.Rngs(0))
    for name, value in (("num_features", 0), ("num_features", 2.0), ("num_classes", True), ("num_classes", -1)):
        kwargs = {"num_features": P, "num_classes": 2, name: value}
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            tabular.TableTransformer(GPTConfig.ci(), rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match="width must be a positive int"):
        tabular.FeatureTokenizer(P, 0, rngs=nnx.Rngs(0))


# ---- standardization --------------------------------------------------------------------------------------------


def test_standardization_is_fitted_on_train_only():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(3.0, 2.0, size=(50, 4)), rng.normal(5.0, 1.0, size=(20, 4))
    train_x[:, 1] = 7.0  # a constant feature
    mean, std = tabular.fit_standardization(train_x)
    np.testing.assert_allclose(mean, train_x.mean(0))
    np.testing.assert_allclose(std[[0, 2, 3]], train_x.std(0)[[0, 2, 3]])
    assert std[1] == 1.0  # no division by zero
    z = tabular.standardize(train_x, mean, std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0)[[0, 2, 3]], 1.0, rtol=1e-5)
    np.testing.assert_allclose(tabular.standardize(test_x, mean, std), (test_x - mean) / std, rtol=1e-5)
    assert abs(tabular.standardize(test_x, mean, std).mean()) > 0.1  # the test set keeps its own shift


def test_standardization_errors():
    with pytest.raises(ValueError, match="x must have shape \\(B, P\\); got shape \\(3,\\)"):
        tabular.fit_standardization(np.zeros(3))
    for empty in (np.zeros((0, 3)), np.zeros((3, 0))):
        with pytest.raises(ValueError, match="x is empty"):
            tabular.fit_standardization(empty)
    with pytest.raises(ValueError, match="x must be finite; it has 1 NaN"):
        tabular.fit_standardization(np.array([[1.0, np.nan], [2.0, 3.0]]))
    mean, std = tabular.fit_standardization(np.ones((4, 3)))
    with pytest.raises(ValueError, match="P = 3 features; got shape \\(2, 4\\)"):
        tabular.standardize(np.ones((2, 4)), mean, std)
    with pytest.raises(ValueError, match="x is empty: it has 0 rows"):
        tabular.standardize(np.ones((0, 3)), mean, std)
    with pytest.raises(ValueError, match="mean and std must both have shape \\(P,\\)"):
        tabular.standardize(np.ones((2, 3)), mean, std[:2])
    with pytest.raises(ValueError, match="std must be positive"):
        tabular.standardize(np.ones((2, 3)), mean, np.zeros(3))
