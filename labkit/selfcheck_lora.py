"""Self-checks of chapter 4's LoRA assignment: the adapted layer, merging, parameter counts and an adapter-only step.

The references are ``labkit.lora.LoRALinear`` itself, loaded with the student's matrices: a layer y = x W + b with
W (I, O), plus the adapters A (I, r) and B (r, O), scaled by alpha / r.

>>> rng = np.random.default_rng(0)
>>> x, W, b, A, B = lora_case(rng, batch=3, inputs=5, outputs=4, rank=2)
>>> lora_forward_reference(x, W, b, A, B, alpha=4.0).shape
(3, 4)
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from labkit.grading import on_references
from labkit.lora import LoRALinear, LoRAParam
from labkit.selfcheck_core import _array, _compare, _fail, check_rules

__all__ = ["LORA_FORBIDDEN", "check_lora_forward", "check_lora_merge", "check_lora_param_count", "check_lora_step",
           "lora_case", "lora_forward_function", "lora_forward_reference", "lora_merge_reference",
           "lora_param_count_reference", "lora_references", "lora_step_reference"]

LORA_FORBIDDEN = ("LoRALinear", "LoRAParam", "labkit", "selfcheck")
_WHY = "the assignment asks you to write it with NumPy and jax.numpy (no labkit.lora)"
PARTS = ("lora_forward", "merge", "lora_param_count", "lora_step")


def lora_forward_function(x, W, b, A, B, alpha):
    """x W + b + (alpha / r) (x A) B in jax.numpy, differentiable (``jax.grad`` can trace it); equals
    ``lora_forward_reference``, labkit's layer."""
    return jnp.asarray(x) @ W + b + (alpha / jnp.shape(A)[1]) * ((jnp.asarray(x) @ A) @ B)


def lora_references() -> dict[str, Callable]:
    """The part ``lora_step`` calls, as labkit computes it: what its test gives it in place of the student's."""
    return {"lora_forward": lora_forward_function}


def _alone(check: str, fn: Callable, part: str) -> Any:
    check_rules(check, fn, LORA_FORBIDDEN, _WHY, parts=PARTS)
    return on_references(fn, lora_references(), keep=part)


def lora_case(rng: np.random.Generator, *, batch: int, inputs: int, outputs: int,
              rank: int) -> tuple[np.ndarray, ...]:
    """Random float32 x (B, I), W (I, O), b (O,), A (I, r) and B (r, O), B not zero (so the update shows)."""
    shapes = ((batch, inputs), (inputs, outputs), (outputs,), (inputs, rank), (rank, outputs))
    return tuple(rng.normal(size=shape).astype(np.float32) for shape in shapes)


def _layer(W: np.ndarray, b: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: float) -> LoRALinear:
    inputs, outputs = np.shape(W)
    base = nnx.Linear(inputs, outputs, rngs=nnx.Rngs(0))
    base.kernel[...] = jnp.asarray(W, jnp.float32)
    base.bias[...] = jnp.asarray(b, jnp.float32)
    layer = LoRALinear(base, rank=np.shape(A)[1], alpha=alpha, rngs=nnx.Rngs(0))
    layer.lora_a[...] = jnp.asarray(A, jnp.float32)
    layer.lora_b[...] = jnp.asarray(B, jnp.float32)
    return layer


def lora_forward_reference(x, W, b, A, B, *, alpha: float) -> np.ndarray:
    """labkit's LoRALinear on x: x W + b + (alpha / r) (x A) B, (B, O)."""
    return np.asarray(_layer(W, b, A, B, alpha)(jnp.asarray(x, jnp.float32)))


def lora_merge_reference(W, A, B, *, alpha: float) -> np.ndarray:
    """The merged kernel W + (alpha / r) A B, (I, O)."""
    return np.asarray(W, np.float32) + np.asarray(_layer(W, np.zeros(np.shape(W)[1]), A, B, alpha).delta())


def lora_param_count_reference(shapes: list[tuple[int, int]], rank: int) -> tuple[int, int]:
    """(adapter parameters, frozen kernel parameters) of LoRA of rank ``rank`` on layers of the given (I, O)."""
    return sum(rank * (i + o) for i, o in shapes), sum(i * o for i, o in shapes)


def lora_step_reference(W, b, A, B, x, y, *, alpha: float, learning_rate: float) -> tuple[np.ndarray, ...]:
    """One gradient-descent step on the adapters only, mean squared error: (new A, new B, loss before the step)."""
    layer = _layer(W, b, A, B, alpha)

    def mse(layer: LoRALinear) -> jnp.ndarray:
        return jnp.mean((layer(jnp.asarray(x, jnp.float32)) - jnp.asarray(y, jnp.float32)) ** 2)

    loss, grads = nnx.value_and_grad(mse, argnums=nnx.DiffState(0, LoRAParam))(layer)
    return (np.asarray(A - learning_rate * grads.lora_a[...]), np.asarray(B - learning_rate * grads.lora_b[...]),
            np.asarray(loss))


