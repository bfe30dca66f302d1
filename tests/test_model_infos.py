"""builder/model_infos.py (the image build runs it) fills vLLM's model-info cache, and a worker
that finds it does not inspect the model's class in a second Python process."""

import json
import os
import subprocess
import sys

from conftest import ROOT

LLAMA_INFO = "modelinfos/vllm-model_executor-models-llama-LlamaForCausalLM.json"


def test_a_worker_uses_the_model_infos_the_image_build_wrote(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MODEL_NAME"} | {"VLLM_CACHE_ROOT": str(tmp_path / "vllm")}
    built = subprocess.run([sys.executable, str(ROOT / "builder" / "model_infos.py"), "LlamaForCausalLM"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert "model_infos: 0 architectures not inspected here" in built.stdout, built.stderr[-3000:]
    assert json.loads((tmp_path / "vllm" / LLAMA_INFO).read_text())["modelinfo"]["architecture"] == "LlamaForCausalLM"

    job = '{"input": {"prompt": "hi", "sampling_params": {"max_tokens": 2}}}'  # the embedded model: a Llama
    run = subprocess.run([sys.executable, str(ROOT / "src" / "handler.py"), "--test_input", job], cwd=tmp_path,
                         env=env | {"VLLM_LOGGING_LEVEL": "DEBUG"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LlamaForCausalLM from cache" in run.stdout + run.stderr
    assert "Loading model instead" not in run.stdout + run.stderr
