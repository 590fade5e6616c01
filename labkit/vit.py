"""A Vision Transformer (ViT): an image cut into patches, one token per patch, the GPT's blocks without a causal mask.

Dosovitskiy et al. (2021): a linear map of each flattened patch, learned positions, an optional [CLS] token, pre-norm
encoder blocks (``labkit.gpt.Block(config, causal=False)``), a final norm and a linear classification head.
``MaskedPatchModel`` pretrains the same encoder without labels, in the style of SimMIM (Xie et al. 2022): a random
subset of patch embeddings is replaced by a learned mask token and a linear decoder predicts those patches' pixels.

Image axes are (B, height, width, C) with C channels; P is the number of patches and p the side of a patch, so a
patch holds p*p*C numbers (H stays the head width of the glossary). T = P tokens, or P + 1 with a [CLS] token.

>>> config = ViTConfig.ci()                                  # 8 x 8 grey images, 2 x 2 patches, 10 classes
>>> model = ViT(config, rngs=nnx.Rngs(0))
>>> model(jnp.zeros((2, 8, 8, 1))).shape                     # logits (B, classes)
(2, 10)
>>> [m.shape for m in model.attention_maps(jnp.zeros((1, 8, 8, 1)))]   # (B, N, T, T) per layer, T = 16 patches
[(1, 2, 16, 16), (1, 2, 16, 16)]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from labkit._checks import check_int
from labkit.data import ArrayData
from labkit.gpt import Block, GPTConfig
from labkit.positions import LearnedPositions
from labkit.profiles import Profile, get_profile

__all__ = ["MaskedPatchModel", "PatchEmbed", "ViT", "ViTConfig", "as_images", "masked_patch_loss",
           "masked_reconstruction_error", "patchify", "random_patch_mask", "sample_per_class", "unpatchify"]
POOLINGS = ("mean", "cls")


def check_patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The grid of patches (rows, columns); an error unless both image sides are multiples of ``patch_size``."""
    for name, value in (("height", height), ("width", width), ("patch_size", patch_size)):
        check_int(name, value)
    if height % patch_size or width % patch_size:
        raise ValueError(f"image height {height} and width {width} must both be divisible by the patch size "
                         f"{patch_size}")
    return height // patch_size, width // patch_size


def _check_images(images: Any, channels: int | None = None) -> None:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must have shape (B, height, width, C); got {tuple(getattr(images, 'shape', ()))}")
    if channels is not None and images.shape[-1] != channels:
        raise ValueError(f"images must have C={channels} channels (last axis); got shape {tuple(images.shape)}")


def patchify(images: Float[Array, "B height width C"], patch_size: int) -> Float[Array, "B P pixels"]:
    """Cut images into non-overlapping p x p patches, row by row; each patch flattened in (row, column, channel) order.

    >>> patchify(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)[0, 1]    # the top-right patch
    Array([2., 3., 6., 7.], dtype=float32)
    """
    _check_images(images)
    b, height, width, c = images.shape
    rows, cols = check_patch_grid(height, width, patch_size)
    p = patch_size
    x = images.reshape(b, rows, p, cols, p, c)  # (B, rows, p, cols, p, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, rows, cols, p, p, C)
    return x.reshape(b, rows * cols, p * p * c)  # (B, P, p*p*C)


def unpatchify(patches: Float[Array, "B P pixels"], patch_size: int, height: int, width: int
               ) -> Float[Array, "B height width C"]:
    """The inverse of ``patchify``: patches (B, P, p*p*C) back to images (B, height, width, C)."""
    rows, cols = check_patch_grid(height, width, patch_size)
    p = patch_size
    if getattr(patches, "ndim", None) != 3 or patches.shape[1] != rows * cols or patches.shape[2] % (p * p):
        raise ValueError(f"patches must have shape (B, {rows * cols}, p*p*C) for {height}x{width} images and "
                         f"p={p}; got {tuple(getattr(patches, 'shape', ()))}")
    b, c = patches.shape[0], patches.shape[2] // (p * p)
    x = patches.reshape(b, rows, cols, p, p, c).transpose(0, 1, 3, 2, 4, 5)  # (B, rows, p, cols, p, C)
    return x.reshape(b, height, width, c)


