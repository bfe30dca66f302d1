"""vLLM's bitsandbytes plugin: installed as in the image, loaded only for models that use it."""

import json

import pytest

from helpers import local_env, run_test_input
from worker_vllm.startup import plugins

INSTALLED = {"bitsandbytes", "lora_filesystem_resolver", "lora_hf_hub_resolver"}
WITHOUT_BNB = {"VLLM_PLUGINS": "lora_filesystem_resolver,lora_hf_hub_resolver"}
JOB = '{"input": {"prompt": "hello", "sampling_params": {"max_tokens": 4, "ignore_eos": true}}}'


def test_the_install_has_the_images_bitsandbytes_plugin():
    assert plugins.BITSANDBYTES in plugins.installed()


def test_the_plugin_stays_out_of_a_model_that_does_not_use_it():
    assert plugins.vllm_env({"MODEL_NAME": "acme/chat-7b"}, INSTALLED) == WITHOUT_BNB
    assert plugins.vllm_env({}, INSTALLED - {"bitsandbytes"}) == {}  # nothing to leave out


@pytest.mark.parametrize("env", [{"QUANTIZATION": "bitsandbytes"}, {"LOAD_FORMAT": "BitsAndBytes"},
                                 {"QUANTIZATION": "awq", "VLLM_PLUGINS": "lora_hf_hub_resolver"}])
def test_the_plugin_loads_when_asked_for_and_vllm_plugins_wins(env):
    assert plugins.vllm_env(env, INSTALLED) == {}


def test_a_local_model_quantized_with_bitsandbytes_gets_the_plugin(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "bitsandbytes"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert plugins.vllm_env({"MODEL_NAME": str(tmp_path)}, INSTALLED) == {}
    (tmp_path / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": "awq"}}))
    assert plugins.vllm_env({"MODEL_NAME": str(tmp_path)}, INSTALLED) == WITHOUT_BNB


@pytest.mark.process
def test_quantization_bitsandbytes_serves_the_embedded_model(tmp_path):
    # bfloat16: the plugin's 4-bit packing of float32 weights fails its shape check on CPU.
    proc = run_test_input(JOB, tmp_path, local_env({"QUANTIZATION": "bitsandbytes", "DTYPE": "bfloat16"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quantization=bitsandbytes" in proc.stdout + proc.stderr
    (item,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert item["usage"]["output"] == 4 and item["choices"][0]["text"]


@pytest.mark.process
def test_without_the_plugin_the_failure_says_to_set_quantization(tmp_path):
    proc = run_test_input(JOB, tmp_path, local_env({"QUANTIZATION": "bitsandbytes", "VLLM_PLUGINS": ""}))
    assert proc.returncode == 1
    (failure,) = [line for line in proc.stderr.splitlines() if line.startswith("startup failed:")]
    assert "Unknown quantization method: bitsandbytes" in failure
    assert "Fix: set QUANTIZATION=bitsandbytes" in failure and "list bitsandbytes in it" in failure
