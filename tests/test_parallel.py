"""Sharded training (labkit.parallel) on 8 simulated CPU devices, and the checks that need no second device.

JAX fixes its device count when it starts, and this process already started it with one CPU device, so the
multi-device checks run once in a subprocess (tests/parallel_cases.py) that sets XLA_FLAGS first; each test below
reads one part of its report.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from labkit import parallel

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(HERE / "parallel_cases.py"), str(tmp_path_factory.mktemp("mesh"))],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_subprocess_sees_eight_devices(report):
    assert report["devices"] == 8


@pytest.mark.slow  # 8 simulated devices in a subprocess
@pytest.mark.parametrize("strategy", ["dp", "fsdp", "tp", "tp 2x4", "fsdp_tp"])
def test_every_strategy_gives_the_single_device_losses(report, strategy):
    steps = len(report["losses"][strategy])
    np.testing.assert_allclose(report["losses"][strategy], report["single"][:steps], rtol=2e-6, atol=2e-6)


@pytest.mark.slow  # 8 simulated devices in a subprocess
@pytest.mark.parametrize("strategy", ["dp", "fsdp", "tp", "tp 2x4", "fsdp_tp", "create_sharded fsdp"])
def test_parameters_and_adam_state_are_placed_as_the_rules_name(report, strategy):
    assert report["wrong"][strategy] == []
    if strategy in report["opt_paths"]:
        assert report["opt_paths"][strategy] > 0  # the optimizer's moments were among the arrays checked


@pytest.mark.slow  # 8 simulated devices in a subprocess
@pytest.mark.parametrize("resumed", ["resumed_dp4", "resumed_one"])
def test_checkpoint_from_fsdp_on_8_devices_resumes_elsewhere(report, resumed):
    # steps 1-2 ran on 8-device FSDP; steps 3-4 after restoring onto 4-device DP or one device
    np.testing.assert_allclose(report[resumed][2:], report["single"][2:4], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(report[resumed][:2], report["single"][:2], rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("case, words", [
    ("heads", ["'model'", "size 8", "num_heads N=4"]),
    ("batch", ["'data'", "size 8", "B=12"]),
    ("fit_batch", ["'data'", "size 8", "batch_size B=12"]),
    ("width", ["'data'", "size 8", "width D=36"]),
    ("idle_model_axis", ["'dp'", "model=2"]),
])
@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_a_mesh_that_does_not_divide_is_refused_by_name(report, case, words):
    message = report["errors"][case]
    assert message is not None, f"{case}: no error was raised"
    for word in words:
        assert word in message, message


# ---- one device: the rules themselves -------------------------------------------------------------------------


def _one_device_mesh(model_axis_name="model"):
    import jax
    from jax.sharding import AxisType, Mesh

    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", model_axis_name), axis_types=(AxisType.Auto,) * 2)


@pytest.mark.parametrize("path, shape, strategy, expected", [
    ("blocks/0/attn/query/kernel", (8, 8), "tp", P(None, "model")),
    ("blocks/0/attn/out/kernel", (8, 8), "tp", P("model", None)),
    ("blocks/0/mlp/down/kernel", (16, 8), "fsdp_tp", P("model", "data")),
    ("opt_state/0/mu/blocks/0/mlp/up/kernel", (8, 16), "fsdp", P("data", None)),
    ("embed/embedding", (32, 8), "tp", P("model", None)),
    ("blocks/0/attn_norm/scale", (8,), "dp", P(None)),
    ("opt_state/0/count", (), "fsdp", P()),
])
def test_spec_of_follows_the_dimension_names(path, shape, strategy, expected):
    assert parallel.spec_of(path, shape, _one_device_mesh(), strategy) == expected


def test_an_array_no_rule_names_is_an_error_not_replicated():
    with pytest.raises(ValueError, match="no sharding rule.*'encoder/mystery/kernel'"):
        parallel.spec_of("encoder/mystery/kernel", (4, 4), _one_device_mesh(), "fsdp")


def test_unknown_strategy_and_wrong_mesh_axes():
    with pytest.raises(ValueError, match="strategy must be one of dp, fsdp, tp, fsdp_tp"):
        parallel.spec_of("head/kernel", (4, 4), _one_device_mesh(), "zero")
    with pytest.raises(TypeError, match="axes"):
        parallel.spec_of("head/kernel", (4, 4), _one_device_mesh("tensor"), "dp")


def test_make_mesh_needs_enough_devices():
    with pytest.raises(ValueError, match="needs 16 devices"):
        parallel.make_mesh(16, 1)
    assert dict(parallel.make_mesh().shape) == {"data": 1, "model": 1}


# ---- memory and communication: arithmetic against the compiled program ----------------------------------------


@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_state_bytes_by_formula(report):
    p = report["costs"]["params"]
    assert report["costs"]["dp"]["state"] == {"params": 4 * p, "grads": 4 * p, "adam": 8 * p}
    fsdp, tp = report["costs"]["fsdp"]["state"], report["costs"]["tp"]["state"]
    assert 4 * p / 8 <= fsdp["params"] < 4 * p / 4  # norm scales and biases of F and NH stay whole
    assert 4 * p / 8 <= tp["params"] < 4 * p / 4


@pytest.mark.slow  # 8 simulated devices in a subprocess
@pytest.mark.parametrize("strategy", ["dp", "fsdp", "tp"])
def test_xla_arguments_are_parameters_adam_and_batch(report, strategy):
    cost = report["costs"][strategy]
    state = cost["state"]["params"] + cost["state"]["adam"]
    batch = 2 * 8 * 16 * 4 // (1 if strategy == "tp" else 8)  # x and y, int32, split over data
    assert state + batch <= cost["xla"]["arguments"] <= state + batch + 64  # + step counters and random keys


@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_collectives_found_in_the_compiled_step(report):
    p, width, vocab = report["costs"]["params"], 64, 256
    dp = report["costs"]["dp"]["collectives"]
    assert set(dp) == {"all-reduce"}
    assert 4 * p <= dp["all-reduce"][1] <= 4 * p + 4 * vocab * width + 64  # tied embedding: two gradients
    fsdp = report["costs"]["fsdp"]["collectives"]
    assert fsdp["all-gather"][1] >= 4 * p
    tp = report["costs"]["tp"]["collectives"]
    from labkit.collectives import comm_bytes

    formula = comm_bytes("tp", param_bytes=4 * p, activation_bytes=8 * 16 * width * 4, layers=1)["all-reduce"]
    assert formula <= tp["all-reduce"][1] <= formula + 3 * 8 * 16 * 4  # + the softmax's max and sums


def test_hlo_parser_on_handwritten_lines():
    from labkit.collectives import collectives

    text = """
  %a = f32[8,64]{1,0} all-reduce(%x), replica_groups={{0,1,2,3}}
  %b = (bf16[4]{0}, /*index=1*/f32[2,2]{1,0}) all-reduce(%y, %z), channel_id=2
  %c = f32[2,64]{1,0} reduce-scatter(%w), replica_groups=[2,4]<=[8], dimensions={0}
  %d = (f32[2,64]{1,0}, f32[8,64]{1,0}) all-gather-start(%v), replica_groups={{0,1,2,3}}
  %e = f32[8,64]{1,0} all-gather-done(%d)
