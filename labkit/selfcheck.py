"""Self-checks for the graded assignments in ``course/``: give one your function, and it names the first thing wrong.

Each check runs your function on small inputs, compares it with labkit's own implementation and, at the first
difference, raises ``SelfCheckFailed`` with a message that says what is wrong and, where it can tell, why:

>>> check_causal_mask(lambda t: np.tril(np.ones((t, t), dtype=bool)))
'check_causal_mask: 3 sizes pass'
>>> check_causal_mask(lambda t: np.ones((t, t), dtype=bool))
Traceback (most recent call last):
labkit.selfcheck.SelfCheckFailed: check_causal_mask: future positions are attended: query 0 may attend key 1 (T=2)...

``sealed_grader`` is for the hidden tests that grade the assignments (see ``course/``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from labkit import attention as _attention
from labkit.masks import causal_mask as _causal_mask
from labkit.nn import cross_entropy
from labkit.grading import sealed_grader
from labkit.selfcheck_ch04 import (check_lr_schedule, check_merge, check_pair_counts, check_train_bpe,
                                    schedule_reference)
from labkit.selfcheck_core import SelfCheckFailed, _array, _compare, _fail
from labkit.selfcheck_lora import (check_lora_forward, check_lora_merge, check_lora_param_count, check_lora_step,
                                   lora_case, lora_forward_reference, lora_merge_reference,
                                   lora_param_count_reference, lora_step_reference)

__all__ = [
    "SelfCheckFailed",
    "check_attention",
    "check_attention_weights",
    "check_backward",
    "check_causal_mask",
    "check_causal_self_attention",
    "check_forward",
    "check_lora_forward",
    "check_lora_merge",
    "check_lora_param_count",
    "check_lora_step",
    "check_lr_schedule",
    "check_merge",
    "check_pair_counts",
    "check_softmax_cross_entropy",
    "check_train",
    "check_train_bpe",
    "gradient_descent_reference",
    "lora_case",
    "lora_forward_reference",
    "lora_merge_reference",
    "lora_param_count_reference",
    "lora_step_reference",
    "schedule_reference",
    "sealed_grader",
    "self_attention_params",
    "self_attention_reference",
    "softmax_cross_entropy_reference",
    "two_layer_case",
    "two_layer_reference",
]


# ---- chapter 2: a two-layer network, by hand ---------------------------------------------------------------------


def two_layer_case(rng: np.random.Generator, *, batch: int = 6, inputs: int = 5, hidden: int = 4,
                   classes: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Random float64 ``params`` (W1 (D, F), b1 (F,), W2 (F, C), b2 (C,)), inputs x (B, D) and labels y (B,)."""
    params = {"W1": rng.normal(size=(inputs, hidden)), "b1": rng.normal(size=hidden),
              "W2": rng.normal(size=(hidden, classes)), "b2": rng.normal(size=classes)}
    return params, rng.normal(size=(batch, inputs)), rng.integers(0, classes, batch)


def _logits(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]  # (B, C)


