"""Attention cost on this machine: plain vs blockwise vs jax.nn.dot_product_attention, side by side, in one process.

For causal self-attention with B=1, N heads of width H (default 8 x 64, float32) and several lengths T:

* time: median wall-clock time of one jitted forward call (``--backward``: the gradient of sum(output) with
  respect to q, k and v), after compilation (``--repeats`` calls).
* memory: what XLA itself says the compiled program needs, from
  ``jax.jit(f).lower(...).compile().memory_analysis()``: ``temp`` is the scratch space the program allocates on top
  of its inputs (q, k, v) and its output. This is where the (T, T) score matrix of the plain attention lives, and
  the (T, block) scores of the blockwise one. The numbers are exact for XLA's buffer assignment and free of the
  noise of a Python process (allocator caches, JAX's own buffers), but they are XLA's plan, not a measurement of
  the process. So the script also measures (``--no-rss`` to skip): each (implementation, T) runs in a fresh
  subprocess that reports its peak resident memory (Linux's VmHWM, else ``ru_maxrss``), minus that of a subprocess
  that builds the same inputs and runs nothing; this includes compilation and allocator slack, so it is noisier.
* largest T: the longest sequence whose program (inputs + output + temp) fits ``--budget-gib``, found by compiling
  only (nothing runs), doubling T and then bisecting to a multiple of 128.

On a CPU, ``jax.nn.dot_product_attention`` uses its XLA implementation, which materialises the scores like the
plain one; on a GPU with bf16 inputs labkit asks for the cuDNN fused kernel instead.

    .venv/bin/python bench/attention.py                     # about 1.5 minutes on 2 CPU cores
    .venv/bin/python bench/attention.py --lengths 512 2048 --no-rss --backward
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from labkit.attention import blockwise_attention, dot_product_attention, jax_attention

MiB = 2**20


def implementations(block_size: int) -> dict:
    return {
        "plain": dot_product_attention,
        "blockwise": functools.partial(blockwise_attention, block_size=block_size),
        "jax.nn": jax_attention,
    }


def step(fn, backward: bool):
    """The forward call, or (with ``backward``) the gradient of sum(output) with respect to q, k and v."""
    forward = lambda q, k, v: fn(q, k, v, causal=True)  # noqa: E731
    if not backward:
        return forward
    return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v)), argnums=(0, 1, 2))


def compiled(fn, t: int, heads: int, head_width: int, dtype, backward: bool = False):
    spec = jax.ShapeDtypeStruct((1, t, heads, head_width), dtype)  # (B, T, N, H)
    return jax.jit(step(fn, backward)).lower(spec, spec, spec).compile()


def footprint(program) -> tuple[int, int]:
    """(temporaries, inputs + output + temporaries) in bytes, from XLA's memory analysis."""
    m = program.memory_analysis()
    return m.temp_size_in_bytes, m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def inputs(t: int, heads: int, head_width: int, dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (1, t, heads, head_width), dtype) for k in keys]


def seconds(program, args, repeats: int) -> float:
    jax.block_until_ready(program(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(program(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def largest_t(fn, budget: int, heads: int, head_width: int, dtype, backward: bool, limit: int = 2**20) -> int:
    def fits(t: int) -> bool:
        return footprint(compiled(fn, t, heads, head_width, dtype, backward))[1] <= budget

    low, high = 0, 128
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return low
    while high - low > 128:  # bisect to a multiple of 128
        mid = (low + high) // 256 * 128
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def child_rss(name: str, t: int, args: argparse.Namespace) -> float:
    """Peak resident memory (MiB) of a fresh process that runs ``name`` once at length ``t`` ("none": inputs only)."""
    cmd = [sys.executable, __file__, "--child", name, str(t), "--heads", str(args.heads),
           "--head-width", str(args.head_width), "--block-size", str(args.block_size)] + ["--backward"] * args.backward
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def run_child(name: str, t: int, args: argparse.Namespace) -> None:
    q, k, v = inputs(t, args.heads, args.head_width, jnp.float32)
    if name != "none":
        jax.block_until_ready(jax.jit(step(implementations(args.block_size)[name], args.backward))(q, k, v))
    print(peak_rss_mib())


def peak_rss_mib() -> float:
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries the parent's over fork + exec, so
    # a child of a big parent would report the parent's peak.
    try:
        with open("/proc/self/status") as status:
            return next(float(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-width", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-gib", type=float, default=1.0)
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure peak RSS in a fresh subprocess per size (default: on)")
    parser.add_argument("--backward", action="store_true", help="time the gradient (forward + backward) instead")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args.child[0], int(args.child[1]), args)

    impls = implementations(args.block_size)
    dtype = jnp.float32
    print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); causal, B=1, "
          f"N={args.heads}, H={args.head_width}, float32, block={args.block_size}; "
          f"{'forward + backward' if args.backward else 'forward'}")
    header = f"{'T':>6} | " + " | ".join(f"{name:>9} ms  temp MiB" for name in impls)
    if args.rss:
        header += " | " + " | ".join(f"{name:>9} RSS MiB" for name in impls)
    print(header)
    for t in args.lengths:
        row = f"{t:>6} | "
        data = inputs(t, args.heads, args.head_width, dtype)
        cells = []
        for fn in impls.values():
            program = compiled(fn, t, args.heads, args.head_width, dtype, args.backward)
            temp, _ = footprint(program)
            cells.append(f"{seconds(program, data, args.repeats) * 1e3:12.1f} {temp / MiB:9.1f}")
        row += " | ".join(cells)
        if args.rss:
            base = child_rss("none", t, args)
            row += " | " + " | ".join(f"{child_rss(name, t, args) - base:17.1f}" for name in impls)
        print(row, flush=True)
    budget = int(args.budget_gib * 2**30)
    print(f"\nlargest T within {args.budget_gib:g} GiB (inputs + output + temporaries, from XLA's memory analysis):")
    for name, fn in impls.items():
        t = largest_t(fn, budget, args.heads, args.head_width, dtype, args.backward)
        print(f"  {name:>9}: T = {t}", flush=True)


if __name__ == "__main__":
    main()
