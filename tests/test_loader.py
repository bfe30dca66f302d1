"""FAST_BOOT's weight loader (startup/loader.py): InstantTensor only where it loads what vLLM's
default loader would. It runs on NVIDIA GPUs only: bench/gpu_run.sh start_compare measures it there
(docs/benchmarks.md)."""

import json

import pytest

from worker_vllm.startup import loader, prefetch


def shards(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"w")
    return prefetch.weight_files(folder)


def pick(env, weights, fast_boot=True, gpu=True):
    return loader.load_format(env, weights, fast_boot=fast_boot, gpu=gpu)


def test_fast_boot_on_a_gpu_loads_local_safetensors_with_instanttensor(tmp_path):
    weights = shards(tmp_path, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert pick({"MODEL_NAME": str(tmp_path)}, weights) == "instanttensor"


@pytest.mark.parametrize("fast_boot, gpu", [(False, True), (True, False)])
def test_not_without_fast_boot_or_a_gpu(tmp_path, fast_boot, gpu):
    weights = shards(tmp_path, "model.safetensors")
    assert pick({"MODEL_NAME": str(tmp_path)}, weights, fast_boot, gpu) is None


def test_not_for_weights_that_are_not_here_yet():
    assert pick({"MODEL_NAME": "org/name"}, []) is None  # vLLM downloads them


def test_a_load_format_other_than_vllms_choice_decides(tmp_path):
    weights = shards(tmp_path, "model.safetensors")
    assert pick({"MODEL_NAME": str(tmp_path), "LOAD_FORMAT": "safetensors"}, weights) is None
    # `auto` (the Hub listing's default) and an empty value leave it to vLLM: the worker picks.
    assert pick({"MODEL_NAME": str(tmp_path), "LOAD_FORMAT": "auto"}, weights) == "instanttensor"
    assert pick({"MODEL_NAME": str(tmp_path), "LOAD_FORMAT": ""}, weights) == "instanttensor"


@pytest.mark.parametrize("names", [["pytorch_model.bin"],  # InstantTensor reads safetensors only
                                   ["consolidated.safetensors", "model.safetensors"]])  # vLLM picks Mistral's
def test_not_for_weights_vllms_default_loader_would_read_otherwise(tmp_path, names):
    weights = shards(tmp_path, *names)
    assert weights and pick({"MODEL_NAME": str(tmp_path)}, weights) is None


def test_not_for_bitsandbytes_or_gguf_which_their_plugins_load(tmp_path):
    weights = shards(tmp_path, "model.safetensors")
    assert pick({"MODEL_NAME": str(tmp_path), "QUANTIZATION": "bitsandbytes"}, weights) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    assert pick({"MODEL_NAME": str(tmp_path)}, weights) is None
    gguf = tmp_path / "chat-7b-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    assert pick({"MODEL_NAME": str(gguf)}, [gguf]) is None
