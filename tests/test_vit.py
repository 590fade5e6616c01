import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit.data import ArrayData
from labkit.gpt import Block
from labkit.nn import count_params, cross_entropy
from labkit.train import fit
from labkit.vit import (MaskedPatchModel, PatchEmbed, ViT, ViTConfig, as_images, masked_patch_loss,
                        masked_reconstruction_error, patchify, random_patch_mask, sample_per_class, unpatchify)

# 6 x 4 colour images in 2 x 2 patches: a 3 x 2 grid, P = 6, 12 numbers per patch
TINY = dict(image_height=6, image_width=4, channels=3, patch_size=2, num_classes=5, num_layers=2, num_heads=2,
            width=8, mlp_width=16)


def images(shape=(3, 6, 4, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module", params=["mean", "cls"])
def model(request):
    return ViT(ViTConfig(**TINY, pooling=request.param), rngs=nnx.Rngs(0))


@nnx.jit
def encode(model, x):
    return model.encode(model.patch_embed(x))


def test_shapes(model):
    x = images()
    t = 6 + (model.config.pooling == "cls")
    assert model.config.num_tokens == t
    assert model.patch_embed(x).shape == (3, 6, 8)
    assert encode(model, x).shape == (3, t, 8)
    assert model(x).shape == (3, 5) and model(x).dtype == jnp.float32
    maps = model.attention_maps(x)
    assert [m.shape for m in maps] == [(3, 2, t, t)] * 2
    np.testing.assert_allclose(np.asarray(maps[0]).sum(-1), 1.0, rtol=1e-5)


def test_blocks_are_labkit_gpt_encoder_blocks(model):
    assert all(type(block) is Block and block.causal is False for block in model.blocks)


def test_patch_embedding_is_reshape_then_matmul():
    embed = PatchEmbed(2, 3, 8, rngs=nnx.Rngs(1))
    x = images()
    kernel, bias = np.asarray(embed.linear.kernel[...]), np.asarray(embed.linear.bias[...])  # (12, 8), (8,)
    expected = np.zeros((3, 6, 8), np.float32)
    for b in range(3):
        for row in range(3):
            for col in range(2):
                patch = x[b, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2, :].reshape(-1)  # (row, column, channel)
                expected[b, row * 2 + col] = patch @ kernel + bias
    np.testing.assert_allclose(np.asarray(embed(x)), expected, rtol=1e-5, atol=1e-6)


def test_unpatchify_inverts_patchify():
    x = images()
    patches = patchify(x, 2)
    assert patches.shape == (3, 6, 12)
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 2, 6, 4)), x)


def test_encoder_is_bidirectional(model):
    x = images()
    changed = x.copy()
    changed[:, -2:, -2:, :] += 1.0  # only the last patch (bottom right)
    before, after = np.asarray(encode(model, x)), np.asarray(encode(model, changed))
    first_patch = -6  # the first patch token, after [CLS] if there is one
    assert np.abs(before[:, first_patch] - after[:, first_patch]).max() > 1e-4
    if model.config.pooling == "cls":
        assert np.abs(before[:, 0] - after[:, 0]).max() > 1e-4


def test_cls_pooling_reads_token_zero_and_mean_pooling_averages():
    for pooling in ("mean", "cls"):
        model = ViT(ViTConfig(**TINY, pooling=pooling), rngs=nnx.Rngs(0))
        encoded = encode(model, images())
        pooled = encoded[:, 0] if pooling == "cls" else encoded.mean(axis=1)
        np.testing.assert_allclose(np.asarray(model(images())), np.asarray(model.head(pooled)), rtol=1e-5, atol=1e-6)


def test_param_count_of_presets():
    c = ViTConfig.ci()
    d, f, layers = c.width, c.mlp_width, c.num_layers
    block = 2 * 2 * d + 4 * (d * d + d) + d * f + f + f * d + d
    expected = (c.patch_pixels * d + d) + c.num_tokens * d + layers * block + 2 * d + d * 10 + 10
    assert count_params(nnx.eval_shape(lambda: ViT(c, rngs=nnx.Rngs(0)))) == expected
    assert ViTConfig.for_profile("ci") == ViTConfig.ci()
    assert ViTConfig.for_profile("gpu").dtype == jnp.bfloat16
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.width = 3


