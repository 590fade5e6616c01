"""Model-FLOP utilization (MFU) of a GPT training step, on one device and sharded: tokens/s, step time, MFU.

MFU = tokens/s x model FLOPs per token / peak FLOP/s (Chowdhery et al. 2022). Model FLOPs per token are
6 N (N: parameters that take part in a matrix product; the position table is a lookup and is left out) plus
12 L T D for attention's two T x T products, forward and backward. The peak comes from ``PEAKS`` (dense bf16, per
chip, from the vendors' data sheets) for GPUs and TPUs; on a CPU it is measured in the same process as the speed of
a large float32 matrix product, so a CPU's MFU says how close the step comes to the machine's own best product.

Each strategy of ``labkit.parallel`` runs with the same per-device batch (weak scaling); its scaling efficiency is
tokens/s over (tokens/s on one device x devices). Simulated CPU devices share the host's cores, so on a CPU every
run has the same global batch (B per device x devices, one device included) and the efficiency is tokens/s over one
device's: it can only show the overhead of sharding (ideal 1). The tensor-parallel runs put fewer rows on ``data``,
so their global batch is smaller by the size of the ``model`` axis.

    .venv/bin/python bench/mfu.py                             # CPU: 8 simulated devices, a small GPT (minutes)
    python bench/mfu.py --preset gpu --seq-len 1024           # a GPU/TPU machine: GPT-2-small blocks, bf16

What was measured is recorded in the README; the 45% target for the gpu preset on an H100/H200 (124M parameters,
T = 1024) has not been measured yet.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

PEAKS = {  # dense bf16 (fp16 where the chip has no bf16) FLOP/s per chip, from the vendors' data sheets
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12, "T4": 65e12,
    "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v4": 275e12,
    "TPU v3": 123e12, "TPU v2": 45e12,
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["ci", "cpu", "gpu"], default=None, help="GPTConfig preset")
    parser.add_argument("--devices", type=int, default=8, help="simulated devices on a CPU (ignored elsewhere)")
    parser.add_argument("--batch-per-device", type=int, default=None, help="B per device")
    parser.add_argument("--seq-len", type=int, default=None, help="T")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, after one warm-up step")
    parser.add_argument("--strategies", default="one,dp,fsdp,tp,fsdp_tp")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.devices > 1 and "jax" not in sys.modules:  # before JAX starts; a GPU or TPU ignores it
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from labkit import lm, parallel
    from labkit.gpt import GPT, GPTConfig
    from labkit.step import make_train_step

    backend = jax.default_backend()
    preset = args.preset or ("cpu" if backend == "cpu" else "gpu")
    config = getattr(GPTConfig, preset)(**({"dtype": jnp.float32} if backend == "cpu" else {}))
    if backend == "cpu" and preset == "cpu":
        config = GPTConfig.cpu(num_heads=8)  # 8 heads: tensor parallelism over 8 simulated devices
    seq = args.seq_len or min(config.max_len, 128 if backend == "cpu" else 1024)
    per_device = args.batch_per_device or (2 if backend == "cpu" else 16)
    n = jax.device_count()
    kind = jax.devices()[0].device_kind
    peak, peak_source = _peak(kind, backend, jax, jnp)
    model = GPT(config, rngs=nnx.Rngs(0))
    table = nnx.state(model, nnx.Param)
    weights = sum(int(np.size(x)) for x in jax.tree.leaves(table))
    weights -= config.max_len * config.width if config.positions == "learned" else 0
    flops_per_token = 6 * weights + 12 * config.num_layers * seq * config.width
    print(f"{n} x {kind} ({backend}); peak {peak / 1e12:.2f} TFLOP/s per device ({peak_source})")
    print(f"GPT {preset}: L={config.num_layers} D={config.width} N={config.num_heads} T={seq}, "
          f"{weights / 1e6:.2f}M weights in products, {flops_per_token / 1e6:.1f} MFLOP per token, "
          f"{jnp.dtype(config.dtype).name} compute, B per device {per_device}")
    print(f"{'strategy':>8} {'mesh':>7} {'batch':>6} {'step ms':>9} {'tokens/s':>10} {'MFU':>7} {'efficiency':>10}")
    step_fn, tx = make_train_step(lm.loss), optax.adamw(1e-4)
    one_rate = None
    for strategy in args.strategies.split(","):
        devices = 1 if strategy == "one" else n
        tp = math.gcd(n, config.num_heads) if strategy in ("tp", "fsdp_tp") else 1
        if strategy == "fsdp_tp":
            tp = min(tp, 2)
        mesh = None if strategy == "one" else parallel.make_mesh(n // tp, tp)
        # GPU/TPU: the same batch per device (weak scaling); CPU: the same global batch, since the simulated
        # devices share the host's cores and only the overhead of sharding can show
        batch = per_device * (n // tp if mesh is not None else (n if backend == "cpu" else 1))
        model = GPT(config, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        x = np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq), dtype=np.int32)
        if mesh is not None:
            parallel.shard((model, optimizer), mesh, strategy)
            x = parallel.place_batch(x, mesh)
        else:
            x = jnp.asarray(x)
        float(step_fn(model, optimizer, x, x))  # compile
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            float(step_fn(model, optimizer, x, x))
            times.append(time.perf_counter() - start)
        step = statistics.median(times)
        rate = batch * seq / step
        one_rate = rate if strategy == "one" else one_rate
        mfu = rate * flops_per_token / (peak * (devices if backend != "cpu" else 1))
        chips = devices if backend != "cpu" else 1  # simulated devices share one host
        efficiency = rate / (one_rate * chips) if one_rate else float("nan")
        shape = "1" if mesh is None else f"{mesh.shape['data']}x{mesh.shape['model']}"
        print(f"{strategy:>8} {shape:>7} {batch:6d} {step * 1e3:9.1f} {rate:10,.0f} {mfu:7.1%} {efficiency:10.2f}")


def _peak(kind: str, backend: str, jax, jnp) -> tuple[float, str]:
    """Peak FLOP/s of one device: the data-sheet figure, or on a CPU a measured float32 matrix product."""
    if backend != "cpu":
        for name, value in PEAKS.items():
            if name.lower() in kind.lower():
                return value, "data sheet, dense bf16"
        raise SystemExit(f"no peak FLOP/s known for {kind!r}; add it to PEAKS in {__file__}")
    size = 1024
    a = jnp.ones((size, size), jnp.float32)
    product = jax.jit(jnp.dot)
    product(a, a).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        product(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times), f"measured {size}x{size} float32 product, this process"


if __name__ == "__main__":
    main()