class PatchEmbed(nnx.Module):
    """Each p x p patch, flattened, times one (p*p*C, D) matrix plus a bias: images (B, height, width, C) -> (B, P, D).

    >>> PatchEmbed(2, 1, 16, rngs=nnx.Rngs(0))(jnp.zeros((3, 8, 8, 1))).shape
    (3, 16, 16)
    """

    def __init__(self, patch_size: int, channels: int, width: int, *, init: Any = nnx.initializers.normal(0.02),
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        for name, value in (("patch_size", patch_size), ("channels", channels), ("width", width)):
            check_int(name, value)
        self.patch_size, self.channels = patch_size, channels
        self.linear = nnx.Linear(patch_size * patch_size * channels, width, dtype=dtype, kernel_init=init, rngs=rngs)

    def __call__(self, images: Float[Array, "B height width C"]) -> Float[Array, "B P D"]:
        _check_images(images, self.channels)
        return self.linear(patchify(images, self.patch_size))  # (B, P, p*p*C) @ (p*p*C, D) -> (B, P, D)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Every size and choice of a ViT. Presets: ci, cpu, gpu, for_profile (all for 8 x 8 grey digits)."""

    image_height: int = 8  # pixels per column of an image
    image_width: int = 8  # pixels per row of an image
    channels: int = 1  # C: 1 for grey, 3 for colour
    patch_size: int = 2  # p: side of a square patch; both image sides must be multiples of it
    num_classes: int = 10  # outputs of the classification head
    num_layers: int  # L: encoder blocks
    num_heads: int  # N: attention heads per block
    width: int  # D: width of the residual stream (and of each patch embedding)
    mlp_width: int  # F: hidden width of each block's feed-forward network
    pooling: str = "mean"  # "mean" (average of the patch outputs) or "cls" (the output at a learned extra token)
    dropout: float = 0.0  # dropout on the embeddings and each residual branch (training only)
    init_std: float = 0.02  # standard deviation of the normal initialisation
    dtype: Any = jnp.float32  # compute dtype of activations; parameters are float32

    def __post_init__(self) -> None:
        for name in ("image_height", "image_width", "channels", "patch_size", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive int; got {value!r}")
        check_patch_grid(self.image_height, self.image_width, self.patch_size)
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViTConfig.pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        self.block_config()  # the blocks' sizes are checked by GPTConfig

    @property
    def num_patches(self) -> int:
        """P = (height / p) x (width / p)."""
        rows, cols = check_patch_grid(self.image_height, self.image_width, self.patch_size)
        return rows * cols

    @property
    def num_tokens(self) -> int:
        """T: the patches, plus one for the [CLS] token."""
        return self.num_patches + (self.pooling == "cls")

    @property
    def patch_pixels(self) -> int:
        """Numbers in one flattened patch: p*p*C."""
        return self.patch_size**2 * self.channels

    def block_config(self) -> GPTConfig:
        """The sizes of the encoder blocks as a GPTConfig (its vocabulary is unused: a ViT has no token table)."""
        return GPTConfig(vocab_size=1, max_len=self.num_tokens, num_layers=self.num_layers, num_heads=self.num_heads,
                         width=self.width, mlp_width=self.mlp_width, dropout=self.dropout, init_std=self.init_std,
                         dtype=self.dtype)

    # ---- presets ----
    @classmethod
    def ci(cls, **overrides: Any) -> "ViTConfig":
        """Tiny (about 18k parameters): tests and the ``ci`` profile."""
        return cls(**{**dict(num_layers=2, num_heads=2, width=32, mlp_width=64), **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> "ViTConfig":
        """Small (about 0.1M parameters): trains on the digits in seconds to a minute on a 2-core laptop."""
        return cls(**{**dict(num_layers=3, num_heads=4, width=64, mlp_width=128), **overrides})

    @classmethod
    def gpu(cls, **overrides: Any) -> "ViTConfig":
        """ViT-Tiny-sized blocks (12 x 192, 3 heads; Touvron et al. 2021) in bf16."""
        return cls(**{**dict(num_layers=12, num_heads=3, width=192, mlp_width=768, dtype=jnp.bfloat16), **overrides})

    @classmethod
    def for_profile(cls, profile: Profile | str | None = None, **overrides: Any) -> "ViTConfig":
        """The preset of a compute profile (default: ``labkit.profiles.get_profile()``); ``tpu`` uses ``gpu``'s."""
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        return profile.pick(ci=cls.ci, cpu=cls.cpu, gpu=cls.gpu)(**{"dtype": profile.compute_dtype, **overrides})


class ViT(nnx.Module):
    """The Vision Transformer; ``model(images)`` gives class logits (B, classes) in float32."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig; got {type(config).__name__}")
        self.config = config
        blocks = config.block_config()
        init = nnx.initializers.normal(config.init_std)
        self.patch_embed = PatchEmbed(config.patch_size, config.channels, config.width, init=init,
                                      dtype=config.dtype, rngs=rngs)
        self.cls_token = (nnx.Param(init(rngs.params(), (config.width,), jnp.float32))
                          if config.pooling == "cls" else None)  # (D,)
        self.positions = LearnedPositions(config.num_tokens, config.width, init=init, dtype=config.dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.blocks = nnx.List([Block(blocks, causal=False, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.LayerNorm(config.width, use_fast_variance=False, dtype=config.dtype, rngs=rngs)
        self.head = nnx.Linear(config.width, config.num_classes, dtype=config.dtype, kernel_init=init, rngs=rngs)

    def __call__(self, images: Float[Array, "B height width C"]) -> Float[Array, "B classes"]:
        return self.classify(self.encode(self.patch_embed(images)))

    def encode(self, patches: Float[Array, "B P D"]) -> Float[Array, "B T D"]:
        """Patch embeddings (B, P, D) -> the final-normed encoder output (B, T, D); with [CLS], token 0 is [CLS]."""
        x = self._tokens(patches)  # (B, T, D)
        for block in self.blocks:
            x = block(x)  # (B, T, D): every token attends to every token
        return self.final_norm(x)

    def classify(self, encoded: Float[Array, "B T D"]) -> Float[Array, "B classes"]:
        """The head on the pooled encoder output: the [CLS] token's, or the mean over patches."""
        pooled = encoded[:, 0] if self.cls_token is not None else encoded.mean(axis=1)  # (B, D)
        return self.head(pooled).astype(jnp.float32)  # (B, classes)

    def attention_maps(self, images: Float[Array, "B height width C"]) -> list[Float[Array, "B N T T"]]:
        """The attention weights of every layer (row = query token, column = key token); rows sum to 1."""
        x = self._tokens(self.patch_embed(images))  # (B, T, D)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.attn_norm(x), causal=False))  # (B, N, T, T)
            x = block(x)
        return maps

    def _tokens(self, patches: Float[Array, "B P D"]) -> Float[Array, "B T D"]:
        c = self.config
        if getattr(patches, "ndim", None) != 3 or patches.shape[1:] != (c.num_patches, c.width):
            raise ValueError(f"patch embeddings must have shape (B, P={c.num_patches}, D={c.width}); got "
                             f"{tuple(getattr(patches, 'shape', ()))}")
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(patches.dtype), (patches.shape[0], 1, c.width))
            patches = jnp.concatenate([cls, patches], axis=1)  # (B, P + 1, D)
        return self.dropout(patches + self.positions(c.num_tokens))  # (T, D) broadcast over the batch


# ---- masked-patch pretraining -----------------------------------------------------------------------------------


def random_patch_mask(key: jax.Array, batch_size: int, num_patches: int, num_masked: int) -> Bool[Array, "B P"]:
    """A boolean (B, P) mask with exactly ``num_masked`` True (= hidden) patches per image, chosen uniformly.

    >>> random_patch_mask(jax.random.key(0), 3, 16, 4).sum(axis=1)
    Array([4, 4, 4], dtype=int32)
    """
    check_int("batch_size", batch_size)
    check_int("num_patches", num_patches)
    if not isinstance(num_masked, int) or not 1 <= num_masked < num_patches:
        raise ValueError(f"num_masked must be an int in [1, {num_patches - 1}] (some but not all patches); "
                         f"got {num_masked!r}")
    noise = jax.random.uniform(key, (batch_size, num_patches))
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # a random permutation of 0..P-1 per image
    return ranks < num_masked


def masked_reconstruction_error(prediction: Float[Array, "B P pixels"], target: Float[Array, "B P pixels"],
                                patch_mask: Bool[Array, "B P"]) -> Float[Array, ""]:
    """Mean squared error over the pixels of the masked patches only; visible patches do not count."""
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(f"prediction and target must have the same shape (B, P, p*p*C); got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    if patch_mask.shape != prediction.shape[:2]:
        raise ValueError(f"patch_mask must have shape {tuple(prediction.shape[:2])} (B, P); got "
                         f"{tuple(patch_mask.shape)}")
    weight = patch_mask.astype(jnp.float32)[..., None]  # (B, P, 1)
    squared = (prediction.astype(jnp.float32) - target.astype(jnp.float32)) ** 2  # (B, P, p*p*C)
    return (squared * weight).sum() / (weight.sum() * prediction.shape[-1])


class MaskedPatchModel(nnx.Module):
    """A ViT encoder with a learned mask token and a linear pixel decoder, for masked-patch pretraining.

    The encoder is shared, not copied: after ``fit(MaskedPatchModel(vit, ...), ...)`` the ``vit`` itself holds the
    pretrained weights, ready for fine-tuning. Masks come from a random stream seeded with ``key``.
    """

    def __init__(self, encoder: ViT, *, mask_ratio: float, key: jax.Array, rngs: nnx.Rngs):
        if not isinstance(encoder, ViT):
            raise TypeError(f"encoder must be a ViT; got {type(encoder).__name__}")
        c = encoder.config
        ratio_ok = isinstance(mask_ratio, (int, float)) and not isinstance(mask_ratio, bool) and 0 < mask_ratio < 1
        num_masked = int(round(mask_ratio * c.num_patches)) if ratio_ok else 0
        if not 1 <= num_masked < c.num_patches:
            raise ValueError(f"mask_ratio must hide some but not all of the {c.num_patches} patches; got "
                             f"{mask_ratio!r}")
        self.encoder, self.num_masked = encoder, num_masked
        self.masks = nnx.RngStream(key, tag="mask")
        self.mask_token = nnx.Param(nnx.initializers.normal(c.init_std)(rngs.params(), (c.width,), jnp.float32))
        self.decoder = nnx.Linear(c.width, c.patch_pixels, dtype=c.dtype, rngs=rngs)

    def __call__(self, images: Float[Array, "B height width C"], patch_mask: Bool[Array, "B P"]
                 ) -> Float[Array, "B P pixels"]:
        """Predicted pixels of every patch (B, P, p*p*C), from an encoder that sees the masked ones as the token."""
        c = self.encoder.config
        if getattr(patch_mask, "shape", None) != (images.shape[0], c.num_patches):
            raise ValueError(f"patch_mask must have shape (B={images.shape[0]}, P={c.num_patches}); got "
                             f"{tuple(getattr(patch_mask, 'shape', ()))}")
        patches = self.encoder.patch_embed(images)  # (B, P, D)
        patches = jnp.where(patch_mask[..., None], self.mask_token[...].astype(patches.dtype), patches)
        encoded = self.encoder.encode(patches)[:, -c.num_patches:]  # (B, P, D): drop [CLS] if there is one
        return self.decoder(encoded).astype(jnp.float32)  # (B, P, p*p*C)

    def draw_mask(self, batch_size: int) -> Bool[Array, "B P"]:
        """The next random mask from this model's stream (advances it)."""
        return random_patch_mask(self.masks(), batch_size, self.encoder.config.num_patches, self.num_masked)


def masked_patch_loss(model: MaskedPatchModel, x: Float[Array, "B height width C"], y: Any) -> Float[Array, ""]:
    """The pretraining loss for ``labkit.train.fit``: hide a fresh random subset of patches, predict their pixels,
    and score the masked patches only. ``y`` (the labels) is ignored: the images are their own targets."""
    patch_mask = model.draw_mask(x.shape[0])  # (B, P)
    prediction = model(x, patch_mask)  # (B, P, p*p*C)
    return masked_reconstruction_error(prediction, patchify(x, model.encoder.config.patch_size), patch_mask)


# ---- data -------------------------------------------------------------------------------------------------------


def as_images(data: ArrayData, *, height: int, width: int, channels: int = 1, scale: float = 1.0) -> ArrayData:
    """Flat feature rows (n, height*width*C) as float32 images (n, height, width, C), multiplied by ``scale``."""
    if not isinstance(data, ArrayData):
        raise TypeError(f"data must be an ArrayData; got {type(data).__name__}")
    for name, value in (("height", height), ("width", width), ("channels", channels)):
        check_int(name, value)
    x = np.asarray(data.x)
    if int(np.prod(x.shape[1:])) != height * width * channels:
        raise ValueError(f"data.x has {int(np.prod(x.shape[1:]))} features per example but height*width*channels "
                         f"= {height}*{width}*{channels} = {height * width * channels}")
    images = (x.reshape(len(x), height, width, channels) * scale).astype(np.float32)
    return ArrayData(images, np.asarray(data.y), (), data.target_names)


def sample_per_class(data: ArrayData, per_class: int, key: jax.Array) -> ArrayData:
    """``per_class`` examples of each class of ``data.y``, drawn with ``key`` without replacement, shuffled."""
    if not isinstance(data, ArrayData):
        raise TypeError(f"data must be an ArrayData; got {type(data).__name__}")
    check_int("per_class", per_class)
    y = np.asarray(data.y)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < per_class:
        raise ValueError(f"per_class={per_class} but class {classes[counts.argmin()].item()!r} has only "
                         f"{counts.min()} examples")
    order = np.asarray(jax.random.permutation(key, len(y)))
    chosen = np.concatenate([order[y[order] == c][:per_class] for c in classes])
    chosen = chosen[np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(chosen)))]
    return ArrayData(np.asarray(data.x)[chosen], y[chosen], data.feature_names, data.target_names)