@jax.jit
def _two_layer(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> dict[str, Any]:
    a = x @ p["W1"] + p["b1"]  # (B, F)
    z = _logits(p, x)  # (B, C)
    loss, dz = jax.value_and_grad(cross_entropy)(z, y)
    grads = jax.grad(lambda p: cross_entropy(_logits(p, x), y))(p)
    return {"a": a, "h": jnp.tanh(a), "z": z, "loss": loss, "dz": dz, "grads": grads}


_loss_and_grad = jax.jit(jax.value_and_grad(cross_entropy))


def two_layer_reference(params: Mapping[str, Any], x: Any, y: Any) -> dict[str, Any]:
    """a, h, z, the loss, dL/dz and the parameter gradients of the tanh network, by jax.grad in float64."""
    with jax.enable_x64(True):
        p = {name: jnp.asarray(params[name], jnp.float64) for name in ("W1", "b1", "W2", "b2")}
        return jax.tree.map(np.asarray, _two_layer(p, jnp.asarray(x, jnp.float64), jnp.asarray(y)))


def check_forward(forward: Callable) -> str:
    """``forward(params, x)`` must return (a, h, z): a = x W1 + b1, h = tanh(a), z = h W2 + b2."""
    name = "check_forward"
    params, x, y = two_layer_case(np.random.default_rng(0))
    ref = two_layer_reference(params, x, y)
    out = forward({k: v.copy() for k, v in params.items()}, x.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        _fail(name, f"forward must return a tuple (a, h, z); got {type(out).__name__}")
    a, h, z = (_array(name, n, v, ref[n].shape) for n, v in zip("ahz", out))
    _compare(name, "a", a, ref["a"], likely=[(x @ params["W1"], "it lacks the bias b1 (a = x @ W1 + b1)")])
    _compare(name, "h", h, ref["h"], likely=[(np.maximum(a, 0), "that is relu(a); this network uses tanh(a)")])
    _compare(name, "z", z, ref["z"], likely=[(h @ params["W2"], "it lacks the bias b2 (z = h @ W2 + b2)"),
                                            (np.tanh(ref["z"]), "the output layer has no activation")])
    if a.dtype != np.float64:
        _fail(name, f"float64 inputs must give float64 outputs (NumPy keeps the dtype); got {a.dtype}")
    return f"{name}: a, h and z pass"


def softmax_cross_entropy_reference(z: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """labkit.nn.cross_entropy of logits z (B, C) and labels y (B,), and its gradient dL/dz, by jax.grad in float64."""
    with jax.enable_x64(True):
        loss, dz = _loss_and_grad(jnp.asarray(z, jnp.float64), jnp.asarray(y))
        return np.asarray(loss), np.asarray(dz)


def gradient_descent_reference(params: Mapping[str, Any], x: Any, y: Any, *, learning_rate: float,
                               steps: int) -> dict[str, np.ndarray]:
    """``steps`` full-batch steps of params - learning_rate * gradient, gradients from ``two_layer_reference``."""
    params = {key: np.asarray(value, np.float64) for key, value in params.items()}
    for _ in range(steps):
        grads = two_layer_reference(params, x, y)["grads"]
        params = {key: params[key] - learning_rate * grads[key] for key in params}
    return params


def check_softmax_cross_entropy(softmax_cross_entropy: Callable) -> str:
    """``softmax_cross_entropy(z, y)`` must return (mean loss, dL/dz) with dL/dz = (softmax(z) - onehot(y)) / B."""
    name = "check_softmax_cross_entropy"
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    loss_ref, dz_ref = softmax_cross_entropy_reference(z, y)
    out = softmax_cross_entropy(z.copy(), y.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        _fail(name, f"softmax_cross_entropy must return a tuple (loss, dz); got {type(out).__name__}")
    loss, dz = _array(name, "loss", out[0], ()), _array(name, "dz", out[1], z.shape)
    _compare(name, "loss", loss, loss_ref, likely=[(loss_ref * len(y), "it is the sum over the batch; take the "
                                                                          "mean (divide by B)")])
    sums = dz.sum(axis=-1)
    if not np.allclose(sums, 0, atol=1e-6):
        row = int(np.argmax(np.abs(sums)))
        _fail(name, f"row {row} of dz sums to {sums[row]:.4g}, not 0; softmax(z) - onehot(y) sums to 0 in every row")
    _compare(name, "dz", dz, dz_ref, likely=[(dz_ref * len(y), "it is B times too large: the loss is a mean, "
                                                               "so divide by the batch size B")])
    big = softmax_cross_entropy(z * 1000.0, y)
    if not np.all(np.isfinite(np.asarray(big[0]))) or not np.all(np.isfinite(np.asarray(big[1]))):
        _fail(name, "logits of size 1000 give inf or nan: subtract each row's maximum before exp() (the log-sum-exp "
                    "trick of chapter 2)")
    return f"{name}: loss, dz and large logits pass"


_GRAD_HINTS = {"W1": "dW1 = x.T @ da, with da = dh * (1 - h**2)", "b1": "db1 sums da over the batch (axis 0)",
               "W2": "dW2 = h.T @ dz", "b2": "db2 sums dz over the batch (axis 0)"}


def check_backward(backward: Callable) -> str:
    """``backward(params, x, y)`` must return the gradients of the mean cross-entropy, one per parameter."""
    name = "check_backward"
    params, x, y = two_layer_case(np.random.default_rng(2))
    ref = two_layer_reference(params, x, y)["grads"]
    grads = backward({k: v.copy() for k, v in params.items()}, x.copy(), y.copy())
    if not isinstance(grads, Mapping) or set(grads) != set(ref):
        got = sorted(grads) if isinstance(grads, Mapping) else type(grads).__name__
        _fail(name, f"backward must return a dict with the keys ['W1', 'W2', 'b1', 'b2']; got {got}")
    for key in ("b2", "W2", "b1", "W1"):  # the order backpropagation computes them: a mistake shows up first here
        g = _array(name, f"grads[{key!r}]", grads[key], params[key].shape,
                   hint=f" (a gradient has the shape of its parameter{': transpose it' if key[0] == 'W' else ''})")
        if g.dtype != np.float64:
            _fail(name, f"grads[{key!r}] has dtype {g.dtype}; float64 inputs must give float64 gradients (compute "
                        f"them by hand in NumPy, not with jax.grad)")
        _compare(name, f"grads[{key!r}]", g, ref[key], likely=[(ref[key] * len(y), "it is B times too large: the "
                                                                                   "loss is a mean over the batch")],
                 rtol=1e-6, atol=1e-9, hint=f"; {_GRAD_HINTS[key]}")
    return f"{name}: all four gradients pass"


def check_train(train: Callable) -> str:
    """``train(params, x, y, learning_rate=, steps=)`` must take ``steps`` steps of params - rate * gradient."""
    name = "check_train"
    params, x, y = two_layer_case(np.random.default_rng(3))
    expected = gradient_descent_reference(params, x, y, learning_rate=0.1, steps=3)
    before = {k: v.copy() for k, v in params.items()}
    out = train(params, x, y, learning_rate=0.1, steps=3)
    if not isinstance(out, Mapping) or set(out) != set(params):
        _fail(name, f"train must return the new params, a dict with the keys of params; got {type(out).__name__}")
    if any(not np.array_equal(before[k], params[k]) for k in params):
        _fail(name, "train changed the params it was given; build new arrays (p - rate * g), do not update in place")
    for key in params:
        _compare(name, f"params[{key!r}] after 3 steps", _array(name, key, out[key], params[key].shape),
                 expected[key], rtol=1e-6, atol=1e-9)
    return f"{name}: three steps of gradient descent pass"


# ---- chapter 3: causal multi-head attention ----------------------------------------------------------------------


def check_causal_mask(causal_mask: Callable) -> str:
    """``causal_mask(T)`` must be a boolean (T, T) array, True where query i may attend key j, that is j <= i."""
    name = "check_causal_mask"
    for t in (1, 2, 5):
        mask = _array(name, f"causal_mask({t})", causal_mask(t), (t, t))
        if mask.dtype != np.bool_:
            _fail(name, f"the mask must be boolean (True = may attend); got dtype {mask.dtype}")
        want = np.asarray(_causal_mask(t))[0, 0]
        for i, j in zip(*np.nonzero(mask != want)):
            if j > i:
                _fail(name, f"future positions are attended: query {i} may attend key {j} (T={t}); True must mean "
                            f"'may attend', only for keys j <= i")
            _fail(name, f"query {i} may not attend key {j} (T={t}), which is {'itself' if i == j else 'in its past'}")
    return f"{name}: 3 sizes pass"


def _attention_case(seed: int, *, batch: int = 2, length: int = 5, heads: int = 2, width: int = 4):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, width)).astype(np.float32) for _ in range(3))
    return q, k, v, np.asarray(_causal_mask(length))  # mask (1, 1, T, T)


def _check_weights(check: str, w: np.ndarray, mask: np.ndarray | None) -> None:
    """Rows of attention weights must be probabilities, and zero where the mask forbids."""
    sums = w.sum(axis=-1)  # (B, N, T)
    if not np.allclose(sums, 1.0, atol=1e-4):
        b, n, i = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
        _fail(check, f"row {i} (batch {b}, head {n}) does not sum to 1 (it sums to {sums[b, n, i]:.4g}): take the "
                     f"softmax over the keys, the last axis")
    if (w < -1e-6).any():
        _fail(check, "some weights are negative; softmax weights are probabilities")
    if mask is not None:
        forbidden = np.broadcast_to(~mask, w.shape) & (w > 1e-6)
        if forbidden.any():
            b, n, i, j = (int(s) for s in np.argwhere(forbidden)[0])
            kind = "future positions are attended" if j > i else "masked positions are attended"
            _fail(check, f"{kind}: query {i} (batch {b}, head {n}) gives weight {w[b, n, i, j]:.3g} to key {j}; "
                         f"set the scores where the mask is False to a large negative number before the softmax")


def check_attention_weights(attention_weights: Callable) -> str:
    """``attention_weights(q, k, mask=None)``: softmax(q kᵀ / √H) over keys, (B, T, N, H) -> (B, N, T, S)."""
    name = "check_attention_weights"
    q, k, _, causal = _attention_case(4)
    b, t, n, h = q.shape
    expected_shape = (b, n, t, t)
    for mask in (None, causal):
        w = _array(name, "the weights", attention_weights(q.copy(), k.copy(), mask=mask), expected_shape,
                   hint=" = (B, N, T, S): heads before queries, keys last")
        _check_weights(name, w, mask)
        ref = np.asarray(_attention.attention_weights(q, k, mask=mask))
        unscaled = np.asarray(_attention.attention_weights(q, k, mask=mask, scale=1.0))
        by_h = np.asarray(_attention.attention_weights(q, k, mask=mask, scale=1.0 / h))
        _compare(name, "weights" + (" with a causal mask" if mask is not None else ""), w, ref, likely=[
            (unscaled, f"they are softmax(q kᵀ) without the scale: divide the scores by √H = {h ** 0.5:g}"),
            (by_h, f"the scores were divided by H = {h}; divide by √H = {h ** 0.5:g}"),
            (ref.swapaxes(-1, -2), "they look transposed: row i must hold query i's weights over the keys")])
    return f"{name}: shapes, rows, causal mask and values pass"


def check_attention(attention: Callable) -> str:
    """``attention(q, k, v, mask=None)``: each query's weighted average of the values, (B, T, N, H)."""
    name = "check_attention"
    q, k, v, causal = _attention_case(5)
    for mask in (None, causal):
        out = _array(name, "the output", attention(q.copy(), k.copy(), v.copy(), mask=mask), q.shape,
                     hint=" = (B, T, N, H), the layout of q")
        ref = np.asarray(_attention.dot_product_attention(q, k, v, mask=mask))
        unmasked = np.asarray(_attention.dot_product_attention(q, k, v))
        _compare(name, "output" + (" with a causal mask" if mask is not None else ""), out, ref,
                 likely=[(unmasked, "the mask was ignored: future positions are attended")])
    return f"{name}: output with and without a mask passes"


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


def check_causal_self_attention(causal_self_attention: Callable) -> str:
    """``causal_self_attention(x, params, num_heads)``: project, split heads, causal attention, merge, project."""
    name = "check_causal_self_attention"
    rng = np.random.default_rng(6)
    b, t, d, n = 2, 6, 8, 2
    x, params = rng.normal(size=(b, t, d)).astype(np.float32), self_attention_params(rng, d)
    out = _array(name, "the output", causal_self_attention(x.copy(), dict(params), n), (b, t, d),
                 hint=" = (B, T, D), the shape of x")
    changed = x.copy()
    changed[:, -1] += 1.0
    later = _array(name, "the output", causal_self_attention(changed, dict(params), n), (b, t, d))
    leak = np.abs(later[:, :-1] - out[:, :-1]).max(axis=(0, 2))  # (T-1,)
    if (leak > 1e-5).any():
        _fail(name, f"future positions are attended: the output at position {int(np.argmax(leak > 1e-5))} changes "
                    f"when the input at position {t - 1} changes; use the causal mask")
    _compare(name, "output", out, self_attention_reference(x, params, n), rtol=1e-4, atol=1e-5,
             likely=[(self_attention_reference(x, params, 1), f"it matches one head of width D = {d}: split the "
                                                              f"features into N = {n} heads of width H = D / N")])
    return f"{name}: causality and values pass"
