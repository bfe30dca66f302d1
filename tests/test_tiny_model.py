"""The embedded tiny model: deterministic, small, and shaped for vLLM's CPU kernels."""

import hashlib
import json

from worker_vllm.startup import tiny_model


def digest(path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_builds_the_same_files_every_time(tmp_path):
    first = tiny_model.build(tmp_path / "a")
    second = tiny_model.build(tmp_path / "b")
    assert digest(first) == digest(second)
    assert sum(f.stat().st_size for f in first.iterdir()) < 8 * 2**20
    config = json.loads((first / "config.json").read_text())
    assert config["head_dim"] == 64 and config["model_type"] == "llama"
    assert "chat_template" in (first / "tokenizer_config.json").read_text() or (first / "chat_template.jinja").exists()


def test_ensure_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_MODEL_DIR", str(tmp_path / "cache"))
    path = tiny_model.ensure()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.ensure() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
