import jax
import jax.numpy as jnp
import pytest

import labkit
from labkit.profiles import PROFILE_NAMES, get_profile


def test_backend_default_when_env_unset(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    expected = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}[jax.default_backend()]
    assert get_profile().name == expected


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_env_var_overrides(monkeypatch, name):
    monkeypatch.setenv("LABKIT_PROFILE", name.upper())
    assert get_profile().name == name


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "laptop")
    with pytest.raises(ValueError) as info:
        get_profile()
    message = str(info.value)
    assert "LABKIT_PROFILE" in message and "'laptop'" in message
    assert all(name in message for name in PROFILE_NAMES)
    with pytest.raises(ValueError, match="argument 'name'"):
        get_profile("big")


def test_pick_falls_back_gpu_to_cpu_and_tpu_to_gpu():
    assert get_profile("ci").pick(ci=1, cpu=2) == 1
    assert get_profile("gpu").pick(ci=1, cpu=2) == 2
    assert get_profile("tpu").pick(ci=1, cpu=2, gpu=3) == 3
    assert get_profile("tpu").pick(ci=1, cpu=2, gpu=3, tpu=4) == 4


def test_compute_dtype_is_fp32_on_cpu_profiles():
    assert get_profile("cpu").compute_dtype == jnp.float32
    assert get_profile("gpu").compute_dtype == jnp.bfloat16


def test_device_summary_names_backend_devices_and_profile():
    text = labkit.device_summary(get_profile("ci"))
    assert jax.default_backend() in text
    assert f"devices: {len(jax.devices())}" in text
    assert "profile: ci" in text