def test_random_patch_mask_hides_exactly_k_and_depends_on_the_key():
    a = np.asarray(random_patch_mask(jax.random.key(0), 50, 16, 5))
    assert a.shape == (50, 16) and (a.sum(axis=1) == 5).all()
    assert 0 < a.mean(axis=0).min() and a.mean(axis=0).max() < 1  # every patch is hidden sometimes, none always
    np.testing.assert_array_equal(a, np.asarray(random_patch_mask(jax.random.key(0), 50, 16, 5)))
    assert not np.array_equal(a, np.asarray(random_patch_mask(jax.random.key(1), 50, 16, 5)))


def test_masked_error_counts_only_masked_patches():
    rng = np.random.default_rng(0)
    prediction, target = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    patch_mask = np.array([[True, False, False, True], [False, False, True, False]])
    expected = ((prediction - target) ** 2)[patch_mask].mean()
    assert float(masked_reconstruction_error(prediction, target, patch_mask)) == pytest.approx(expected, rel=1e-5)
    wrong_elsewhere = prediction.copy()
    wrong_elsewhere[~patch_mask] += 100.0  # errors on visible patches must not count
    assert float(masked_reconstruction_error(wrong_elsewhere, target, patch_mask)) == pytest.approx(expected, rel=1e-5)


def test_masked_model_ignores_the_pixels_it_hides():
    vit = ViT(ViTConfig(**TINY), rngs=nnx.Rngs(0))
    pretrainer = MaskedPatchModel(vit, mask_ratio=0.5, key=jax.random.key(0), rngs=nnx.Rngs(1))
    assert pretrainer.num_masked == 3
    x = images()
    patch_mask = np.zeros((3, 6), bool)
    patch_mask[:, 5] = True  # hide the last patch
    changed = x.copy()
    changed[:, -2:, -2:, :] = 7.0
    np.testing.assert_allclose(np.asarray(pretrainer(x, patch_mask)), np.asarray(pretrainer(changed, patch_mask)),
                               rtol=1e-6)
    assert pretrainer(x, patch_mask).shape == (3, 6, 12)


@pytest.mark.slow  # pretrains and fine-tunes
def test_pretraining_with_fit_trains_the_shared_encoder():
    vit = ViT(ViTConfig(**TINY), rngs=nnx.Rngs(0))
    pretrainer = MaskedPatchModel(vit, mask_ratio=0.5, key=jax.random.key(0), rngs=nnx.Rngs(1))
    before = np.asarray(vit.patch_embed.linear.kernel[...]).copy()
    data = ArrayData(images((16, 6, 4, 3)), np.zeros(16, np.int32))
    history = fit(pretrainer, nnx.Optimizer(pretrainer, optax.adam(1e-2), wrt=nnx.Param), masked_patch_loss, data,
                  steps=15, batch_size=8, key=jax.random.key(0), progress=False)
    assert history.loss[-1] < history.loss[0]
    assert not np.allclose(before, np.asarray(vit.patch_embed.linear.kernel[...]))  # the ViT itself was trained
    head_model_loss = cross_entropy(vit(data.x), data.y)  # and it still classifies
    assert np.isfinite(float(head_model_loss))


