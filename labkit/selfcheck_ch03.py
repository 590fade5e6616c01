"""Self-checks of chapter 3's assignment (causal multi-head attention), and the reference parts it is graded on.

Each check runs the student's part with the other parts it calls (``attention_weights`` inside ``attention``, ...)
replaced by ``ch03_references()``, labkit's versions, so that one mistake costs only the part that makes it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from labkit import attention as _attention
from labkit.grading import on_references
from labkit.masks import causal_mask as _causal_mask
from labkit.selfcheck_core import _array, _compare, _fail, _matches, check_rules

__all__ = ["CH03_FORBIDDEN", "attention_reference", "attention_weights_reference", "causal_mask_reference",
           "ch03_references", "check_attention", "check_attention_weights", "check_causal_mask",
           "check_causal_self_attention", "self_attention_params", "self_attention_reference"]

CH03_FORBIDDEN = ("softmax", "log_softmax", "dot_product_attention", "scaled_dot_product_attention",
                  "MultiHeadAttention", "labkit", "selfcheck")
_WHY = "building it from array operations is the assignment (no jax.nn.softmax, jax.nn.dot_product_attention or labkit)"
PARTS = ("causal_mask", "attention_weights", "attention", "causal_self_attention")
# Bound now, so that code run later that rebinds labkit's functions does not change the references.
_weights_of, _attend = _attention.attention_weights, _attention.dot_product_attention


def _full(mask: Any, q: Any, k: Any) -> Any:
    """A mask that broadcasts to (B, N, T, S), at full size: labkit's functions want four axes."""
    return None if mask is None else jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))


def causal_mask_reference(T: int) -> jax.Array:
    """Boolean (T, T), True at [i, j] when j <= i."""
    return _causal_mask(int(T))[0, 0]


def attention_weights_reference(q: Any, k: Any, mask: Any = None) -> jax.Array:
    """labkit's softmax(q kᵀ / √H) over keys: (B, T, N, H), (B, S, N, H) -> (B, N, T, S)."""
    return _weights_of(jnp.asarray(q), jnp.asarray(k), mask=_full(mask, q, k))


def attention_reference(q: Any, k: Any, v: Any, mask: Any = None) -> jax.Array:
    """labkit's scaled dot-product attention: (B, T, N, H) out."""
    return _attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=_full(mask, q, k))


def ch03_references() -> dict[str, Callable]:
    """The parts other parts call, as labkit computes them: what a part's test gives it in place of the student's."""
    return {"causal_mask": causal_mask_reference, "attention_weights": attention_weights_reference,
            "attention": attention_reference}


def _alone(check: str, fn: Callable, part: str) -> Any:
    check_rules(check, fn, CH03_FORBIDDEN, _WHY, parts=PARTS)
    return on_references(fn, ch03_references(), keep=part)


def check_causal_mask(causal_mask: Callable) -> str:
    """``causal_mask(T)`` must be a boolean (T, T) array, True where query i may attend key j, that is j <= i."""
    name = "check_causal_mask"
    for t in (1, 2, 5):
        with _alone(name, causal_mask, "causal_mask"):
            mask = _array(name, f"causal_mask({t})", causal_mask(t), (t, t), layout="(T, T)")
        if mask.dtype != np.bool_:
            _fail(name, f"the mask must be boolean (True = may attend); got dtype {mask.dtype}")
        want = np.asarray(causal_mask_reference(t))
        for i, j in zip(*np.nonzero(mask != want), strict=True):
            if j > i:
                _fail(name, f"future positions are attended: query {i} may attend key {j} (T={t}); True must mean "
                            f"'may attend', only for keys j <= i")
            _fail(name, f"query {i} may not attend key {j} (T={t}), which is {'itself' if i == j else 'in its past'}")
    return f"{name}: 3 sizes pass"


def _qkv(rng: np.random.Generator, b: int, t: int, s: int, n: int, h: int, scale: float = 1.0):
    q = (scale * rng.normal(size=(b, t, n, h))).astype(np.float32)
    k, v = ((scale * rng.normal(size=(b, s, n, h))).astype(np.float32) for _ in range(2))
    return q, k, v


