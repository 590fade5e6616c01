"""Multi-device checks of labkit.parallel, run by tests/test_parallel.py in a process of its own.

JAX reads the number of simulated CPU devices once, when it starts, so this script sets XLA_FLAGS before importing
it; pytest's own process has already started JAX with one device. Prints one JSON object on the last line.

    python tests/parallel_cases.py /tmp/workdir
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from labkit import collectives, lm, memory, parallel  # noqa: E402
from labkit.gpt import GPT, GPTConfig  # noqa: E402
from labkit.tokens import TokenWindows  # noqa: E402
from labkit.train import fit  # noqa: E402

CONFIG = GPTConfig.ci(num_layers=1, num_heads=8, width=64, mlp_width=128, max_len=16)
TX = optax.adamw(1e-2)  # one optax object, so that runs share compiled steps where they can
IDS = np.asarray(jax.random.randint(jax.random.key(7), (4096,), 0, CONFIG.vocab_size), np.int32)
TRAIN = TokenWindows(IDS, seq_len=16)
BATCH, STEPS = 8, 3
MESHES = {"dp": (8, 1), "fsdp": (8, 1), "tp": (1, 8), "tp 2x4": (2, 4), "fsdp_tp": (4, 2)}


def build():
    model = GPT(CONFIG, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, TX, wrt=nnx.Param)


def train(steps, mesh=None, strategy="dp", checkpoint_dir=None, node=None):
    model, optimizer = node or build()
    history = fit(model, optimizer, lm.loss, TRAIN, steps=steps, batch_size=BATCH, key=jax.random.key(1),
                  progress=False, mesh=mesh, strategy=strategy, checkpoint_dir=checkpoint_dir)
    return history.loss, (model, optimizer)


def padded(spec, ndim):
    spec = tuple(spec)
    return [None if a is None else str(a) for a in spec + (None,) * (ndim - len(spec))]


def wrong_shardings(node, mesh, strategy):
    """Arrays whose placement differs from what the rules name, as (path, got, expected)."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(node)))[0]
    wrong = []
    for keys, x in flat:
        path = parallel.path_of(keys)
        expected = padded(parallel.spec_of(path, x.shape, mesh, strategy), x.ndim)
        got = padded(x.sharding.spec, x.ndim)
        if got != expected or len(x.sharding.device_set) != mesh.size:
            wrong.append((path, got, expected))
    return wrong


def error_of(fn):
    try:
        fn()
    except ValueError as error:
        return str(error)
    return None


_LAST_LAP = [0.0]  # CPU seconds at the previous lap


def lap(out, name):
    import time
    now = time.process_time()
    out.setdefault("cpu_seconds", {})[name] = round(now - _LAST_LAP[0], 2)
    _LAST_LAP[0] = now


def main(workdir: Path) -> dict:
    out = {"devices": jax.device_count()}
    out["single"], _ = train(4)  # also the uninterrupted run of the checkpoint check
    out["losses"], out["wrong"], out["opt_paths"] = {}, {}, {}
    for name, (data, model) in MESHES.items():
        strategy = name.split()[0]
        mesh = parallel.make_mesh(data, model)
        out["losses"][name], node = train(STEPS, mesh, strategy)
        out["wrong"][name] = wrong_shardings(node, mesh, strategy)
        out["opt_paths"][name] = sum("opt_state" in p for p in parallel.shardings_of(node))
        lap(out, name)
    # Gradient accumulation (batch on axis 1) and evaluation batches on a mesh.
    for name, mesh in (("one", None), ("dp", parallel.make_mesh(8, 1))):
        model, optimizer = build()
        history = fit(model, optimizer, lm.loss, TRAIN, steps=2, batch_size=BATCH, accumulation=2,
                      key=jax.random.key(1), eval_data=TRAIN, eval_batches=1, progress=False, mesh=mesh)
        out.setdefault("accumulated", {})[name] = history.loss + history.eval["loss"]
    lap(out, "accumulation")
    mesh = parallel.make_mesh(8, 1)
    born = parallel.create_sharded(build, mesh, "fsdp")
    out["wrong"]["create_sharded fsdp"] = wrong_shardings(born, mesh, "fsdp")
    lap(out, "create")
    out["costs"] = {}
    for strategy, (data, model) in (("dp", (8, 1)), ("fsdp", (8, 1)), ("tp", (1, 8))):
        mesh = parallel.make_mesh(data, model)
        node = parallel.shard(build(), mesh, strategy)
        x = parallel.place_batch(IDS[: BATCH * 16].reshape(BATCH, 16), mesh)
        compiled = memory.compile_step(*node, lm.loss, x, x)
        out["costs"][strategy] = {"state": memory.state_bytes(node[0], mesh, strategy),
                                  "xla": memory.step_memory(compiled),
                                  "collectives": collectives.collectives(compiled.as_text())}
    out["costs"]["params"] = sum(int(np.size(p)) for p in jax.tree.leaves(nnx.state(build()[0], nnx.Param)))
    lap(out, "costs")
    # A checkpoint written under 8-device FSDP, resumed on 4-device DP and on one device.
    train(2, parallel.make_mesh(8, 1), "fsdp", workdir / "fsdp8")
    shutil.copytree(workdir / "fsdp8", workdir / "copy")
    out["resumed_dp4"], _ = train(4, parallel.make_mesh(4, 1), "dp", workdir / "fsdp8")
    out["resumed_one"], _ = train(4, checkpoint_dir=workdir / "copy")
    lap(out, "checkpoint")
    # Bad meshes are refused with the axis, its size and the dimension.
    four_heads = GPT(GPTConfig.ci(num_heads=4, width=64, max_len=16), rngs=nnx.Rngs(0))
    out["errors"] = {
        "heads": error_of(lambda: parallel.shard(four_heads, parallel.make_mesh(1, 8), "tp")),
        "batch": error_of(lambda: parallel.place_batch(np.zeros((12, 16)), parallel.make_mesh(8, 1))),
        "width": error_of(lambda: parallel.shard(GPT(GPTConfig.ci(width=36, num_heads=2, max_len=16),
                                                     rngs=nnx.Rngs(0)), parallel.make_mesh(8, 1), "fsdp")),
        "fit_batch": error_of(lambda: fit(*build(), lm.loss, TRAIN, steps=1, batch_size=12, key=jax.random.key(1),
                                          progress=False, mesh=parallel.make_mesh(8, 1))),
        "idle_model_axis": error_of(lambda: parallel.shard(build(), parallel.make_mesh(4, 2), "dp")),
    }
    lap(out, "errors")
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
