"""Runpod cached models: found in the volume's Hugging Face cache whatever the case of the repo's
folder, served offline under the repo id; kernel caches go to the volume only when it is writable."""

import json
import shutil
from pathlib import Path

import pytest

from helpers import local_env, run_test_input
from worker_vllm.startup import cached_model, caches, environment, tiny_model

REPO, COMMIT = "Acme/Tiny-Chat", "0123456789abcdef0123456789abcdef01234567"


def cache_tree(volume: Path, folder: str = "models--acme--tiny-chat") -> Path:
    """The tiny model in Hugging Face's cache layout, the repo's folder in lower case, as Runpod's
    store has been seen to write it."""
    repo = volume / "huggingface-cache" / "hub" / folder
    shutil.copytree(tiny_model.ensure(), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def test_finds_the_snapshot_whatever_the_case_of_the_folder(tmp_path):
    snapshot = cache_tree(tmp_path)
    hub = tmp_path / "huggingface-cache" / "hub"
    assert cached_model.find(hub, REPO, "main") == snapshot
    assert cached_model.find(hub, REPO, COMMIT) == snapshot
    assert cached_model.find(hub, REPO, "v2") is None
    assert cached_model.find(hub, "acme/other", "main") is None
    assert cached_model.find(tmp_path / "nowhere", REPO, "main") is None


def test_serves_the_snapshot_under_the_repo_id(tmp_path):
    snapshot = cache_tree(tmp_path)
    env = cached_model.apply({"MODEL_NAME": REPO, "MODEL_REVISION": "main"}, tmp_path / "huggingface-cache" / "hub")
    assert env == {"MODEL_NAME": str(snapshot), "OPENAI_SERVED_MODEL_NAME_OVERRIDE": REPO}
    assert cached_model.apply({"MODEL_NAME": "other/model"}, tmp_path)["MODEL_NAME"] == "other/model"


def test_kernel_caches_go_to_the_volume_only_when_it_is_writable(tmp_path):
    assert caches.writable(tmp_path)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    (read_only / "cache").write_text("")  # the cache folder cannot be made: as on a read-only mount
    assert not caches.writable(read_only) and not caches.writable(tmp_path / "missing")
    places = caches.cache_env({"MODEL_NAME": REPO}, read_only, baked=tmp_path / "no-image")
    assert places == {}
    assert caches.describe({}, places, read_only) == (
        f"caches: kernel caches on the container disk (vLLM's defaults): {read_only} is not writable")
    places = caches.cache_env({"MODEL_NAME": REPO}, tmp_path, gpu="NVIDIA H200")
    assert caches.describe(places, places, tmp_path).startswith(
        f"caches: kernel caches in {tmp_path}/cache/Acme-Tiny-Chat/")
    # builder/warm_cache.py, or the user, set the places already: the line says so, not "not writable"
    assert caches.describe({"VLLM_CACHE_ROOT": "/data/vllm"}, {}, read_only) == (
        "caches: kernel caches where the environment puts them: VLLM_CACHE_ROOT=/data/vllm")


def test_prepare_fills_in_the_cached_model_and_reads_it_ahead(tmp_path):
    snapshot = cache_tree(tmp_path)
    (tmp_path / "cache").write_text("")  # read-only stand-in
    environ = {"MODEL_NAME": REPO, "RUNPOD_VOLUME_PATH": str(tmp_path)}
    startup = environment.prepare(environ)
    try:
        assert startup.env["MODEL_NAME"] == str(snapshot)
        assert "HF_HOME" not in environ and "VLLM_CACHE_ROOT" not in environ
        assert "is not writable" in startup.caches
        assert startup.prefetching is not None
    finally:
        startup.engine_started()


@pytest.mark.process
def test_a_worker_serves_a_lower_case_cached_model_offline_under_its_repo_id(tmp_path):
    volume = tmp_path / "volume"
    cache_tree(volume)
    (volume / "cache").write_text("")  # read-only stand-in: kernel caches go to the container disk
    env = local_env({"MODEL_NAME": REPO, "RUNPOD_VOLUME_PATH": str(volume), "HF_HUB_OFFLINE": "1",
                     "HF_ENDPOINT": "http://127.0.0.1:9", "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "1024"})
    proc = run_test_input(json.dumps({"input": {"openai_route": "/v1/models"}}), tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"object": "list"')))
    assert [m["id"] for m in models["data"]] == [REPO]
    assert "caches: kernel caches on the container disk" in proc.stdout + proc.stderr
    assert "prefetch: " in proc.stdout + proc.stderr