def _visible_cases(seed: int) -> list[tuple[str, tuple, Any]]:
    """(what, (q, k, v), mask) for the kinds of input the hidden tests grade: no mask, causal masks of (1, 1, T, T)
    and (T, T), padding masks, a random mask, more keys than queries, and scores too large for a plain exp."""
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, 2, 5, 5, 2, 4)
    causal = np.asarray(_causal_mask(5))
    padding = np.arange(5)[None, None, None, :] < np.array([3, 5])[:, None, None, None]  # (B, 1, 1, S)
    random = (rng.random((2, 2, 5, 5)) < 0.5) | np.eye(5, dtype=bool)
    cross = _qkv(rng, 2, 3, 6, 2, 4)
    cross_padding = np.arange(6)[None, None, None, :] < np.array([2, 6])[:, None, None, None]
    return [("no mask", (q, k, v), None), ("a causal mask (1, 1, T, T)", (q, k, v), causal),
            ("a causal mask (T, T)", (q, k, v), causal[0, 0]),
            ("a padding mask (B, 1, 1, S): batch 0 has 3 keys", (q, k, v), padding),
            ("a random (B, N, T, S) mask", (q, k, v), random),
            ("T=3 queries, S=6 keys and a padding mask", cross, cross_padding),
            ("scores in the hundreds (no mask)", _qkv(rng, 2, 5, 5, 2, 4, scale=8.0), None)]


def _check_weights(check: str, what: str, w: np.ndarray, mask: np.ndarray | None) -> None:
    """Rows of attention weights must be probabilities, and zero where the mask forbids."""
    if not np.all(np.isfinite(w)):
        _fail(check, f"with {what}, some weights are inf or nan: subtract each row's maximum score before exp(), "
                     f"so that large scores cannot overflow")
    sums = w.sum(axis=-1)  # (B, N, T)
    if not np.allclose(sums, 1.0, atol=1e-4):
        b, n, i = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
        _fail(check, f"with {what}, row {i} (batch {b}, head {n}) does not sum to 1 (it sums to {sums[b, n, i]:.4g}): "
                     f"take the softmax over the keys, the last axis")
    if (w < -1e-6).any():
        _fail(check, "some weights are negative; softmax weights are probabilities")
    if mask is not None:
        forbidden = np.broadcast_to(~np.asarray(mask), w.shape) & (w > 1e-6)
        if forbidden.any():
            b, n, i, j = (int(s) for s in np.argwhere(forbidden)[0])
            kind = "future positions are attended" if j > i and "causal" in what else "masked keys are attended"
            _fail(check, f"with {what}, {kind}: query {i} (batch {b}, head {n}) gives weight {w[b, n, i, j]:.3g} to "
                         f"key {j}, where the mask is False. The mask may have any shape that broadcasts to "
                         f"(B, N, T, S); set the scores where it is False to a large negative number before the "
                         f"softmax")


def check_attention_weights(attention_weights: Callable) -> str:
    """``attention_weights(q, k, mask=None)``: softmax(q kᵀ / √H) over keys, (B, T, N, H) -> (B, N, T, S)."""
    name = "check_attention_weights"
    for what, (q, k, _), mask in _visible_cases(4):
        (b, t, n, h), s = q.shape, k.shape[1]
        with _alone(name, attention_weights, "attention_weights"):
            got = attention_weights(q.copy(), k.copy(), mask=None if mask is None else mask.copy())
        w = _array(name, f"the weights with {what}", got, (b, n, t, s), layout="(B, N, T, S), heads before queries",
                   hint="")
        _check_weights(name, what, w, mask)
        full = _full(mask, q, k)
        ref = np.asarray(_weights_of(q, k, mask=full))
        likely = [(np.asarray(_weights_of(q, k, mask=full, scale=1.0)),
                   f"they are softmax(q kᵀ) without the scale: divide the scores by √H = {h ** 0.5:g}"),
                  (np.asarray(_weights_of(q, k, mask=full, scale=1.0 / h)),
                   f"the scores were divided by H = {h}; divide by √H = {h ** 0.5:g}")]
        if t == s:
            likely.append((ref.swapaxes(-1, -2),
                           "they look transposed: row i must hold query i's weights over the keys"))
        _compare(name, f"weights with {what}", w, ref, likely=likely)
    return f"{name}: shapes, rows, masks (none, causal, padding, random), T != S and large scores pass"


