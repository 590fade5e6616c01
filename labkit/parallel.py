"""Training on many devices with JAX's own sharding: a device mesh, partition rules by parameter path, placement.

A mesh arranges the devices in a grid with two named axes: ``data`` (the batch is split over it) and ``model``
(tensor parallelism splits heads and feed-forward width over it). Every parameter gets a *logical* name per dimension
from its path (``DIMENSIONS``: D width, F feed-forward width, V vocabulary, NH query heads x head width, KH key/value
heads x head width, T positions); a *strategy* maps logical names to mesh axes (``STRATEGIES``):

    dp        data parallel: parameters replicated, batch split over ``data``
    fsdp      fully sharded data parallel (ZeRO-3): every matrix split along D over ``data``
    tp        tensor parallel (Megatron): heads, F and V split over ``model``; on a mesh with data > 1, data x model
    fsdp_tp   both: D over ``data``, heads, F and V over ``model``

Gradients and Adam's moments mirror the parameters' paths, so they get the same shardings. XLA inserts every
collective (all-reduce, all-gather, reduce-scatter) itself; nothing here is hand-written communication.

>>> mesh = make_mesh(data=4, model=2)                                      # 8 devices  # doctest: +SKIP
>>> model = GPT(config, rngs=nnx.Rngs(0))  # doctest: +SKIP
>>> history = fit(model, nnx.Optimizer(model, tx, wrt=nnx.Param), lm.loss, train, steps=100, batch_size=32,
...               key=key, mesh=mesh, strategy="tp")  # fit shards model and optimizer  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["AXES", "DIMENSIONS", "STRATEGIES", "bytes_per_device", "check_divisible", "create_sharded", "make_mesh",
           "partition_specs", "path_of", "place_batch", "place_replicated", "shard", "shardings_of", "spec_of"]

AXES = ("data", "model")
N = TypeVar("N")

# Logical dimensions of each parameter of labkit's GPT, by the end of its path (first match wins). Adam's moments
# (opt_state/.../mu/<path>, nu/<path>) end the same way, so they follow their parameter.
DIMENSIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed/embedding$", ("V", "D")),
    (r"positions/table$", ("T", "D")),
    (r"attn/query/kernel$", ("D", "NH")),  # column-parallel: each device computes whole heads
    (r"attn/(key|value)/kernel$", ("D", "KH")),
    (r"attn/query/bias$", ("NH",)),
    (r"attn/(key|value)/bias$", ("KH",)),
    (r"attn/out/kernel$", ("NH", "D")),  # row-parallel: partial sums, added by an all-reduce
    (r"mlp/(up|gate)/kernel$", ("D", "F")),  # column-parallel
    (r"mlp/(up|gate)/bias$", ("F",)),
    (r"mlp/down/kernel$", ("F", "D")),  # row-parallel
    (r"head/kernel$", ("D", "V")),
    (r"(attn/out|mlp/down)/bias$|norm/(scale|bias)$", ("D",)),
)

_TP = {"NH": "model", "KH": "model", "F": "model", "V": "model"}
STRATEGIES: dict[str, dict[str, str]] = {
    "dp": {},
    "fsdp": {"D": "data"},
    "tp": dict(_TP),
    "fsdp_tp": {"D": "data", **_TP},
}


def make_mesh(data: int | None = None, model: int = 1, *, devices: list | None = None) -> Mesh:
    """A ``data`` x ``model`` mesh over ``devices`` (default: all of them, across every process).

    ``data`` defaults to the devices left after ``model``. The axes are of JAX's ``Auto`` kind: shardings are
    propagated by the compiler from the parameters' and the batch's placement.

    >>> make_mesh(model=2).shape                                          # on 8 devices  # doctest: +SKIP
    {'data': 4, 'model': 2}
    """
    devices = list(jax.devices() if devices is None else devices)
    if type(model) is not int or model < 1:
        raise ValueError(f"model must be a positive int (devices along the model axis); got {model!r}")
    if data is None:
        if len(devices) % model:
            raise ValueError(f"model={model} does not divide the {len(devices)} devices")
        data = len(devices) // model
    if type(data) is not int or data < 1:
        raise ValueError(f"data must be a positive int (devices along the data axis); got {data!r}")
    if data * model > len(devices):
        raise ValueError(f"a mesh of data={data} x model={model} needs {data * model} devices; "
                         f"there are {len(devices)} ({jax.default_backend()})")
    return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[: data * model])


def _axis_sizes(mesh: Mesh) -> dict[str, int]:
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != AXES:
        raise TypeError(f"mesh must be a jax Mesh with axes {AXES} (from labkit.parallel.make_mesh); got {mesh!r}")
    return dict(mesh.shape)


def _strategy(strategy: str, mesh: Mesh) -> dict[str, str]:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    sizes = _axis_sizes(mesh)
    rules = STRATEGIES[strategy]
    if sizes["model"] > 1 and "model" not in rules.values():
        raise ValueError(f"strategy {strategy!r} uses no 'model' axis, but the mesh has model={sizes['model']}: "
                         "those devices would repeat the same work; use tp or fsdp_tp, or a mesh with model=1")
    return rules


def path_of(keys: tuple) -> str:
    """The "/"-joined path of a pytree leaf, e.g. ``blocks/0/attn/query/kernel``: what ``DIMENSIONS`` matches."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def spec_of(path: str, shape: tuple[int, ...], mesh: Mesh, strategy: str) -> PartitionSpec:
    """The PartitionSpec of one array: its logical dimensions (``DIMENSIONS``) mapped by the strategy's rules.

    Scalars (step counts, random keys) are replicated; an array of rank >= 1 that no rule names is an error, so
    that nothing is replicated by accident. A mesh axis that does not divide the dimension it splits is an error.
    """
    rules, sizes = _strategy(strategy, mesh), _axis_sizes(mesh)
    if len(shape) == 0:
        return PartitionSpec()
    names = next((dims for pattern, dims in DIMENSIONS if re.search(pattern, path)), None)
    if names is None or len(names) != len(shape):
        raise ValueError(f"no sharding rule in labkit.parallel.DIMENSIONS names the array {path!r} of shape "
                         f"{tuple(shape)}; add a (pattern, dimension names) entry for it")
    axes = tuple(rules.get(name) for name in names)
    for axis, name, size in zip(axes, names, shape, strict=True):
        if axis is not None and size % sizes[axis]:
            raise ValueError(f"mesh axis {axis!r} of size {sizes[axis]} does not divide dimension {name}={size} "
                             f"of {path!r}")
    return PartitionSpec(*axes)


