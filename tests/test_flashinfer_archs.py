"""FLASHINFER_CUDA_ARCH_LIST: set from the GPUs where tensor parallelism could import FlashInfer in
the worker's process, so that the import starts no CUDA there and vLLM forks its engine process."""

import pytest

from worker_vllm.startup import flashinfer_archs


def never() -> list[str]:
    raise AssertionError("asked the GPUs with one GPU or the variable set")


def test_several_gpus_name_their_architectures_once_each():
    assert flashinfer_archs.vllm_env({}, 2, lambda: ["9.0", "9.0"]) == {"FLASHINFER_CUDA_ARCH_LIST": "9.0"}
    assert flashinfer_archs.vllm_env({}, 3, lambda: ["9.0", "8.0", "9.0"]) == {"FLASHINFER_CUDA_ARCH_LIST": "8.0 9.0"}


@pytest.mark.parametrize(("env", "gpus"), [({}, 1), ({}, 0), ({"FLASHINFER_CUDA_ARCH_LIST": "10.0f"}, 8)])
def test_one_gpu_or_the_users_own_list_asks_nothing(env, gpus):
    assert flashinfer_archs.vllm_env(env, gpus, never) == {}


def test_no_answer_leaves_flashinfer_to_ask_itself():
    assert flashinfer_archs.vllm_env({}, 2, lambda: []) == {}
