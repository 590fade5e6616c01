"""Self-checks of chapter 2's assignment (backpropagation by hand in NumPy), and the reference parts it is graded on.

Each check runs the student's part with the other parts it calls replaced by ``ch02_references()`` (labkit's
versions), so that a mistake in ``forward`` costs the forward pass's points and not those of ``backward`` too.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from labkit.grading import on_references
from labkit.nn import cross_entropy
from labkit.selfcheck_core import _array, _compare, _fail, check_rules

__all__ = ["CH02_FORBIDDEN", "backward_reference", "ch02_references", "check_backward", "check_forward",
           "check_softmax_cross_entropy", "check_train", "forward_reference", "gradient_descent_reference",
           "softmax_cross_entropy_reference", "two_layer_case", "two_layer_reference"]

# What the answers may not use: the point is to compute the gradients by hand.
CH02_FORBIDDEN = ("grad", "value_and_grad", "vjp", "jacrev", "jacfwd", "labkit", "selfcheck")
_WHY = "this assignment asks for the gradients computed by hand in NumPy (no jax.grad, no labkit)"
PARTS = ("forward", "softmax_cross_entropy", "backward", "train")


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


def _writable(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: np.array(leaf, copy=True), tree)


def two_layer_reference(params: Mapping[str, Any], x: Any, y: Any) -> dict[str, Any]:
    """a, h, z, the loss, dL/dz and the parameter gradients of the tanh network, by jax.grad in float64."""
    with jax.enable_x64(True):
        p = {name: jnp.asarray(params[name], jnp.float64) for name in ("W1", "b1", "W2", "b2")}
        return _writable(_two_layer(p, jnp.asarray(x, jnp.float64), jnp.asarray(y)))


def forward_reference(params: Mapping[str, Any], x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, h, z) of the tanh network, float64 (the labels do not matter for the forward pass)."""
    ref = two_layer_reference(params, x, np.zeros(len(x), np.int64))
    return ref["a"], ref["h"], ref["z"]


