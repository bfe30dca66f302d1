"""Caches go on the network volume when one is mounted."""

import storage


def test_caches_on_the_volume(tmp_path):
    env = storage.cache_env({}, volume=tmp_path)
    assert env["HF_HOME"] == str(tmp_path / "huggingface-cache")
    assert {"VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE"} <= set(env)
    assert all(value.startswith(str(tmp_path)) for value in env.values())


def test_no_volume_no_change(tmp_path):
    assert storage.cache_env({}, volume=tmp_path / "missing") == {}


def test_variables_the_user_set_win(tmp_path):
    assert "HF_HOME" not in storage.cache_env({"HF_HOME": "/data/hf"}, volume=tmp_path)
