"""More than one process: ``jax.distributed.initialize`` for a SLURM cluster, a Cloud TPU pod slice, or several
processes on one machine. Every process runs the same script; after ``initialize`` each sees every device of the
job in ``jax.devices()`` and its own in ``jax.local_devices()``, and ``labkit.parallel.make_mesh`` spans them all.

    # two processes on one machine, 4 simulated CPU devices each (CPU collectives through gloo):
    LABKIT_COORDINATOR=127.0.0.1:9876 LABKIT_NUM_PROCESSES=2 LABKIT_PROCESS_ID=0 python train.py &
    LABKIT_COORDINATOR=127.0.0.1:9876 LABKIT_NUM_PROCESSES=2 LABKIT_PROCESS_ID=1 python train.py
    # SLURM (srun sets SLURM_* variables) or a TPU pod slice (the TPU runtime tells JAX): no variables needed
    srun --nodes=2 --ntasks-per-node=8 --gpus-per-task=1 python train.py

>>> initialize()            # in train.py, before any other use of JAX; a no-op for a single process  # doctest: +SKIP
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize"]

ENV = ("LABKIT_COORDINATOR", "LABKIT_NUM_PROCESSES", "LABKIT_PROCESS_ID")


def initialize() -> int:
    """Join the job this process belongs to, if it belongs to one; return ``jax.process_count()``.

    Explicit settings come from ``LABKIT_COORDINATOR`` (host:port of process 0), ``LABKIT_NUM_PROCESSES`` and
    ``LABKIT_PROCESS_ID``. Without them, JAX detects SLURM, Open MPI and Cloud TPU pods by itself; a lone process
    on a laptop or a single GPU machine is left alone.
    """
    given = {name: os.environ.get(name) for name in ENV}
    if any(given.values()):
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ValueError(f"set all of {', '.join(ENV)} or none; missing {', '.join(missing)}")
        try:
            count, index = int(given["LABKIT_NUM_PROCESSES"]), int(given["LABKIT_PROCESS_ID"])
        except ValueError:
            raise ValueError(f"LABKIT_NUM_PROCESSES and LABKIT_PROCESS_ID must be ints; got "
                             f"{given['LABKIT_NUM_PROCESSES']!r} and {given['LABKIT_PROCESS_ID']!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"LABKIT_PROCESS_ID must be in [0, {count}); got {index}")
        jax.distributed.initialize(coordinator_address=given["LABKIT_COORDINATOR"], num_processes=count,
                                   process_id=index)
    elif _in_a_cluster():
        jax.distributed.initialize()  # SLURM, Open MPI or a TPU pod: JAX reads the cluster's own variables
    return jax.process_count()


def _in_a_cluster() -> bool:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    mpi_ranks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1)
    tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm_tasks > 1 or mpi_ranks > 1 or "," in tpu_workers