def check_attention(attention: Callable) -> str:
    """``attention(q, k, v, mask=None)``: each query's weighted average of the values, (B, T, N, H)."""
    name = "check_attention"
    for what, (q, k, v), mask in _visible_cases(5):
        with _alone(name, attention, "attention"):
            got = attention(q.copy(), k.copy(), v.copy(), mask=None if mask is None else mask.copy())
        out = _array(name, f"the output with {what}", got, q.shape, layout="(B, T, N, H), the layout of q")
        ref = np.asarray(attention_reference(q, k, v, mask))
        weights = np.asarray(attention_weights_reference(q, k, mask))  # (B, N, T, S)
        likely = [(np.asarray(attention_reference(q, k, v)), "the mask was ignored: pass it on to attention_weights")]
        if q.shape[1] == k.shape[1]:
            likely.append((np.einsum("bnst,bsnh->btnh", weights, v), "the weights were used transposed: in "
                                                                      "w[b, n, t, s], t is the query and s the key"))
        _compare(name, f"output with {what}", out, ref, likely=likely)
    return f"{name}: output with and without masks passes"


def self_attention_params(rng: np.random.Generator, width: int) -> dict[str, np.ndarray]:
    """Random float32 projections for ``causal_self_attention``: W* of shape (D, D), b* of shape (D,)."""
    params = {}
    for name in ("q", "k", "v", "o"):
        params[f"W{name}"] = (rng.normal(size=(width, width)) / width**0.5).astype(np.float32)
        params[f"b{name}"] = (0.1 * rng.normal(size=width)).astype(np.float32)
    return params


@functools.partial(jax.jit, static_argnames=("num_heads", "causal"))
def _self_attention(x: jax.Array, params: dict[str, jax.Array], num_heads: int, causal: bool) -> jax.Array:
    # Built inside jit, so that the module's random initialization (overwritten at once) compiles away.
    module = _attention.MultiHeadAttention(x.shape[-1], num_heads, rngs=nnx.Rngs(0))
    for layer, key in ((module.query, "q"), (module.key, "k"), (module.value, "v"), (module.out, "o")):
        layer.kernel[...] = params[f"W{key}"]
        layer.bias[...] = params[f"b{key}"]
    return module(x, causal=causal)


def self_attention_reference(x: Any, params: Mapping[str, Any], num_heads: int, *, causal: bool = True) -> np.ndarray:
    """labkit's MultiHeadAttention with these projections: head n reads features n*H .. (n+1)*H - 1."""
    params = {key: jnp.asarray(value) for key, value in params.items()}
    return np.asarray(_self_attention(jnp.asarray(x), params, num_heads, causal))


