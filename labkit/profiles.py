"""Compute profiles: one name that sizes every notebook for the machine it runs on.

``ci`` finishes each notebook in seconds (tests), ``cpu`` in at most a few minutes on a 2-core laptop, and ``gpu`` /
``tpu`` run at full size. The profile is chosen from ``jax.default_backend()`` unless the environment variable
``LABKIT_PROFILE`` names one.

>>> profile = get_profile("ci")
>>> profile.pick(ci=2, cpu=20, gpu=200)
2
"""

from __future__ import annotations

import dataclasses
import os
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

    def pick(self, *, ci: T, cpu: T, gpu: T | None = None, tpu: T | None = None) -> T:
        """The value for this profile; ``gpu`` defaults to ``cpu``'s value and ``tpu`` to ``gpu``'s."""
        gpu_value = cpu if gpu is None else gpu
        tpu_value = gpu_value if tpu is None else tpu
        return {"ci": ci, "cpu": cpu, "gpu": gpu_value, "tpu": tpu_value}[self.name]


PROFILES: dict[str, Profile] = {
    "ci": Profile(name="ci", compute_dtype=jnp.float32, description="tiny sizes, seconds per notebook (tests)"),
    "cpu": Profile(name="cpu", compute_dtype=jnp.float32, description="laptop sizes, minutes per notebook"),
    "gpu": Profile(name="gpu", compute_dtype=jnp.bfloat16, description="full sizes on one or more GPUs"),
    "tpu": Profile(name="tpu", compute_dtype=jnp.bfloat16, description="full sizes on TPU cores"),
}

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
        return PROFILES[_BACKEND_TO_PROFILE[backend]]
    if not isinstance(name, str) or name.strip().lower() not in PROFILES:
        raise ValueError(f"{source} must be one of {', '.join(PROFILE_NAMES)}; got {name!r}")
    return PROFILES[name.strip().lower()]


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
