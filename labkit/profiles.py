"""Compute profiles: one name that sizes every notebook for the machine it runs on.

``ci`` finishes each notebook in seconds (tests), ``cpu`` in at most a few minutes on a 2-core laptop, and ``gpu`` /
``tpu`` run at full size, on one device unless a model is sharded (chapter 6). The profile is chosen from
``jax.default_backend()`` unless the environment variable ``LABKIT_PROFILE`` names one. On its own hardware a
``gpu`` or ``tpu`` profile turns on JAX's persistent compilation cache, and a GPU without bf16 tensor cores (before
NVIDIA's Ampere) gets float32 compute.

>>> profile = get_profile("ci")
>>> profile.pick(ci=2, cpu=20, gpu=200)
2
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

ENV_VAR = "LABKIT_PROFILE"
PROFILE_NAMES = ("ci", "cpu", "gpu", "tpu")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile:
    """A compute profile: its name and the numeric settings every notebook shares."""

    name: str  # one of PROFILE_NAMES
    compute_dtype: Any  # dtype of activations and matrix products: bf16 where the hardware has it, else fp32
    description: str  # one line for the device summary
    remat: bool = False  # activation checkpointing per block (on for 16 GB TPU chips; a large GPU does without)
    compilation_cache: bool = False  # keep compiled programs on disk (a GPU or TPU compiles for minutes)

    def pick(self, *, ci: T, cpu: T, gpu: T | None = None, tpu: T | None = None) -> T:
        """The value for this profile; ``gpu`` defaults to ``cpu``'s value and ``tpu`` to ``gpu``'s."""
        gpu_value = cpu if gpu is None else gpu
        tpu_value = gpu_value if tpu is None else tpu
        return {"ci": ci, "cpu": cpu, "gpu": gpu_value, "tpu": tpu_value}[self.name]


PROFILES: dict[str, Profile] = {
    "ci": Profile(name="ci", compute_dtype=jnp.float32, description="tiny sizes, seconds per notebook (tests)"),
    "cpu": Profile(name="cpu", compute_dtype=jnp.float32, description="laptop sizes, minutes per notebook"),
    "gpu": Profile(name="gpu", compute_dtype=jnp.bfloat16, remat=False, compilation_cache=True,
                   description="full sizes on one GPU (device 0; chapter 6 shards a model over several)"),
    "tpu": Profile(name="tpu", compute_dtype=jnp.bfloat16, remat=True, compilation_cache=True,
                   description="full sizes on one TPU core (device 0; chapter 6 shards a model over several)"),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """What labkit needs to know about the hardware: JAX's platform, the GPU's software stack, its generation."""

    platform: str  # "cpu", "gpu" or "tpu"
    gpu_stack: str | None = None  # "cuda" (NVIDIA) or "rocm" (AMD) on a GPU, else None
    compute_capability: tuple[int, int] | None = None  # NVIDIA's (major, minor), e.g. (8, 0) for an A100


@functools.lru_cache(maxsize=1)
def accelerator() -> Accelerator:
    """The accelerator of device 0, as JAX reports it (cached: the hardware does not change in a process)."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return Accelerator(platform=device.platform)
    version = str(getattr(device.client, "platform_version", "")).lower()
    stack = "rocm" if "rocm" in version else "cuda" if "cuda" in version else None
    capability = None
    if stack == "cuda" and getattr(device, "compute_capability", None):
        capability = tuple(int(part) for part in str(device.compute_capability).split(".")[:2])
    return Accelerator(platform="gpu", gpu_stack=stack, compute_capability=capability)


def has_bfloat16(hardware: Accelerator) -> bool:
    """Whether matrix products in bfloat16 are fast (tensor cores / MXU): TPUs, NVIDIA from Ampere (compute
    capability 8.0) on, AMD's ROCm GPUs. A T4 (7.5) or V100 (7.0) has none, so its profile computes in float32.

    >>> has_bfloat16(Accelerator("gpu", "cuda", (7, 5))), has_bfloat16(Accelerator("gpu", "cuda", (8, 0)))
    (False, True)
    """
    if hardware.platform == "tpu" or hardware.gpu_stack == "rocm":
        return True
    capability = hardware.compute_capability
    return hardware.platform == "gpu" and capability is not None and capability >= (8, 0)


def enable_compilation_cache(directory: str | Path | None = None) -> Path:
    """Keep JAX's compiled programs in ``directory`` (default ``$LABKIT_CACHE/jax``, else ``~/.cache/labkit/jax``)
    so that a second run of a notebook skips compilation; the gpu and tpu profiles turn it on."""
    if directory is None:
        directory = Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit") / "jax"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory


def _for_this_hardware(profile: Profile) -> Profile:
    """A gpu or tpu profile on its own hardware: float32 compute where bf16 is slow, the compilation cache on."""
    hardware = accelerator()
    if profile.name not in ("gpu", "tpu") or hardware.platform != profile.name:  # e.g. LABKIT_PROFILE=gpu on a CPU
        return profile
    if profile.compilation_cache:
        enable_compilation_cache()
    if not has_bfloat16(hardware):
        return dataclasses.replace(profile, compute_dtype=jnp.float32,
                                   description=profile.description + ", float32: this GPU has no bf16 tensor cores")
    return profile

_BACKEND_TO_PROFILE = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``; if None, ``$LABKIT_PROFILE``; if unset, the one for ``jax.default_backend()``."""
    source = "argument 'name'"
    if name is None:
        name = os.environ.get(ENV_VAR) or None
        source = f"environment variable {ENV_VAR}"
    if name is None:
        backend = jax.default_backend()
        if backend not in _BACKEND_TO_PROFILE:
            raise RuntimeError(
                f"JAX backend {backend!r} has no default profile; set {ENV_VAR} to one of {', '.join(PROFILE_NAMES)}"
            )
        return _for_this_hardware(PROFILES[_BACKEND_TO_PROFILE[backend]])
    if not isinstance(name, str) or name.strip().lower() not in PROFILES:
        raise ValueError(f"{source} must be one of {', '.join(PROFILE_NAMES)}; got {name!r}")
    return _for_this_hardware(PROFILES[name.strip().lower()])


def device_summary(profile: Profile | None = None) -> str:
    """A few lines naming the JAX backend, its devices and the profile in use; print it in a notebook's first cell."""
    profile = get_profile() if profile is None else profile
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    lines = [
        f"JAX {jax.__version__}, backend: {jax.default_backend()}",
        f"devices: {len(devices)} x {', '.join(kinds)} ({jax.process_count()} process(es))",
        f"profile: {profile.name} ({profile.description}); compute dtype {jnp.dtype(profile.compute_dtype).name}",
    ]
    if os.environ.get(ENV_VAR):
        lines[-1] += f"  [set by {ENV_VAR}]"
    return "\n".join(lines)