def partition_specs(tree: Any, mesh: Mesh, strategy: str) -> Any:
    """A PartitionSpec for every array in ``tree`` (a pure dict, e.g. ``nnx.to_pure_dict(nnx.state(model))``)."""
    return jax.tree_util.tree_map_with_path(
        lambda keys, x: spec_of(path_of(keys), tuple(np.shape(x)), mesh, strategy), tree)


def check_divisible(config: Any, mesh: Mesh, strategy: str, batch_size: int | None = None) -> None:
    """Raise if a mesh axis does not divide what the strategy splits over it: heads, widths, vocabulary, batch.

    Heads are checked as heads (not just N x H), so tensor parallelism never splits a head between devices.
    """
    rules, sizes = _strategy(strategy, mesh), _axis_sizes(mesh)
    splits = []
    if "model" in rules.values():
        splits += [("model", "num_heads N", config.num_heads), ("model", "num_kv_heads K", config.num_kv_heads),
                   ("model", "mlp_width F", config.mlp_width), ("model", "vocab_size V", config.vocab_size)]
    if rules.get("D") == "data":
        splits.append(("data", "width D", config.width))
    if batch_size is not None:
        splits.append(("data", "batch_size B", batch_size))
    for axis, name, size in splits:
        if size % sizes[axis]:
            raise ValueError(f"mesh axis {axis!r} of size {sizes[axis]} does not divide {name}={size} "
                             f"(strategy {strategy!r})")


def _named(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, PartitionSpec))


def _check_node(node: Any, mesh: Mesh, strategy: str) -> None:
    for part in node if isinstance(node, tuple) else (node,):
        config = getattr(part, "config", None)
        if config is not None and hasattr(config, "num_heads"):
            check_divisible(config, mesh, strategy)


def shard(node: N, mesh: Mesh, strategy: str) -> N:
    """Move every array of ``node`` (a model, an optimizer, or a tuple of them) onto ``mesh`` by the strategy's
    rules, in place; returns ``node``. For one process; ``create_sharded`` builds a model sharded from the start."""
    _check_node(node, mesh, strategy)
    state = nnx.state(node)
    pure = nnx.to_pure_dict(state)
    pure = jax.device_put(pure, _named(partition_specs(pure, mesh, strategy), mesh))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(node, state)
    return node


def create_sharded(make: Callable[[], N], mesh: Mesh, strategy: str) -> N:
    """``make()`` (e.g. a model and its optimizer) run under ``jit`` so that each array is created directly in its
    shards: no device ever holds the whole model, and it works across processes.

    >>> model, optimizer = create_sharded(lambda: (m := GPT(config, rngs=nnx.Rngs(0)),  # doctest: +SKIP
    ...                                   nnx.Optimizer(m, tx, wrt=nnx.Param)), mesh, "fsdp")
    """
    @nnx.jit
    def create():
        node = make()
        _check_node(node, mesh, strategy)
        state = nnx.state(node)
        pure = nnx.to_pure_dict(state)
        pure = jax.lax.with_sharding_constraint(pure, _named(partition_specs(pure, mesh, strategy), mesh))
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(node, state)
        return node

    return create()


def shardings_of(node: Any) -> dict[str, PartitionSpec]:
    """Path -> PartitionSpec of every array of ``node`` as it is placed now (for checks and tables)."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(node)))[0]
    return {path_of(keys): getattr(x.sharding, "spec", PartitionSpec()) for keys, x in flat}


def place_batch(x: Any, mesh: Mesh, *, batch_axis: int = 0) -> jax.Array:
    """``x`` split along ``batch_axis`` over the ``data`` axis (replicated over ``model``).

    Every process passes the same global batch; each keeps only the rows of its own devices.
    """
    sizes = _axis_sizes(mesh)
    shape = tuple(np.shape(x))
    if not 0 <= batch_axis < len(shape):
        raise ValueError(f"batch_axis must index a dimension of x (shape {shape}); got {batch_axis}")
    if shape[batch_axis] % sizes["data"]:
        raise ValueError(f"mesh axis 'data' of size {sizes['data']} does not divide the batch dimension "
                         f"B={shape[batch_axis]} (axis {batch_axis} of shape {shape})")
    sharding = NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), "data"))
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(shape, sharding, lambda index: host[index])


def place_replicated(x: Any, mesh: Mesh) -> jax.Array:
    """``x`` copied whole onto every device of ``mesh`` (e.g. an evaluation batch the data axis does not divide)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def bytes_per_device(node: Any) -> int:
    """Bytes of ``node``'s arrays held by one device: each array's size divided by the devices it is split over."""
    total = 0
    for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(node))):
        shard_shape = x.sharding.shard_shape(x.shape) if hasattr(x, "sharding") else x.shape
        itemsize = 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.dtype.itemsize
        total += math.prod(shard_shape) * itemsize
    return total
