"""Communication of a training step: bytes moved by each strategy by formula, beside the collectives that XLA's
compiled program actually contains, and a roofline of which resource bounds a step.

Sizes follow one convention: the bytes of the *whole* array a collective produces or consumes on one device (an
all-reduce's array, an all-gather's gathered result, a reduce-scatter's input). On a ring of n devices each device
then sends 2(n-1)/n of that for an all-reduce and (n-1)/n for an all-gather or a reduce-scatter.

>>> collectives(compiled.as_text())                # {"all-reduce": (count, bytes), "all-gather": ...}  # doctest: +SKIP
>>> comm_bytes("dp", param_bytes=4 * 1_000_000)    # the gradients' all-reduce: 1M float32 parameters
{'all-reduce': 4000000}
"""

from __future__ import annotations

import re

__all__ = ["KINDS", "collectives", "comm_bytes", "ring_traffic", "roofline", "type_bytes"]

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def type_bytes(type_text: str) -> list[int]:
    """Bytes of each array in an HLO type such as ``f32[8,64]{1,0}`` or a tuple of them."""
    sizes = []
    for dtype, dims in _SHAPE.findall(type_text):
        if dtype in _DTYPE_BYTES:
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            sizes.append(count * _DTYPE_BYTES[dtype])
    return sizes


def _group_size(line: str) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    return len(listed.group(1).split(",")) if listed else 1


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
    """Count and bytes (convention above) of every collective in a compiled program's text, by kind.

    Asynchronous pairs (``all-gather-start`` / ``-done``, as on GPUs) are counted once, at their start.
    """
    if not isinstance(hlo_text, str):
        raise TypeError(f"hlo_text must be the str of compiled.as_text(); got {type(hlo_text).__name__}")
    found = {kind: [0, 0] for kind in KINDS}
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # tuple types carry /*index=5*/ comments
        match = _OP.search(line)
        if not match:
            continue
        kind, sizes = match.group("kind"), type_bytes(match.group("type"))
        if match.group("start") and kind in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2:]  # an async start's type is (operands, results): keep the results
        size = sum(sizes)
        if kind == "reduce-scatter":
            size *= _group_size(line)  # the input, which is group-size times the scattered result
        found[kind][0] += 1
        found[kind][1] += size
    return {kind: (count, size) for kind, (count, size) in found.items() if count}


def comm_bytes(strategy: str, *, param_bytes: float, activation_bytes: float = 0.0, layers: int = 0,
               gather_twice: bool = True, separate_qkv: bool = True, vocab_parallel: bool = True) -> dict[str, float]:
    """Bytes per step and device, by formula, that each strategy must communicate (convention above).

    dp: one all-reduce of the gradients (``param_bytes``). fsdp: the weights all-gathered before the forward pass
    and again before the backward pass (``gather_twice``; once if kept), and the gradients reduce-scattered.
    tp (Megatron): ``activation_bytes`` = B x T x D x bytes on one device. Forward, each layer all-reduces the
    partial sums of its two row-parallel products (attention's output projection, the feed-forward ``down``);
    backward, the gradients reaching the inputs of its column-parallel products: one for the feed-forward ``up``,
    one for attention's input, or three when queries, keys and values are separate projections
    (``separate_qkv``, as in labkit; Megatron fuses them). A vocabulary-parallel embedding and head add one
    forward and one backward all-reduce (``vocab_parallel``). The softmax's max and sum over a split vocabulary
    (B x T numbers) are left out.
    """
    if strategy == "dp":
        return {"all-reduce": param_bytes}
    if strategy == "fsdp":
        return {"all-gather": param_bytes * (2 if gather_twice else 1), "reduce-scatter": param_bytes}
    if strategy == "tp":
        per_layer = 2 + (3 if separate_qkv else 1) + 1
        return {"all-reduce": (layers * per_layer + 2 * vocab_parallel) * activation_bytes}
    raise ValueError(f"strategy must be dp, fsdp or tp; got {strategy!r}")


def ring_traffic(kind: str, size: float, devices: int) -> float:
    """Bytes each device sends for one collective of ``size`` bytes on a ring of ``devices``."""
    if kind not in ("all-reduce", "all-gather", "reduce-scatter"):
        raise ValueError(f"kind must be all-reduce, all-gather or reduce-scatter; got {kind!r}")
    if type(devices) is not int or devices < 1:
        raise ValueError(f"devices must be a positive int; got {devices!r}")
    share = (devices - 1) / devices
    return size * share * (2 if kind == "all-reduce" else 1)


def roofline(*, flops: float, memory_bytes: float, comm_bytes: float, peak_flops: float, memory_bandwidth: float,
             link_bandwidth: float) -> dict[str, float | str]:
    """Seconds a step needs for each resource if it were the only one, and the one that bounds it.

    >>> roofline(flops=1e12, memory_bytes=1e9, comm_bytes=1e9, peak_flops=1e15, memory_bandwidth=3e12,
    ...          link_bandwidth=4.5e11)["bound"]
    'communication'
    """
    for name, value in (("peak_flops", peak_flops), ("memory_bandwidth", memory_bandwidth),
                        ("link_bandwidth", link_bandwidth)):
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value!r}")
    times = {"compute": flops / peak_flops, "memory": memory_bytes / memory_bandwidth,
             "communication": comm_bytes / link_bandwidth}
    return {**{f"{k}_s": v for k, v in times.items()}, "bound": max(times, key=times.get)}