"""
    assert collectives(text) == {"all-reduce": (2, 8 * 64 * 4 + 4 * 2 + 16), "reduce-scatter": (1, 2 * 64 * 4 * 4),
                                 "all-gather": (1, 8 * 64 * 4)}


# ---- two processes, 4 simulated devices each, CPU collectives through gloo --------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_two_processes_train_like_one_device(report):
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu",
           "LABKIT_COORDINATOR": f"127.0.0.1:{port}", "LABKIT_NUM_PROCESSES": "2"}
    workers = [subprocess.Popen([sys.executable, str(HERE / "distributed_case.py")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**env, "LABKIT_PROCESS_ID": str(i)})
               for i in range(2)]
    try:
        outputs = [worker.communicate(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-4000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert (result["processes"], result["devices"], result["local"]) == (2, 8, 4)
        np.testing.assert_allclose(result["losses"], report["single"][:3], rtol=2e-6, atol=2e-6)


def test_distributed_settings_must_come_together(monkeypatch):
    from labkit import distributed

    monkeypatch.setenv("LABKIT_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.delenv("LABKIT_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("LABKIT_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="missing LABKIT_NUM_PROCESSES, LABKIT_PROCESS_ID"):
        distributed.initialize()
    monkeypatch.setenv("LABKIT_NUM_PROCESSES", "2")
    monkeypatch.setenv("LABKIT_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"LABKIT_PROCESS_ID must be in \[0, 2\); got 2"):
        distributed.initialize()


def test_a_lone_process_is_left_alone(monkeypatch):
    from labkit import distributed

    for name in distributed.ENV + ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() == 1


@pytest.mark.slow  # 8 simulated devices in a subprocess
def test_accumulation_and_evaluation_on_a_mesh(report):
    np.testing.assert_allclose(report["accumulated"]["dp"], report["accumulated"]["one"], rtol=2e-6, atol=2e-6)


# ---- arithmetic helpers -----------------------------------------------------------------------------------------


def test_remat_shrinks_the_residuals_of_the_backward_pass():
    import jax.numpy as jnp
    from flax import nnx

    from labkit import lm, memory
    from labkit.gpt import GPT, GPTConfig

    x = jnp.zeros((4, 16), jnp.int32)
    plain, remat = (memory.residual_bytes(lm.loss, GPT(GPTConfig.ci(remat=r), rngs=nnx.Rngs(0)), x, x)
                    for r in (False, True))
    assert 0 < remat < plain / 2


def test_fits_ring_and_roofline_by_hand():
    from labkit import collectives, memory

    assert memory.fits(7e9, 8, 80e9, sharded=True) == (14.0, True)
    assert memory.fits(7e9, 1, 80e9, sharded=False) == (112.0, False)
    assert collectives.ring_traffic("all-reduce", 800.0, 8) == 1400.0
    assert collectives.ring_traffic("all-gather", 800.0, 8) == 700.0
    bound = collectives.roofline(flops=1e12, memory_bytes=1e9, comm_bytes=1e9, peak_flops=1e15,
                                 memory_bandwidth=3e12, link_bandwidth=4.5e11)
    assert bound["bound"] == "communication"
    assert collectives.comm_bytes("fsdp", param_bytes=4.0) == {"all-gather": 8.0, "reduce-scatter": 4.0}
    assert collectives.comm_bytes("tp", param_bytes=0, activation_bytes=1.0, layers=2, separate_qkv=False,
                                  vocab_parallel=False) == {"all-reduce": 8.0}
    with pytest.raises(ValueError, match="strategy must be dp, fsdp or tp"):
        collectives.comm_bytes("zero", param_bytes=1.0)
