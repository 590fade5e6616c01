"""One process of the two-process test (tests/test_parallel.py): 4 simulated CPU devices, joined over gloo.

    LABKIT_COORDINATOR=127.0.0.1:PORT LABKIT_NUM_PROCESSES=2 LABKIT_PROCESS_ID=i python tests/distributed_case.py
Prints the training losses as JSON on its last line.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from labkit import distributed, lm, parallel  # noqa: E402
from labkit.gpt import GPT, GPTConfig  # noqa: E402
from labkit.tokens import TokenWindows  # noqa: E402
from labkit.train import fit  # noqa: E402

CONFIG = GPTConfig.ci(num_layers=1, num_heads=8, width=64, mlp_width=128, max_len=16)

if __name__ == "__main__":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    processes = distributed.initialize()
    ids = np.asarray(jax.random.randint(jax.random.key(7), (4096,), 0, CONFIG.vocab_size), np.int32)
    mesh = parallel.make_mesh(4 * processes // 2, 2) if processes > 1 else None
    tx = optax.adamw(1e-2)

    def build():
        model = GPT(CONFIG, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = parallel.create_sharded(build, mesh, "fsdp_tp") if mesh is not None else build()
    history = fit(model, optimizer, lm.loss, TokenWindows(ids, seq_len=16), steps=3, batch_size=8,
                  key=jax.random.key(1), progress=False, mesh=mesh, strategy="fsdp_tp" if mesh else "dp")
    print(json.dumps({"processes": processes, "devices": jax.device_count(), "local": jax.local_device_count(),
                      "losses": history.loss}))
