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


# ---- the hardware decides dtype and compilation cache ------------------------------------------------------------

from labkit import profiles  # noqa: E402
from labkit.profiles import Accelerator, has_bfloat16  # noqa: E402


@pytest.mark.parametrize("hardware, fast", [
    (Accelerator("tpu"), True), (Accelerator("gpu", "cuda", (9, 0)), True), (Accelerator("gpu", "cuda", (8, 0)), True),
    (Accelerator("gpu", "cuda", (7, 5)), False), (Accelerator("gpu", "cuda", (7, 0)), False),  # T4, V100
    (Accelerator("gpu", "rocm"), True), (Accelerator("gpu", "cuda", None), False), (Accelerator("cpu"), False)])
def test_bfloat16_only_where_the_hardware_has_it(hardware, fast):
    assert has_bfloat16(hardware) is fast


@pytest.mark.parametrize("capability, dtype", [((7, 5), jnp.float32), ((8, 6), jnp.bfloat16)])
def test_gpu_profile_on_its_own_gpu_picks_dtype_and_turns_on_the_compilation_cache(monkeypatch, capability, dtype):
    cached = []
    monkeypatch.setattr(profiles, "accelerator", lambda: Accelerator("gpu", "cuda", capability))
    monkeypatch.setattr(profiles, "enable_compilation_cache", lambda directory=None: cached.append(directory))
    profile = get_profile("gpu")
    assert profile.compute_dtype == dtype and cached == [None]
    assert ("float32" in profile.description) is (dtype == jnp.float32)


def test_a_profile_named_on_other_hardware_changes_nothing(monkeypatch):
    monkeypatch.setattr(profiles, "enable_compilation_cache", lambda directory=None: pytest.fail("cache turned on"))
    monkeypatch.setattr(profiles, "accelerator", lambda: Accelerator("cpu"))
    assert get_profile("gpu") == profiles.PROFILES["gpu"] and get_profile("tpu").remat
    assert get_profile("cpu") == profiles.PROFILES["cpu"] and get_profile("ci") == profiles.PROFILES["ci"]


def test_compilation_cache_goes_to_the_labkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    before = jax.config.jax_compilation_cache_dir
    try:
        assert profiles.enable_compilation_cache() == tmp_path / "jax"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax") and (tmp_path / "jax").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_profile_text_says_one_device_until_a_model_is_sharded():
    for name in ("gpu", "tpu"):
        text = profiles.PROFILES[name].description
        assert "one " in text and "or more" not in text and "device 0" in text
