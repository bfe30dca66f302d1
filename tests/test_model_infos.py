"""builder/model_infos.py (the image build runs it) fills vLLM's model-info cache, and a worker
that finds it does not inspect the model's class in a second Python process: also when its caches
are elsewhere (a network volume's first start), as the worker copies the image's there."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, run_test_input

pytestmark = pytest.mark.process  # each test starts worker processes of its own

LLAMA_INFO = "modelinfos/vllm-model_executor-models-llama-LlamaForCausalLM.json"


def test_a_worker_uses_the_model_infos_the_image_build_wrote(tmp_path):
    # The image's default cache root (vLLM's: $XDG_CACHE_HOME/vllm), where the build writes.
    env = ({k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "VLLM_CACHE_ROOT")}
           | {"XDG_CACHE_HOME": str(tmp_path / "image")})
    built = subprocess.run([sys.executable, str(ROOT / "builder" / "model_infos.py"), "LlamaForCausalLM"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert "model_infos: 0 architectures not inspected here" in built.stdout, built.stderr[-3000:]
    image_info = tmp_path / "image" / "vllm" / LLAMA_INFO
    assert json.loads(image_info.read_text())["modelinfo"]["architecture"] == "LlamaForCausalLM"

    # A worker whose caches are elsewhere, empty, as on a new network volume.
    volume_root = tmp_path / "volume" / "vllm"
    job = '{"input": {"prompt": "hi", "sampling_params": {"max_tokens": 2}}}'  # the embedded model: a Llama
    run = run_test_input(job, tmp_path, env | {"VLLM_CACHE_ROOT": str(volume_root), "VLLM_LOGGING_LEVEL": "DEBUG"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LlamaForCausalLM from cache" in run.stdout + run.stderr
    assert "Loading model instead" not in run.stdout + run.stderr
    assert (volume_root / LLAMA_INFO).read_text() == image_info.read_text()