def test_as_images_and_sample_per_class():
    flat = ArrayData(np.arange(6 * 24, dtype=np.float64).reshape(6, 24), np.array([0, 1, 0, 1, 2, 2]))
    data = as_images(flat, height=2, width=4, channels=3, scale=0.5)
    assert data.x.shape == (6, 2, 4, 3) and data.x.dtype == np.float32 and data.x[0, 0, 1, 0] == 1.5
    few = sample_per_class(data, 2, jax.random.key(0))
    assert sorted(few.y.tolist()) == [0, 0, 1, 1, 2, 2] and few.x.shape == (6, 2, 4, 3)
    one = sample_per_class(data, 1, jax.random.key(3))
    assert sorted(one.y.tolist()) == [0, 1, 2]
    for row, label in zip(one.x, one.y, strict=True):  # each example keeps its own label
        assert label == flat.y[int(row[0, 0, 0] * 2) // 24]


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: ViTConfig(**{**TINY, "patch_size": 4}), ValueError,
         "image height 6 and width 4 must both be divisible by the patch size 4"),
        (lambda: PatchEmbed(3, 3, 8, rngs=nnx.Rngs(0))(images()), ValueError,
         "image height 6 and width 4 must both be divisible by the patch size 3"),
        (lambda: PatchEmbed(2, 1, 8, rngs=nnx.Rngs(0))(images()), ValueError, "must have C=1 channels"),
        (lambda: patchify(np.zeros((6, 4)), 2), ValueError, r"shape \(B, height, width, C\); got \(6, 4\)"),
        (lambda: unpatchify(np.zeros((1, 5, 12)), 2, 6, 4), ValueError, r"patches must have shape \(B, 6, p\*p\*C\)"),
        (lambda: ViTConfig(**{**TINY, "pooling": "max"}), ValueError, "pooling must be one of mean, cls; got 'max'"),
        (lambda: ViTConfig(**{**TINY, "num_heads": 3}), ValueError, "width D=8 must be divisible by num_heads N=3"),
        (lambda: ViTConfig(**{**TINY, "channels": 0}), ValueError, "channels must be a positive int; got 0"),
        (lambda: ViT(TINY, rngs=nnx.Rngs(0)), TypeError, "config must be a ViTConfig; got dict"),
        (lambda: random_patch_mask(jax.random.key(0), 2, 4, 4), ValueError, r"num_masked must be an int in \[1, 3\]"),
        (lambda: masked_reconstruction_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)), np.zeros((1, 2), bool)),
         ValueError, "prediction and target must have the same shape"),
        (lambda: masked_reconstruction_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), np.zeros((2,), bool)),
         ValueError, r"patch_mask must have shape \(1, 2\)"),
        (lambda: MaskedPatchModel(ViT(ViTConfig(**TINY), rngs=nnx.Rngs(0)), mask_ratio=0.99, key=jax.random.key(0),
                                  rngs=nnx.Rngs(0)), ValueError, "mask_ratio must hide some but not all of the 6"),
        (lambda: MaskedPatchModel(None, mask_ratio=0.5, key=jax.random.key(0), rngs=nnx.Rngs(0)), TypeError,
         "encoder must be a ViT; got NoneType"),
        (lambda: as_images(ArrayData(np.zeros((2, 63)), np.zeros(2)), height=8, width=8), ValueError,
         r"data.x has 63 features per example but height\*width\*channels = 8\*8\*1 = 64"),
        (lambda: as_images(np.zeros((2, 64)), height=8, width=8), TypeError, "data must be an ArrayData; got ndarray"),
        (lambda: sample_per_class(ArrayData(np.zeros((3, 2)), np.array([0, 0, 1])), 2, jax.random.key(0)),
         ValueError, "per_class=2 but class 1 has only 1 examples"),
        (lambda: sample_per_class(ArrayData(np.zeros((3, 2)), np.array([0, 0, 1])), 0, jax.random.key(0)),
         ValueError, "per_class must be a positive int; got 0"),
        (lambda: ArrayData(np.zeros((0, 8, 8, 1)), np.zeros(0)), ValueError, "x is empty"),
        (lambda: ArrayData(np.zeros((3, 8, 8, 1)), np.zeros(2)), ValueError, "x has 3 examples but y has 2"),
    ],
)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_masked_model_checks_the_mask_shape():
    vit = ViT(ViTConfig(**TINY), rngs=nnx.Rngs(0))
    pretrainer = MaskedPatchModel(vit, mask_ratio=0.5, key=jax.random.key(0), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"patch_mask must have shape \(B=3, P=6\); got \(3, 5\)"):
        pretrainer(images(), np.zeros((3, 5), bool))