def self_attention_variant(x: np.ndarray, params: Mapping[str, np.ndarray], num_heads: int, *,
                           split: str = "contiguous", causal: bool = True, project_out: bool = True,
                           transposed: bool = False) -> np.ndarray:
    """Multi-head self-attention in NumPy (float64), right or with one of the common mistakes, for the hints.

    ``split``: "contiguous" (head n takes features n*H to (n+1)*H - 1, right), "interleaved" (head n takes features
    n, n + N, ...) or "direct" (a reshape straight to (B, N, T, H), which mixes positions and heads).
    """
    x = np.asarray(x, np.float64)
    b, t, d = x.shape
    n, h = num_heads, d // num_heads
    p = {key: np.asarray(value, np.float64) for key, value in params.items()}

    def project(y: np.ndarray, key: str) -> np.ndarray:
        return y @ (p[f"W{key}"].T if transposed else p[f"W{key}"]) + p[f"b{key}"]

    split_heads = {"contiguous": lambda y: y.reshape(b, t, n, h).transpose(0, 2, 1, 3),
                   "interleaved": lambda y: y.reshape(b, t, h, n).transpose(0, 3, 1, 2),
                   "direct": lambda y: y.reshape(b, n, t, h)}[split]  # (B, N, T, H)
    merge_heads = {"contiguous": lambda y: y.transpose(0, 2, 1, 3).reshape(b, t, d),
                   "interleaved": lambda y: y.transpose(0, 2, 3, 1).reshape(b, t, d),
                   "direct": lambda y: y.reshape(b, t, d)}[split]
    q, k, v = (split_heads(project(x, key)) for key in "qkv")
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(h)  # (B, N, T, T)
    if causal:
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = merge_heads((weights / weights.sum(axis=-1, keepdims=True)) @ v)  # (B, T, D)
    return project(out, "o") if project_out else out


def _self_attention_likely(x: np.ndarray, params: dict, n: int) -> list[tuple[np.ndarray, str]]:
    d = x.shape[-1]
    return [
        (self_attention_variant(x, params, n, split="direct"),
         "the heads were made by a reshape straight to (B, N, T, H), which mixes positions into heads: reshape to "
         "(B, T, N, H) first, then attend (or move the axes with transpose, not reshape)"),
        (self_attention_variant(x, params, n, split="interleaved"),
         f"the heads are interleaved (head 0 takes features 0, {n}, {2 * n}, ...): head n must take the contiguous "
         f"features n*H to (n+1)*H - 1, that is a reshape of the last axis to (N, H)"),
        (self_attention_variant(x, params, n, project_out=False),
         "the output projection is missing: apply Wo and bo to the merged heads"),
        (self_attention_variant(x, params, n, transposed=True),
         "the projection matrices are used transposed: the layer computes x @ W + b with W of shape (D_in, D_out); "
         "check the subscripts of your einsum"),
        (self_attention_variant(x, params, n, causal=False),
         "the causal mask is missing: every position attends to later ones"),
        (self_attention_reference(x, params, 1),
         f"it matches one head of width D = {d}: split the features into N = {n} heads of width H = D / N")]


def check_causal_self_attention(causal_self_attention: Callable) -> str:
    """``causal_self_attention(x, params, num_heads)``: project, split heads, causal attention, merge, project."""
    name = "check_causal_self_attention"
    for seed, (b, t, d, n) in ((6, (2, 6, 8, 2)), (7, (1, 5, 12, 3))):
        rng = np.random.default_rng(seed)
        x, params = rng.normal(size=(b, t, d)).astype(np.float32), self_attention_params(rng, d)
        with _alone(name, causal_self_attention, "causal_self_attention"):
            out = _array(name, "the output", causal_self_attention(x.copy(), dict(params), n), (b, t, d),
                         layout="(B, T, D), the shape of x")
            changed = x.copy()
            changed[:, -1] += 1.0
            later = _array(name, "the output", causal_self_attention(changed, dict(params), n), (b, t, d))
        ref = self_attention_reference(x, params, n)
        if not _matches(out, ref, 1e-4, 1e-5):
            for candidate, hint in _self_attention_likely(x, params, n):
                if _matches(out, candidate, 1e-4, 1e-5):
                    _fail(name, f"output (D={d}, N={n}): {hint}")
        leak = np.abs(later[:, :-1] - out[:, :-1]).max(axis=(0, 2))  # (T-1,)
        if (leak > 1e-5).any():
            _fail(name, f"future positions are attended: the output at position {int(np.argmax(leak > 1e-5))} "
                        f"changes when the input at position {t - 1} changes")
        _compare(name, f"output (D={d}, N={n})", out, ref, rtol=1e-4, atol=1e-5)
    return f"{name}: causality and values pass"
