"""vLLM's bitsandbytes and GGUF plugins: installed as in the image, each loaded only for models that
use it."""

import json

import pytest

import make_model  # bench/
from helpers import local_env, run_test_input
from worker_vllm import errors
from worker_vllm.startup import plugins, tiny_model

INSTALLED = {"bitsandbytes", "gguf", "lora_filesystem_resolver", "lora_hf_hub_resolver"}
WITHOUT_BOTH = {"VLLM_PLUGINS": "lora_filesystem_resolver,lora_hf_hub_resolver"}
WITH_BNB = {"VLLM_PLUGINS": "bitsandbytes,lora_filesystem_resolver,lora_hf_hub_resolver"}
WITH_GGUF = {"VLLM_PLUGINS": "gguf,lora_filesystem_resolver,lora_hf_hub_resolver"}
JOB = '{"input": {"prompt": "hello", "sampling_params": {"max_tokens": 4, "ignore_eos": true}}}'


def test_the_install_has_the_images_plugins():
    assert {plugins.BITSANDBYTES, plugins.GGUF} <= plugins.installed()


def test_the_plugins_stay_out_of_a_model_that_uses_neither():
    assert plugins.vllm_env({"MODEL_NAME": "acme/chat-7b"}, INSTALLED) == WITHOUT_BOTH
    assert plugins.vllm_env({}, INSTALLED - {"bitsandbytes", "gguf"}) == {}  # nothing to leave out


@pytest.mark.parametrize("env", [{"QUANTIZATION": "bitsandbytes"}, {"LOAD_FORMAT": "BitsAndBytes"}])
def test_bitsandbytes_loads_when_asked_for(env):
    assert plugins.vllm_env(env, INSTALLED) == WITH_BNB


@pytest.mark.parametrize("env", [{"QUANTIZATION": "awq", "VLLM_PLUGINS": "lora_hf_hub_resolver"},
                                 {"QUANTIZATION": "bitsandbytes", "VLLM_PLUGINS": ""}])
def test_vllm_plugins_set_by_the_user_wins(env):
    assert plugins.vllm_env(env, INSTALLED) == {}