def check_lora_forward(lora_forward: Callable) -> str:
    """``lora_forward(x, W, b, A, B, alpha)``: x W + b + (alpha / r) (x A) B."""
    name = "check_lora_forward"
    rng = np.random.default_rng(0)
    for batch, inputs, outputs, rank, alpha in ((3, 5, 4, 2, 4.0), (1, 8, 8, 1, 1.0), (6, 3, 7, 3, 16.0)):
        x, W, b, A, B = lora_case(rng, batch=batch, inputs=inputs, outputs=outputs, rank=rank)
        with _alone(name, lora_forward, "lora_forward"):
            got = lora_forward(x.copy(), W.copy(), b.copy(), A.copy(), B.copy(), alpha)
        got = _array(name, f"lora_forward on x {x.shape}, rank {rank}", got, (batch, outputs), layout="(batch, O)")
        base = x @ W + b
        _compare(name, f"lora_forward (rank {rank}, alpha {alpha})", got,
                 lora_forward_reference(x, W, b, A, B, alpha=alpha), likely=[
                     (base, "the adapters are missing: add (alpha / r) (x A) B to x W + b"),
                     (base + alpha * (x @ A) @ B, "scale the update by alpha / r, not alpha"),
                     (base + (x @ A) @ B, "the update is not scaled: multiply (x A) B by alpha / r"),
                     (x @ W + alpha / rank * (x @ A) @ B, "the bias b is missing")])
    return f"{name}: 3 cases pass"


def check_lora_merge(merge: Callable) -> str:
    """``merge(W, A, B, alpha)``: a new kernel W + (alpha / r) A B; W itself unchanged."""
    name = "check_lora_merge"
    rng = np.random.default_rng(1)
    for inputs, outputs, rank, alpha in ((5, 4, 2, 4.0), (6, 6, 3, 1.0)):
        x, W, b, A, B = lora_case(rng, batch=4, inputs=inputs, outputs=outputs, rank=rank)
        given = W.copy()
        with _alone(name, merge, "merge"):
            got = _array(name, f"merge of W {W.shape}", merge(given, A, B, alpha), (inputs, outputs),
                         layout="the shape of W")
        if not np.array_equal(given, W):
            _fail(name, "merge changed the W it was given; return a new array (W + ..., not W += ...)")
        _compare(name, f"the merged kernel (rank {rank}, alpha {alpha})", got,
                 lora_merge_reference(W, A, B, alpha=alpha),
                 likely=[(W + alpha * A @ B, "scale A B by alpha / r, not alpha"),
                         (W + A @ B, "scale A B by alpha / r"),
                         (W, "W came back unchanged: add the update (alpha / r) A B")])
        _compare(name, "x @ merged + b (it must equal the adapted layer's output)", x @ got + b,
                 lora_forward_reference(x, W, b, A, B, alpha=alpha), rtol=1e-3, atol=1e-4)
    return f"{name}: 2 cases pass, and the merged layer gives the adapted layer's outputs"


def check_lora_param_count(lora_param_count: Callable) -> str:
    """``lora_param_count(shapes, rank)``: (adapter parameters, frozen parameters); ValueError for a bad rank."""
    name = "check_lora_param_count"
    for shapes, rank in (([(768, 768)], 8), ([(768, 768), (768, 3072), (3072, 768)], 4), ([(10, 3)], 3)):
        with _alone(name, lora_param_count, "lora_param_count"):
            got = lora_param_count(list(shapes), rank)
        expected = lora_param_count_reference(shapes, rank)
        if not isinstance(got, tuple) or len(got) != 2:
            _fail(name, f"lora_param_count must return a tuple (adapter, frozen); got {got!r}")
        if tuple(int(v) for v in got) != expected:
            hint = " (A is I x r and B is r x O: r (I + O) per layer)" if got[0] != expected[0] else ""
            _fail(name, f"lora_param_count({shapes}, rank={rank}) must be {expected}; got {got}{hint}")
    for shapes, rank in (([(10, 3)], 4), ([(8, 8)], 0), ([(8, 8), (2, 8)], 3)):
        try:
            lora_param_count(list(shapes), rank)
        except ValueError:
            continue
        _fail(name, f"rank {rank} is impossible for layers {shapes} (it must be in [1, min(I, O)] for every layer); "
                    "raise a ValueError")
    return f"{name}: 3 counts and 3 bad ranks pass"


def check_lora_step(lora_step: Callable) -> str:
    """``lora_step(W, b, A, B, x, y, *, alpha, learning_rate)``: (new A, new B, loss) of one adapter-only step."""
    name = "check_lora_step"
    rng = np.random.default_rng(2)
    for inputs, outputs, rank in ((5, 4, 2), (3, 6, 1)):
        x, W, b, A, B = lora_case(rng, batch=8, inputs=inputs, outputs=outputs, rank=rank)
        y = rng.normal(size=(8, outputs)).astype(np.float32)
        settings = dict(alpha=2.0, learning_rate=0.05)
        with _alone(name, lora_step, "lora_step"):
            got = lora_step(W.copy(), b.copy(), A.copy(), B.copy(), x, y, **settings)
        if not isinstance(got, tuple) or len(got) != 3:
            _fail(name, f"lora_step must return a tuple (new A, new B, loss); got {type(got).__name__}")
        new_a, new_b, loss = (_array(name, what, value, shape) for what, value, shape in
                              (("new A", got[0], A.shape), ("new B", got[1], B.shape), ("loss", got[2], ())))
        ref_a, ref_b, ref_loss = lora_step_reference(W, b, A, B, x, y, **settings)
        _compare(name, "loss", loss, ref_loss, likely=[(ref_loss * y.size, "use the mean squared error, not the sum")])
        step_a, step_b = ref_a - A, ref_b - B
        _compare(name, "new A", new_a, ref_a, atol=1e-5,
                 likely=[(A - step_a, "step against the gradient: A - learning_rate * dL/dA"), (A, "A did not move")])
        _compare(name, "new B", new_b, ref_b, atol=1e-5,
                 likely=[(B - step_b, "step against the gradient: B - learning_rate * dL/dB"), (B, "B did not move")])
    return f"{name}: 2 cases pass"
