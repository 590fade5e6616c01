"""Pretraining throughput on this machine: the ``cpu``-profile GPT trained with ``labkit.train.fit`` on real tokens,
against the speed of one large matrix product measured in the same process.

The corpus is Python's documentation (``pydoc``), encoded with a byte-level BPE that the script trains first
(``--vocab-size``; 0 for raw bytes), written with ``labkit.tokens.write_tokens`` and read back memory-mapped: the
path a notebook takes. For each sequence length T in ``--seq-lens`` (B = ``--tokens-per-step`` / T, so every
setting trains on the same number of tokens per step) a fresh model is trained in ``--chunks`` calls of ``fit`` of
``--steps`` steps each; the model and optimizer carry on from one call to the next, and the first call's first step
(compilation) is left out. The reference, a jitted ``--matmul`` x ``--matmul`` float32 ``jnp.dot``, is timed (median
of 5, after warm-up) before the first chunk and after each one; a chunk's ratio is its model FLOP/s over the mean
of the two references around it, and the median over chunks is reported. The share of the CPUs that other
processes used meanwhile is printed too (from /proc/stat): on a shared machine, trust the rows where it is near 0.

Model FLOPs per trained token (forward and backward):

* ``6 N`` for the products with the weights, N = the GPT's parameters except the learned position table (a lookup,
  not a product); the token embedding counts once, as the tied output layer (Kaplan et al. 2020);
* plus attention's two T x T products, q kᵀ and weights · v: ``6 L T D`` counts only the causal half a language
  model needs (the headline ratio); ``12 L T D`` counts the full square that the plain attention computes (the
  convention of PaLM's model-FLOP utilisation, Chowdhery et al. 2022, and of nanoGPT), printed beside it.

Memory: XLA's CPU runtime asks for each step's scratch space (about 350 MB at B x T = 4096) afresh, and glibc
serves a request that large with a new mmap and returns it with munmap when the step ends, so every step first
touches ~85,000 fresh pages: a quarter of the CPU time went to the kernel. The script therefore re-runs itself with
``GLIBC_TUNABLES`` set so that glibc keeps one heap and reuses freed memory (``MALLOC_TUNING`` below; Linux with
glibc only; ``--no-malloc-tuning`` to compare, or set the variable yourself before starting Jupyter). That alone
made a step 20-30% faster.

What was measured on the 2-core machine this course is built on (AMD EPYC, idle, reference ~200 GFLOP/s), ratios
with the malloc tuning (without): about 0.36 (0.28) at T = 256, 0.40 (0.33) at T = 128, 0.45 (0.38) at T = 64,
i.e. 12k-17k tokens/s. (When other processes load the CPU, the reference slows down more than training does and
the ratio rises: trust the rows whose ``others`` is near 0%.)
A profile of the step (jax.profiler) shows what is left: the products with the weights run at about the speed of
the reference, but attention's T x T work (batched products with a contraction of only H = 32, masking and
softmax over B x N x T x T scores) runs at 1/5 to 1/6 of it and takes 45% of the step at T = 256, 20% at T = 64;
layer norms, GELU and the other element-wise work take about a quarter. Things that did not help by more than the
noise: two XLA host devices with the batch split over them (data parallelism, +0-10%), ``attention="jax"`` or
``"blockwise"``, ``--xla_cpu_enable_fast_math``, the concurrency-optimised scheduler, bf16, larger batches. The
step is one jitted function and the host reads each loss only after queuing the next step.

    .venv/bin/python bench/train_gpt.py                       # about 2 minutes on 2 CPU cores
    .venv/bin/python bench/train_gpt.py --seq-lens 128 --chunks 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from labkit import data, lm, tokens, train
from labkit.bpe import BPETokenizer
from labkit.gpt import GPT, GPTConfig, param_count
from labkit import scaling
from labkit.optim import TrainConfig, make_optimizer


# One malloc arena, never mmap, never give memory back: freed scratch space is reused by the next step.
MALLOC_TUNING = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 128, 64], help="T values to compare")
    parser.add_argument("--tokens-per-step", type=int, default=4096, help="B x T of every setting")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per chunk")
    parser.add_argument("--chunks", type=int, default=4, help="calls of fit per setting, each timed")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary trained on pydoc; 0 = bytes")
    parser.add_argument("--matmul", type=int, default=2048, help="size of the reference float32 matrix product")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default allocator settings")
    return parser.parse_args()


def tokens_on_disk(vocab_size: int, folder: Path) -> tuple:
    """pydoc encoded (BPE of ``vocab_size`` ids, or bytes if 0), written and opened memory-mapped; and V."""
    text = data.load("pydoc")
    start = time.perf_counter()
    if vocab_size:
        tokenizer = BPETokenizer.train(text, vocab_size)
        ids, vocab_size = tokenizer.encode_ordinary(text), tokenizer.vocab_size
    else:
        ids, vocab_size = list(text.encode("utf-8")), 256
    path = tokens.write_tokens(folder / "pydoc.npy", ids, vocab_size=vocab_size)
    ids = tokens.open_tokens(path, vocab_size=vocab_size)
    print(f"corpus: pydoc, {len(text):,} characters -> {len(ids):,} tokens (V = {vocab_size}; "
          f"{time.perf_counter() - start:.1f} s to train the BPE and encode), memory-mapped from {path.name}")
    return ids, vocab_size


def matmul_flops(size: int, repeats: int = 5) -> float:
    """FLOP/s of one jitted size x size float32 jnp.dot: 2 size^3 FLOPs over the median time, after warm-up."""
    a, b = (jax.random.normal(jax.random.key(i), (size, size), jnp.float32) for i in (0, 1))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def flops_per_token(config: GPTConfig, seq_len: int) -> tuple[float, float]:
    """(6 N' + 6 L T D, 6 N' + 12 L T D): model FLOPs per trained token, causal half / full square of attention,
    with N' the weights of matrix products (labkit.scaling.flops_per_token, the book's convention)."""
    return (scaling.flops_per_token(config, seq_len, attention="causal"),
            scaling.flops_per_token(config, seq_len, attention="full"))


class OtherLoad:
    """The share of all CPUs that other processes used between ``start`` and ``stop`` (Linux /proc/stat)."""

    def start(self) -> None:
        self._busy, self._own, self._wall = self._busy_seconds(), sum(os.times()[:2]), time.perf_counter()

    def stop(self) -> float:
        busy, own = self._busy_seconds() - self._busy, sum(os.times()[:2]) - self._own
        return max(busy - own, 0.0) / ((time.perf_counter() - self._wall) * os.cpu_count())

    @staticmethod
    def _busy_seconds() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except OSError:
            return float("nan")
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def run_setting(ids, vocab_size: int, seq_len: int, args: argparse.Namespace) -> dict:
    """Train a fresh cpu-profile GPT at one T; the medians over chunks."""
    config = GPTConfig.for_profile("cpu", vocab_size=vocab_size)
    if seq_len > config.max_len or args.tokens_per_step % seq_len:
        sys.exit(f"T={seq_len} must divide --tokens-per-step and be at most max_len={config.max_len}")
    batch_size, total = args.tokens_per_step // seq_len, args.steps * args.chunks
    settings = TrainConfig.cpu(steps=total, warmup_steps=min(10, total), batch_size=batch_size, seq_len=seq_len)
    model = GPT(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(settings), wrt=nnx.Param)
    windows = tokens.TokenWindows(ids, seq_len=seq_len)
    causal, full = flops_per_token(config, seq_len)
    load, reference, rates, others = OtherLoad(), [matmul_flops(args.matmul)], [], []
    for chunk in range(args.chunks):
        load.start()
        history = train.fit(model, optimizer, lm.loss, windows, steps=args.steps, batch_size=batch_size,
                            key=jax.random.fold_in(jax.random.key(0), chunk), progress=False)
        reference.append(matmul_flops(args.matmul))
        others.append(load.stop())
        rates.append((history.throughput(skip=1 if chunk == 0 else 0), (reference[-2] + reference[-1]) / 2))
    return {"T": seq_len, "B": batch_size, "tokens/s": statistics.median(r for r, _ in rates),
            "reference": statistics.median(ref for _, ref in rates), "others": statistics.median(others),
            "ratio": statistics.median(r * causal / ref for r, ref in rates),
            "ratio_full": statistics.median(r * full / ref for r, ref in rates),
            "causal": causal, "loss": history.loss[-1]}


def main() -> None:
    args = parse()
    if not args.no_malloc_tuning and "GLIBC_TUNABLES" not in os.environ and platform.libc_ver()[0] == "glibc":
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNING  # read by glibc at start-up only, hence the re-run
        os.execv(sys.executable, [sys.executable, *sys.argv])
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS')}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    with tempfile.TemporaryDirectory() as folder:
        ids, vocab_size = tokens_on_disk(args.vocab_size, Path(folder))
        config = GPTConfig.for_profile("cpu", vocab_size=vocab_size)
        print(f"model: GPTConfig.for_profile('cpu', vocab_size={vocab_size}): L={config.num_layers} "
              f"D={config.width} N={config.num_heads} F={config.mlp_width}, {param_count(config):,} parameters; "
              f"{args.tokens_per_step:,} tokens per step, {args.chunks} x {args.steps} steps per setting")
        rows = [run_setting(ids, vocab_size, seq_len, args) for seq_len in args.seq_lens]
    header = (f"{'T':>4} {'B':>4} {'tokens/s':>9} {'MFLOP/tok':>10} {'model GFLOP/s':>14} {'matmul GFLOP/s':>15} "
              f"{'ratio':>6} {'ratio 12LTD':>11} {'others':>7} {'loss':>6}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['T']:>4} {r['B']:>4} {r['tokens/s']:>9,.0f} {r['causal'] / 1e6:>10.2f} "
              f"{r['tokens/s'] * r['causal'] / 1e9:>14.1f} {r['reference'] / 1e9:>15.1f} {r['ratio']:>6.2f} "
              f"{r['ratio_full']:>11.2f} {r['others']:>7.0%} {r['loss']:>6.2f}")
    print("ratio = model FLOP/s (6N + 6LTD per token) / FLOP/s of the float32 matrix product; "
          "others = share of the CPUs used by other processes meanwhile")


if __name__ == "__main__":
    main()
