"""A Transformer for tables: every numeric feature becomes a token, plus a learned [CLS] token (chapter 5).

Feature j of a row, the number x_j, becomes the token x_j · w_j + b_j in R^D, with a vector w_j and a bias b_j of
its own (the FT-Transformer of Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data"). The
tokens carry their feature's identity in w_j and b_j, so no positional encoding is added: a table's columns have no
order. Bidirectional blocks of ``labkit.gpt`` mix the tokens, and a linear head reads the [CLS] token.

Shapes: B rows (batch), P features, T = P + 1 tokens ([CLS] first), D model width, C classes.

>>> config = GPTConfig.ci()                                     # D = 32, 2 blocks of 2 heads
>>> model = TableTransformer(config, num_features=30, num_classes=2, rngs=nnx.Rngs(0))
>>> model(jnp.zeros((4, 30))).shape                             # logits (B, C)
(4, 2)
>>> train_x, test_x = np.random.default_rng(0).normal(5.0, 2.0, size=(2, 100, 30))   # (rows, P) each
>>> mean, std = fit_standardization(train_x)                    # on the training split only
>>> x = standardize(test_x, mean, std)
>>> bool(abs(x.mean()) < 0.1 and abs(x.std() - 1.0) < 0.1)
True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from labkit._checks import check_int
from labkit.gpt import Block, make_norm
from labkit.gpt_config import GPTConfig
from labkit.positions import POSITION_SCHEMES

__all__ = ["FeatureTokenizer", "TableTransformer", "fit_standardization", "standardize"]


def _check_rows(x: object, num_features: int, name: str = "x") -> None:
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2 or shape[1] != num_features:
        raise ValueError(f"{name} must have shape (B, P) with P = {num_features} features; got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows; expected at least one")


class FeatureTokenizer(nnx.Module):
    """Rows (B, P) -> tokens (B, P + 1, D): token 0 is the learned [CLS] vector, token j + 1 is x_j · w_j + b_j.

    As in the FT-Transformer, w, b and [CLS] start uniform in [-1/sqrt(D), 1/sqrt(D)].

    >>> tokenizer = FeatureTokenizer(3, 8, rngs=nnx.Rngs(0))
    >>> tokenizer(jnp.ones((2, 3))).shape
    (2, 4, 8)
    """

    def __init__(self, num_features: int, width: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.num_features = check_int("num_features", num_features)
        self.dtype = dtype  # of the tokens it returns; the parameters are float32
        width = check_int("width", width)
        init = nnx.initializers.uniform(2 / width**0.5)  # uniform in [0, 2/sqrt(D)), shifted below
        shift = 1 / width**0.5
        self.weight = nnx.Param(init(rngs.params(), (num_features, width)) - shift)  # (P, D): w_j per feature
        self.bias = nnx.Param(init(rngs.params(), (num_features, width)) - shift)  # (P, D): b_j per feature
        self.cls = nnx.Param(init(rngs.params(), (1, width)) - shift)  # (1, D): the [CLS] token

    def __call__(self, x: Float[Array, "B P"]) -> Float[Array, "B T D"]:
        _check_rows(x, self.num_features)
        x = jnp.asarray(x, jnp.float32)
        features = x[:, :, None] * self.weight[...] + self.bias[...]  # (B, P, 1) * (P, D) -> (B, P, D)
        cls = jnp.broadcast_to(self.cls[...], (x.shape[0], 1, self.cls.shape[-1]))  # (B, 1, D)
        return jnp.concatenate([cls, features], axis=1).astype(self.dtype)  # (B, P + 1, D)


class TableTransformer(nnx.Module):
    """Feature tokens -> ``config.num_layers`` bidirectional ``labkit.gpt.Block``s -> final norm -> head on [CLS].

    Of ``config`` it uses the block settings (width, heads, feed-forward, norm, dropout, attention); ``vocab_size``
    and ``max_len`` do not apply. Positions applied in attention (rotary, ALiBi) are refused: they would give the
    columns an order.
    """

    def __init__(self, config: GPTConfig, *, num_features: int, num_classes: int, rngs: nnx.Rngs):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig; got {type(config).__name__}")
        if POSITION_SCHEMES[config.positions].in_attention:
            raise ValueError(f"config.positions is {config.positions!r}, which orders the features inside attention; a "
                             "table's columns have no order, so use a config with positions='learned' or "
                             "'sinusoidal' (neither is added)")
        self.config = config
        self.num_features = check_int("num_features", num_features)
        self.num_classes = check_int("num_classes", num_classes)
        self.tokenizer = FeatureTokenizer(num_features, config.width, dtype=config.dtype, rngs=rngs)
        self.blocks = nnx.List([Block(config, causal=False, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = make_norm(config, rngs=rngs)
        self.head = nnx.Linear(config.width, num_classes, rngs=rngs)

    def tokens(self, x: Float[Array, "B P"]) -> Float[Array, "B T D"]:
        """The final-normed residual stream (B, P + 1, D), [CLS] first."""
        _check_rows(x, self.num_features)
        h = self.tokenizer(x)  # (B, T, D)
        for block in self.blocks:
            h = block(h)  # (B, T, D)
        return self.final_norm(h)

    def __call__(self, x: Float[Array, "B P"]) -> Float[Array, "B C"]:
        """Class logits (B, C) in float32, read from the [CLS] token."""
        return self.head(self.tokens(x)[:, 0]).astype(jnp.float32)  # (B, D) -> (B, C)

    def attention_maps(self, x: Float[Array, "B P"]) -> list[Float[Array, "B N T T"]]:
        """Each block's attention weights (row = query token, column = key token; token 0 is [CLS])."""
        _check_rows(x, self.num_features)
        h = self.tokenizer(x)  # (B, T, D)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.attn_norm(h), causal=False))  # (B, N, T, T)
            h = block(h)
        return maps


def fit_standardization(x: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (P,) of the training rows ``x`` (B, P); a constant feature gets std 1.

    Fit on the training split only: statistics of the validation or test rows would leak them into training.

    >>> fit_standardization(np.array([[1.0, 5.0], [3.0, 5.0]]))
    (array([2., 5.]), array([1., 1.]))
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, P); got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x is empty: shape {x.shape}; expected at least one row and one feature")
    if not np.isfinite(x).all():
        raise ValueError(f"x must be finite; it has {int((~np.isfinite(x)).sum())} NaN or infinite values")
    mean, std = x.mean(axis=0), x.std(axis=0)  # (P,), (P,)
    return mean, np.where(std > 0, std, 1.0)


def standardize(x: np.ndarray | jax.Array, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std, feature by feature, as float32; ``mean`` and ``std`` from ``fit_standardization``."""
    mean, std = np.asarray(mean), np.asarray(std)
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"mean and std must both have shape (P,); got {mean.shape} and {std.shape}")
    if not (std > 0).all():
        raise ValueError("std must be positive for every feature (fit_standardization replaces zeros by 1)")
    x = np.asarray(x, dtype=np.float64)
    _check_rows(x, len(mean))
    return ((x - mean) / std).astype(np.float32)