def softmax_cross_entropy_reference(z: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """labkit.nn.cross_entropy of logits z (B, C) and labels y (B,), and its gradient dL/dz, by jax.grad in float64."""
    with jax.enable_x64(True):
        loss, dz = _loss_and_grad(jnp.asarray(z, jnp.float64), jnp.asarray(y))
        return np.array(loss), np.array(dz)


def backward_reference(params: Mapping[str, Any], x: Any, y: Any) -> dict[str, np.ndarray]:
    """The gradients of the mean cross-entropy with respect to W1, b1, W2 and b2, by jax.grad in float64."""
    return two_layer_reference(params, x, y)["grads"]


def gradient_descent_reference(params: Mapping[str, Any], x: Any, y: Any, *, learning_rate: float,
                               steps: int) -> dict[str, np.ndarray]:
    """``steps`` full-batch steps of params - learning_rate * gradient, gradients from ``two_layer_reference``."""
    params = {key: np.asarray(value, np.float64) for key, value in params.items()}
    for _ in range(steps):
        grads = backward_reference(params, x, y)
        params = {key: params[key] - learning_rate * grads[key] for key in params}
    return params


def ch02_references() -> dict[str, Callable]:
    """The parts other parts call, as labkit computes them: what a part's test gives it in place of the student's."""
    return {"forward": forward_reference, "softmax_cross_entropy": softmax_cross_entropy_reference,
            "backward": backward_reference}


def _alone(check: str, fn: Callable, part: str) -> Any:
    """``fn``'s rules checked; then a context in which the other parts it calls are labkit's."""
    check_rules(check, fn, CH02_FORBIDDEN, _WHY, parts=PARTS)
    return on_references(fn, ch02_references(), keep=part)


def check_forward(forward: Callable) -> str:
    """``forward(params, x)`` must return (a, h, z): a = x W1 + b1, h = tanh(a), z = h W2 + b2."""
    name = "check_forward"
    params, x, y = two_layer_case(np.random.default_rng(0))
    ref = two_layer_reference(params, x, y)
    with _alone(name, forward, "forward"):
        out = forward({k: v.copy() for k, v in params.items()}, x.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        _fail(name, f"forward must return a tuple (a, h, z); got {type(out).__name__}")
    a, h, z = (_array(name, n, v, ref[n].shape, layout=layout) for n, v, layout in
               zip("ahz", out, ("(B, F)", "(B, F)", "(B, C)"), strict=True))
    _compare(name, "a", a, ref["a"], likely=[(x @ params["W1"], "it lacks the bias b1 (a = x @ W1 + b1)")])
    _compare(name, "h", h, ref["h"], likely=[(np.maximum(a, 0), "that is relu(a); this network uses tanh(a)"),
                                            (a, "h equals a: apply the activation tanh")])
    _compare(name, "z", z, ref["z"], likely=[(h @ params["W2"], "it lacks the bias b2 (z = h @ W2 + b2)"),
                                            (np.tanh(ref["z"]), "the output layer has no activation"),
                                            (a @ params["W2"] + params["b2"],
                                             "z is computed from a; use the activation h = tanh(a)")])
    if a.dtype != np.float64:
        _fail(name, f"float64 inputs must give float64 outputs; yours are {a.dtype} (NumPy keeps float64; jax.numpy "
                    "computes in float32 unless told otherwise)")
    return f"{name}: a, h and z pass"


def check_softmax_cross_entropy(softmax_cross_entropy: Callable) -> str:
    """``softmax_cross_entropy(z, y)`` must return (mean loss, dL/dz) with dL/dz = (softmax(z) - onehot(y)) / B."""
    name = "check_softmax_cross_entropy"
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    loss_ref, dz_ref = softmax_cross_entropy_reference(z, y)
    with _alone(name, softmax_cross_entropy, "softmax_cross_entropy"):
        out = softmax_cross_entropy(z.copy(), y.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        _fail(name, f"softmax_cross_entropy must return a tuple (loss, dz); got {type(out).__name__}")
    loss, dz = _array(name, "loss", out[0], ()), _array(name, "dz", out[1], z.shape, layout="(B, C)")
    _compare(name, "loss", loss, loss_ref, likely=[
        (loss_ref * len(y), "it is the sum over the batch; take the mean (divide by B)"),
        (-loss_ref, "it has the wrong sign: the loss is minus the mean log-probability of the right class")])
    sums = dz.sum(axis=-1)
    if not np.allclose(sums, 0, atol=1e-6):
        row = int(np.argmax(np.abs(sums)))
        _fail(name, f"row {row} of dz sums to {sums[row]:.4g}, not 0; softmax(z) - onehot(y) sums to 0 in every row")
    _compare(name, "dz", dz, dz_ref, likely=[(dz_ref * len(y), "it is B times too large: the loss is a mean, "
                                                               "so divide by the batch size B")])
    with np.errstate(all="ignore"):
        big_loss, big_dz = (np.asarray(v, np.float64) for v in softmax_cross_entropy(z * 1000.0, y))
    if not np.all(np.isfinite(big_dz)):
        _fail(name, "logits of size 1000 give inf or nan in dz: subtract each row's maximum before exp() (the "
                    "log-sum-exp trick of chapter 2)")
    if not np.all(np.isfinite(big_loss)):
        _fail(name, "logits of size 1000 give an infinite loss although dz is finite: the log of a probability that "
                    "underflowed to 0 is -inf. Compute the log-probabilities directly (log-softmax: the shifted "
                    "logits minus the log of the sum of their exps), not as the log of a quotient")
    return f"{name}: loss, dz and large logits pass"


def _backward_likely(key: str, params: dict, x: np.ndarray, ref: dict, batch: int) -> list[tuple[Any, str]]:
    """(wrong gradient, hint) for the mistakes students make most often in ``backward``."""
    dh = ref["dz"] @ params["W2"].T  # (B, F)
    likely = [(ref["grads"][key] * batch, "it is B times too large: the loss is a mean over the batch, and dz "
                                          "already holds the 1/B"),
              (ref["grads"][key] / batch, "it is B times too small: dz already holds the 1/B of the mean; do not "
                                          "average over the batch again")]
    if key == "W2":
        likely.append((ref["a"].T @ ref["dz"], "it uses the pre-activation a where the activation h = tanh(a) belongs"))
    if key in ("b1", "W1"):
        wrong = {"the tanh was skipped on the way back: multiply by the derivative of tanh": dh,
                 "the derivative of tanh is 1 - tanh(a)**2 = 1 - h**2, taken at h, not 1 - a**2":
                     dh * (1 - ref["a"] ** 2),
                 "that is the derivative of the sigmoid, h (1 - h); tanh's is 1 - h**2": dh * ref["h"] * (1 - ref["h"]),
                 "the derivative of tanh is 1 - h**2, not 1 - h": dh * (1 - ref["h"])}
        for hint, da in wrong.items():
            likely.append((da.sum(axis=0) if key == "b1" else x.T @ da, hint))
    return likely


_BACKWARD_HINTS = {"b2": "; check the step from dz to the output bias",
                   "W2": "; check the step from dz to the output weights (which activations multiply dz?)",
                   "b1": "; check the steps from dz back through W2 and the tanh to a, and how da becomes db1",
                   "W1": "; b1 passed, so da is right: check the last step, from da to dW1 (which input multiplies "
                         "it?)"}


def check_backward(backward: Callable) -> str:
    """``backward(params, x, y)`` must return the gradients of the mean cross-entropy, one per parameter."""
    name = "check_backward"
    params, x, y = two_layer_case(np.random.default_rng(2))
    ref = two_layer_reference(params, x, y)
    with _alone(name, backward, "backward"):
        grads = backward({k: v.copy() for k, v in params.items()}, x.copy(), y.copy())
    if not isinstance(grads, Mapping) or set(grads) != set(ref["grads"]):
        got = sorted(grads) if isinstance(grads, Mapping) else type(grads).__name__
        _fail(name, f"backward must return a dict with the keys ['W1', 'W2', 'b1', 'b2']; got {got}")
    for key in ("b2", "W2", "b1", "W1"):  # the order backpropagation computes them: a mistake shows up first here
        g = _array(name, f"grads[{key!r}]", grads[key], params[key].shape, layout=f"the shape of {key}",
                   hint=" (a gradient has the shape of its parameter)")
        if g.dtype != np.float64:
            _fail(name, f"grads[{key!r}] has dtype {g.dtype}; float64 inputs must give float64 gradients (NumPy "
                        f"keeps float64; jax.numpy computes in float32 unless told otherwise)")
        _compare(name, f"grads[{key!r}]", g, ref["grads"][key], rtol=1e-6, atol=1e-9,
                 likely=_backward_likely(key, params, x, ref, len(y)), hint=_BACKWARD_HINTS[key])
    return f"{name}: all four gradients pass"


def check_train(train: Callable) -> str:
    """``train(params, x, y, learning_rate=, steps=)`` must take ``steps`` steps of params - rate * gradient."""
    name = "check_train"
    params, x, y = two_layer_case(np.random.default_rng(3))
    expected = gradient_descent_reference(params, x, y, learning_rate=0.1, steps=3)
    before = {k: v.copy() for k, v in params.items()}
    with _alone(name, train, "train"):
        out = train(params, x, y, learning_rate=0.1, steps=3)
    if not isinstance(out, Mapping) or set(out) != set(params):
        _fail(name, f"train must return the new params, a dict with the keys of params; got {type(out).__name__}")
    if any(not np.array_equal(before[k], params[k]) for k in params):
        _fail(name, "train changed the params it was given; build new arrays (p - rate * g), do not update in place")
    def steps_of(learning_rate: float, steps: int) -> dict[str, np.ndarray]:
        return gradient_descent_reference(before, x, y, learning_rate=learning_rate, steps=steps)

    likely = {"it climbs: step against the gradient, p - learning_rate * gradient": steps_of(-0.1, 3),
              "it took one step; take `steps` steps": steps_of(0.1, 1),
              "it took steps of the whole gradient: multiply the gradient by learning_rate": steps_of(1.0, 3),
              "it took steps - 1 steps; take `steps` steps": steps_of(0.1, 2),
              "it took steps + 1 steps; take `steps` steps": steps_of(0.1, 4)}
    for key in params:
        got = _array(name, key, out[key], params[key].shape)
        _compare(name, f"params[{key!r}] after 3 steps", got, expected[key], rtol=1e-6, atol=1e-9,
                 likely=[(candidate[key], hint) for hint, candidate in likely.items()])
    return f"{name}: three steps of gradient descent pass"
