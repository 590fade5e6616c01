"""A task head on a pretrained GPT: pool the final hidden states of a sequence into one vector, then a linear layer.

Sequences of different lengths are padded at the end with ``pad_id``; the classifier finds each row's length from
it, masks the padding out of attention (``labkit.masks.padding_mask``) and out of the pooling.

>>> from labkit.gpt import GPT, GPTConfig
>>> backbone = GPT(GPTConfig.ci(), rngs=nnx.Rngs(0))
>>> model = Classifier(backbone, num_classes=5, pad_id=0, rngs=nnx.Rngs(1))
>>> tokens = jnp.array([[7, 8, 9, 0, 0], [5, 6, 7, 8, 9]])    # row 0 has 3 real tokens, then padding
>>> model(tokens).shape                                        # logits (B, C)
(2, 5)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from labkit.gpt import GPT
from labkit.masks import padding_mask
from labkit.nn import accuracy, cross_entropy

__all__ = ["POOLINGS", "Classifier", "balanced_accuracy", "classifier_accuracy", "classifier_loss", "lengths_of",
           "pool", "predict"]

POOLINGS = ("last", "mean")


def lengths_of(tokens: Int[Array, "B T"], pad_id: int) -> Int[Array, " B"]:
    """The number of real tokens in each row: the tokens before the padding (which must sit at the end).

    >>> lengths_of(jnp.array([[3, 4, 0, 0], [3, 4, 5, 6]]), pad_id=0).tolist()
    [2, 4]
    """
    return jnp.sum(tokens != pad_id, axis=1).astype(jnp.int32)  # (B,)


def pool(hidden: Float[Array, "B T D"], lengths: Int[Array, " B"], how: str = "last") -> Float[Array, "B D"]:
    """One vector per sequence: the hidden state of its last real token, or the mean over its real tokens.

    In a causal model only the last token has seen the whole sequence, so ``"last"`` is GPT's choice
    (Radford et al. 2018); ``"mean"`` averages every position's view of its prefix.

    >>> h = jnp.arange(12.0).reshape(1, 4, 3)                 # (B, T, D) = (1, 4, 3)
    >>> pool(h, jnp.array([2]), "last").tolist(), pool(h, jnp.array([2]), "mean").tolist()
    ([[3.0, 4.0, 5.0]], [[1.5, 2.5, 3.5]])
    """
    if getattr(hidden, "ndim", None) != 3:
        raise ValueError(f"hidden must have shape (B, T, D); got {tuple(getattr(hidden, 'shape', ()))}")
    if getattr(lengths, "shape", None) != hidden.shape[:1]:
        raise ValueError(f"lengths must have shape ({hidden.shape[0]},) (one per row of hidden); "
                         f"got {tuple(getattr(lengths, 'shape', ()))}")
    if how not in POOLINGS:
        raise ValueError(f"how must be one of {', '.join(POOLINGS)}; got {how!r}")
    if how == "last":
        last = jnp.clip(lengths - 1, 0, hidden.shape[1] - 1)  # (B,)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # (B, D)
    real = (jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)  # (B, T)
    total = jnp.einsum("btd,bt->bd", hidden, real)  # (B, D)
    return total / jnp.maximum(lengths, 1)[:, None].astype(hidden.dtype)


class Classifier(nnx.Module):
    """A GPT backbone, a pooling of its final hidden states, and a linear head to ``num_classes`` logits.

    The head is the only new part; ``labkit.finetune.trainable`` chooses what else trains (nothing: a linear
    probe; everything: full fine-tuning; LoRA adapters).
    """

    def __init__(self, backbone: GPT, num_classes: int, *, pad_id: int, pooling: str = "last", rngs: nnx.Rngs):
        if not isinstance(backbone, GPT):
            raise TypeError(f"backbone must be a labkit.gpt.GPT; got {type(backbone).__name__}")
        if type(num_classes) is not int or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
        if type(pad_id) is not int or not 0 <= pad_id < backbone.config.vocab_size:
            raise ValueError(f"pad_id must be an id in [0, {backbone.config.vocab_size - 1}]; got {pad_id!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.backbone = backbone
        self.pad_id, self.pooling, self.num_classes = pad_id, pooling, num_classes
        self.head = nnx.Linear(backbone.config.width, num_classes, kernel_init=nnx.initializers.zeros_init(),
                               rngs=rngs)

    def features(self, tokens: Int[Array, "B T"]) -> Float[Array, "B D"]:
        """The pooled representation (B, D) the head reads, in float32."""
        lengths = lengths_of(tokens, self.pad_id)  # (B,)
        _check_lengths(lengths)
        # Right padding under a causal mask cannot reach a real token anyway; the padding mask states it explicitly.
        hidden = self.backbone.hidden(tokens, mask=padding_mask(lengths, tokens.shape[1]))  # (B, T, D)
        return pool(hidden.astype(jnp.float32), lengths, self.pooling)  # (B, D)

    def __call__(self, tokens: Int[Array, "B T"]) -> Float[Array, "B C"]:
        return self.head(self.features(tokens))  # (B, C)


def _check_lengths(lengths: Array) -> None:
    if isinstance(lengths, jax.core.Tracer) or not lengths.size:  # values can only be checked outside jit
        return
    if int(np.min(np.asarray(lengths))) < 1:
        raise ValueError("tokens has a row made only of pad_id; every row needs at least one real token")


def classifier_loss(model: Classifier, x: Int[Array, "B T"], y: Int[Array, " B"]) -> Float[Array, ""]:
    """Mean cross-entropy of the class labels ``y``: ``fit``'s ``loss_fn``."""
    return cross_entropy(model(x), y)


def classifier_accuracy(model: Classifier, x: Int[Array, "B T"], y: Int[Array, " B"]) -> Float[Array, ""]:
    """Fraction of rows classified correctly: a metric for ``evaluate``."""
    return accuracy(model(x), y)


@nnx.jit
def _argmax(model: nnx.Module, x: Int[Array, "B T"]) -> Int[Array, " B"]:
    return jnp.argmax(model(x), axis=-1)


def predict(model: nnx.Module, x: Int[np.ndarray, "n T"], *, batch_size: int = 256) -> np.ndarray:
    """The predicted class (n,) of every row of ``x``, in batches of ``batch_size`` (call ``model.eval()`` first)."""
    x = np.asarray(x)
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"x must hold at least one row; got shape {x.shape}")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    return np.concatenate([np.asarray(_argmax(model, jnp.asarray(x[i : i + batch_size])))
                           for i in range(0, len(x), batch_size)])


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """The mean over classes of the share of that class's examples predicted correctly (the mean recall).

    Unlike accuracy, it does not reward predicting the commonest class: a model that predicts one class for every
    example scores exactly 1 / C, however the test set is balanced. Classes absent from ``y_true`` are skipped.

    >>> balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), 2)   # accuracy 0.75, but only class 0 right
    0.5
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be 1-D arrays of the same non-zero length; got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    if type(num_classes) is not int or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} must hold int labels in [0, {num_classes - 1}]; got {y.dtype} "
                             f"from {y.min()} to {y.max()}")
    present = [c for c in range(num_classes) if (y_true == c).any()]
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in present]))
