"""Memory of a training step: bytes per device by arithmetic, beside what XLA's compiled program reports.

Training with Adam keeps, per parameter, the float32 weight (4 bytes), its float32 gradient (4) and Adam's two
float32 moments (8): 16 bytes, whatever the compute dtype (bf16 compute casts the weights on the fly). A strategy
divides each array by the number of devices it is split over (``labkit.parallel``); activations come on top.

>>> state_bytes(model)                                        # one device: params, grads, adam  # doctest: +SKIP
{'params': 4 * P, 'grads': 4 * P, 'adam': 8 * P}
>>> compiled = compile_step(model, optimizer, lm.loss, x, y)  # XLA's train step, per device  # doctest: +SKIP
>>> step_memory(compiled)["arguments"]  # params + Adam state + batch, on one device  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Callable

import jax
import jax.ad_checkpoint
import numpy as np
from flax import nnx

from labkit import parallel
from labkit.collectives import type_bytes

__all__ = ["ADAM_BYTES_PER_PARAMETER", "compile_step", "fits", "lower_step", "residual_bytes", "state_bytes",
           "step_flops", "step_memory"]

# float32 weight + float32 gradient + Adam's first and second moments in float32
ADAM_BYTES_PER_PARAMETER = {"params": 4, "grads": 4, "adam": 8}


def _param_arrays(model: nnx.Module) -> list[tuple[str, tuple[int, ...], int]]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    return [(parallel.path_of(keys), tuple(x.shape), np.dtype(x.dtype).itemsize) for keys, x in flat]


def state_bytes(model: nnx.Module, mesh: Any = None, strategy: str = "dp") -> dict[str, int]:
    """Bytes per device of parameters, gradients and Adam's moments, by formula: each parameter's bytes divided by
    the product of the mesh axes its ``strategy`` spec splits it over (``labkit.parallel.spec_of``)."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module; got {type(model).__name__}")
    total = 0.0
    for path, shape, itemsize in _param_arrays(model):
        shards = 1
        if mesh is not None:
            spec = parallel.spec_of(path, shape, mesh, strategy)
            shards = math.prod(mesh.shape[a] for a in spec if a is not None)
        total += math.prod(shape) * itemsize / shards
    per_float = total / 4  # parameters are float32: bytes / 4 = parameters held per device
    return {name: int(round(per_float * size)) for name, size in ADAM_BYTES_PER_PARAMETER.items()}


def lower_step(model: nnx.Module, optimizer: nnx.Optimizer, loss_fn: Callable, x: jax.Array, y: jax.Array) -> Any:
    """The training step of ``labkit.step.make_train_step`` (no accumulation) lowered to one XLA program, not yet
    compiled: enough for ``cost_analysis()`` (FLOPs). The model and optimizer are left unchanged."""
    graphdef, state = nnx.split((model, optimizer))

    def step(state: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    return jax.jit(step, donate_argnums=0).lower(state, x, y)


def compile_step(model: nnx.Module, optimizer: nnx.Optimizer, loss_fn: Callable, x: jax.Array,
                 y: jax.Array) -> Any:
    """``lower_step`` compiled, as XLA will run it on each device: for ``memory_analysis()`` and ``as_text()``."""
    return lower_step(model, optimizer, loss_fn, x, y).compile()


def step_flops(program: Any) -> float:
    """FLOPs of one step by XLA's cost analysis of a lowered or compiled program (per device once compiled)."""
    cost = program.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def step_memory(compiled: Any) -> dict[str, int]:
    """What XLA reserves on one device for the compiled step: ``arguments`` (parameters, optimizer state, batch),
    ``outputs`` (their new values; ``aliased`` of them reuse the arguments' buffers) and ``temporaries``
    (gradients, activations kept for the backward pass, and scratch)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this backend reports no memory analysis for compiled programs")
    return {"arguments": int(stats.argument_size_in_bytes), "outputs": int(stats.output_size_in_bytes),
            "aliased": int(stats.alias_size_in_bytes), "temporaries": int(stats.temp_size_in_bytes)}


def residual_bytes(loss_fn: Callable, model: nnx.Module, x: jax.Array, y: jax.Array) -> int:
    """Bytes of the activations JAX keeps from the forward pass for the backward pass of ``loss_fn``'s gradient
    (its *residuals*, listed by ``jax.ad_checkpoint.print_saved_residuals``), leaving out the parameters and inputs
    themselves, which are kept anyway. Activation checkpointing (``nnx.remat``) shrinks exactly this."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of(params: Any) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, params, rest, copy=True), x, y)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss_of, params)
    lines = [line for line in printed.getvalue().splitlines() if "from the argument" not in line]
    return sum(sum(type_bytes(line.split(" ", 1)[0])) for line in lines)


def fits(parameters: float, devices: int, device_bytes: float, *, sharded: bool,
         bytes_per_parameter: int = sum(ADAM_BYTES_PER_PARAMETER.values())) -> tuple[float, bool]:
    """(GB of training state per device, whether it fits): replicated on every device (DP) or split over all of
    them (``sharded``: FSDP/ZeRO-3). Activations are not counted; they need room on top.

    >>> fits(7e9, 8, 80e9, sharded=True)                      # 7B parameters on 8 x 80 GB
    (14.0, True)
    """
    for name, value in (("parameters", parameters), ("devices", devices), ("device_bytes", device_bytes)):
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value!r}")
    need = parameters * bytes_per_parameter / (devices if sharded else 1)
    return need / 1e9, need <= device_bytes