def test_a_local_model_quantized_with_bitsandbytes_gets_the_plugin(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "bitsandbytes"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert plugins.vllm_env({"MODEL_NAME": str(tmp_path)}, INSTALLED) == WITH_BNB
    (tmp_path / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": "awq"}}))
    assert plugins.vllm_env({"MODEL_NAME": str(tmp_path)}, INSTALLED) == WITHOUT_BOTH


@pytest.mark.parametrize("env", [
    {"QUANTIZATION": "gguf", "MODEL_NAME": "acme/chat-7b"},
    {"LOAD_FORMAT": "GGUF"},
    {"MODEL_NAME": "/models/chat-7b-Q4_K_M.gguf"},  # a file, there or not
    {"MODEL": "/models/chat-7b-Q4_K_M.gguf"},  # vLLM's own name for it
    {"MODEL_NAME": "acme/chat-7b-GGUF/chat-7b-Q4_K_M.gguf"},  # a file of a Hub repo
    {"MODEL_NAME": "acme/chat-7b-GGUF:Q4_K_M"},  # the repo's file of that type
    {"MODEL_NAME": "acme/chat-7b-GGUF:UD-Q4_K_XL"},
])
def test_gguf_loads_for_a_gguf_model(env):
    assert plugins.vllm_env(env, INSTALLED) == WITH_GGUF


def test_gguf_by_a_local_folder_and_type_or_by_the_files_first_bytes(tmp_path):
    (tmp_path / "chat-7b-Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "model.bin").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "config.json").write_text("{}")
    assert plugins.uses_gguf({"MODEL_NAME": f"{tmp_path}:Q8_0"})
    assert plugins.uses_gguf({"MODEL_NAME": str(tmp_path / "model.bin")})
    assert not plugins.uses_gguf({"MODEL_NAME": str(tmp_path)})  # a Hugging Face folder
    assert not plugins.uses_gguf({"MODEL_NAME": str(tmp_path / "config.json")})
    assert not plugins.uses_gguf({"MODEL_NAME": "a" * 5000 + ":Q8_0"})  # no path can have that name


def test_the_worker_takes_for_gguf_what_the_plugin_does(tmp_path):
    from vllm_gguf_plugin.gguf_utils import is_gguf  # imports vLLM

    (tmp_path / "model.bin").write_bytes(b"GGUF\x03\x00\x00\x00")
    names = ["acme/chat-7b", "acme/chat-7b-GGUF", "acme/chat-7b-GGUF:Q8_0", "acme/chat-7b-GGUF:IQ2_M",
             "acme/chat-7b-GGUF:q4_k_m", "/models/x.gguf", "acme/r/x.gguf", str(tmp_path), f"{tmp_path}:Q4_K_M",
             str(tmp_path / "model.bin"), "acme/chat-7b:main", ""]
    # The plugin's own test (plugin.py's _is_gguf_reference). The worker's also takes repo_id:tag for
    # a tag that is no GGUF type: no Hub repo id has a ":", so that fails with the plugin as without it.
    theirs = {name for name in names if name.endswith(".gguf") or is_gguf(name)}
    ours = {name for name in names if plugins.uses_gguf({"MODEL_NAME": name})}
    assert theirs <= ours and ours - theirs == {"acme/chat-7b-GGUF:q4_k_m", "acme/chat-7b:main"}


@pytest.mark.parametrize("message", [
    "Unknown quantization method: gguf. Must be one of ['awq', 'auto_awq', 'fp8']",
    "Load format `gguf` is not supported",
    "It looks like the config file at '/models/chat-7b-Q8_0.gguf' is not a valid JSON file.",
])
def test_without_the_gguf_plugin_the_failure_says_to_list_it(message):
    # As vLLM 0.32 words them when the plugin did not load (VLLM_PLUGINS="" with QUANTIZATION=gguf,
    # LOAD_FORMAT=gguf, or MODEL_NAME a .gguf file).
    assert "Fix: where VLLM_PLUGINS is set, list gguf in it" in errors.startup_failure(ValueError(message))


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


@pytest.mark.process
def test_a_gguf_file_loads_on_cpu_up_to_the_plugins_kernels(tmp_path):
    """A Q8_0 GGUF of the embedded model, named by MODEL_NAME alone: the worker lets the plugin load,
    vLLM's engine and worker processes register it, the plugin reads the config and tokenizer from
    TOKENIZER_NAME's folder and makes the engine quantization=gguf, load_format=gguf, the weights
    load and the engine starts. The job's forward pass then fails, as it must on CPU: the plugin
    dequantizes with its CUDA extension (whose import fails here, libc10_cuda.so missing, and the
    plugin falls back) or with Triton kernels, and Triton has no CPU backend. An unquantized (F32)
    GGUF gets no further: vLLM 0.32's Llama gives its embedding no prefix, so the plugin takes it
    for quantized ("no module or parameter named 'embed_tokens.weight'")."""
    model = make_model.write_gguf(tiny_model.ensure(), tmp_path / "tiny-random-llama-Q8_0.gguf")
    env = local_env({"MODEL_NAME": str(model), "TOKENIZER_NAME": str(tiny_model.ensure()), "ENFORCE_EAGER": "true"})
    proc = run_test_input(JOB, tmp_path, env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "quantization=gguf" in log and "load_format=gguf" in log
    registered = {line.split(" pid=")[0] for line in log.splitlines() if "GGUFModelLoader'>` with load format" in line}
    assert {"(EngineCore", "(VllmWorker-0"} <= registered
    assert "ready" in next(line for line in log.splitlines() if "startup: process" in line)
    assert "job failed: EngineDeadError" in proc.stderr
    assert "ValueError: Triton dequant kernels require CUDA tensors" in log
