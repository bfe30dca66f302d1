"""Start-up failures: one line that names the cause and the fix. The failures are the real ones,
simulated: the Hub's answers go through huggingface_hub, transformers and vLLM's config code, and
the memory errors are raised by vLLM's own checks."""

import errno
import json
import logging
import multiprocessing
import os
import shutil
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import _http
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory
from vllm.v1.worker.utils import request_memory

from helpers import local_env, run_test_input
from worker_vllm import errors, main
from worker_vllm.startup import phases, tiny_model

GIB = 1 << 30


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface.co answering every request with `status` and the X-Error-Code `code`, and an
    empty Hugging Face cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def answer(status: int, code: str | None) -> None:
        def respond(request):
            return httpx2.Response(status, headers={"X-Error-Code": code} if code else {}, request=request)

        _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(respond)))

    yield answer
    _http.set_client_factory(_http.default_client_factory)


def start_failure(model: str, **kwargs) -> BaseException:
    """What vLLM raises while it reads the model's config, as `engine.Engine` asks it to."""
    with pytest.raises(Exception) as failure:
        EngineArgs(model=model, **kwargs).create_engine_config()
    return failure.value


def line(exc: BaseException, noted=()) -> str:
    text = errors.startup_failure(exc, noted)
    assert "\n" not in text
    return text


def test_a_revision_that_does_not_exist(hub):
    hub(404, "RevisionNotFound")
    text = line(start_failure("acme/chat-7b", revision="v9"))
    assert text.startswith("OSError: v9 is not a valid git identifier")
    assert text.endswith("Fix: pin MODEL_REVISION to a branch, tag or commit that exists in acme/chat-7b")


def test_a_repo_that_does_not_exist(hub):
    hub(404, "RepoNotFound")
    text = line(start_failure("acme/no-such-model"))
    assert text.startswith("OSError: acme/no-such-model is not a local folder and is not a valid model identifier")
    assert "Fix: check MODEL_NAME: acme/no-such-model is not a model on huggingface.co" in text
    assert "set HF_TOKEN to a token with access to it" in text


def test_a_gated_repo_without_access(hub):
    hub(401, "GatedRepo")
    text = line(start_failure("acme/gated-7b"))
    assert text.startswith("OSError: You are trying to access a gated repo.")
    assert text.endswith("Fix: acme/gated-7b is gated: accept its terms on huggingface.co, and set HF_TOKEN "
                         "to a token of an account that has access")


def test_a_model_name_that_is_neither_a_folder_nor_a_repo_id(hub, tmp_path):
    hub(404, "RepoNotFound")
    text = line(start_failure(str(tmp_path / "models" / "no-such-model")))
    assert "Repo id must be in the form" in text  # transformers wraps huggingface_hub's HFValidationError
    assert text.endswith("Fix: check MODEL_NAME: it is neither a folder that exists nor a Hugging Face repo id (org/name)")


def test_offline_without_the_model_in_the_cache(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    text = line(start_failure("acme/not-cached"))
    assert "Fix: HF_HUB_OFFLINE is set but the model is not in the Hugging Face cache" in text


def test_the_hub_out_of_reach_without_the_model_in_the_cache():
    from huggingface_hub.errors import LocalEntryNotFoundError

    exc = LocalEntryNotFoundError(  # huggingface_hub's words when the request fails
        "An error happened while trying to locate the file on the Hub and we cannot find the requested files"
        " in the local cache. Please check your connection and try again or make sure your Internet connection"
        " is on.")
    assert "Fix: huggingface.co could not be reached and the model is not in the cache" in line(exc)


def kv_cache_failure(available: int, needed: int, estimate: int = 0) -> ValueError:
    with pytest.raises(ValueError) as failure:
        _check_enough_kv_cache_memory(available, lambda: needed, 32768, lambda memory: estimate)
    return failure.value


def test_a_kv_cache_too_small_for_max_model_len():
    text = line(kv_cache_failure(2 * GIB, 4 * GIB, estimate=15872))
    assert text.startswith("ValueError: To serve at least one request with the model's max seq len (32768)")
    assert text.endswith("Fix: lower MAX_MODEL_LEN (15872 fits, vLLM estimates) or raise GPU_MEMORY_UTILIZATION "
                         "(or KV_CACHE_MEMORY_BYTES, where set), or use more GPUs: TENSOR_PARALLEL_SIZE")


def test_no_memory_left_for_the_kv_cache():
    text = line(kv_cache_failure(0, GIB))
    assert text.startswith("ValueError: No available memory for the cache blocks.")
    assert "Fix: the weights leave no memory for the KV cache: raise GPU_MEMORY_UTILIZATION" in text


def test_another_process_holds_gpu_memory():
    snapshot = SimpleNamespace(device_="cuda:0", total_memory=80 * GIB, free_memory=40 * GIB)
    with pytest.raises(ValueError) as failure:
        request_memory(snapshot, SimpleNamespace(gpu_memory_utilization=0.9))
    text = line(failure.value)
    assert text.startswith("ValueError: Free memory on device cuda:0 (40.0/80.0 GiB) on startup is less than desired")
    assert text.endswith("Fix: lower GPU_MEMORY_UTILIZATION: another process holds part of the GPU's memory")


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
                           " of which 1.06 GiB is free."),
    RuntimeError("CUDA out of memory occurred when warming up sampler with 256 dummy requests. Please try lowering "
                 "`max_num_seqs` or `gpu_memory_utilization` when initializing the engine."),  # vLLM's
])
def test_out_of_gpu_memory(exc):
    assert line(exc).endswith("Fix: out of GPU memory: lower GPU_MEMORY_UTILIZATION or MAX_NUM_SEQS (vLLM needs "
                              "room outside its share for activations and CUDA graphs); if the weights do not fit, "
                              "use more GPUs (TENSOR_PARALLEL_SIZE) or a quantized model")


def test_a_full_disk_even_wrapped():
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/root/.cache/huggingface/hub/x.incomplete")
        except OSError as e:
            raise RuntimeError("download failed") from e
    except RuntimeError as e:
        text = line(e)
    assert text == ("RuntimeError: download failed. Fix: the disk is full: the container disk is too small for "
                    "the model; attach a network volume or raise the container disk size")


def test_a_failure_with_no_known_fix_is_the_line_it_was():
    assert line(KeyError("architectures")) == "KeyError: 'architectures'"
    assert errors.startup_hint(ValueError("something else")) is None


ENGINE_CORE_FAILED = "Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}"


def test_an_engine_process_failure_reads_the_cause_that_process_logged(tmp_path, monkeypatch):
    notes = tmp_path / "phases"
    monkeypatch.setenv(phases.FILE_ENV, str(notes))
    # Without notes: where to look.
    assert line(RuntimeError(ENGINE_CORE_FAILED)).endswith(
        "Fix: the cause is in the log lines of vLLM's engine process above (EngineCore failed to start)")
    notes.touch()
    phases.record_engine_phases()  # as hooks.install does in every process; forked ones inherit it
    child = multiprocessing.get_context("fork").Process(target=_engine_core_that_fails)
    child.start()
    child.join(60)
    text = line(RuntimeError(ENGINE_CORE_FAILED), phases.engine_failures(notes))
    assert text.startswith("ValueError in vLLM's engine process: To serve at least one request")
    assert "Fix: lower MAX_MODEL_LEN (1024 fits, vLLM estimates)" in text
    assert phases.engine_phases(notes) == {}  # a failure is no phase


def test_a_model_worker_failure_is_the_cause_not_the_engine_process_pointing_at_it():
    # As vLLM 0.32 logs them when its model worker fails (QUANTIZATION=fp8 on a CPU): the worker's
    # exception, then the engine process's, which only says the cause is elsewhere.
    noted = [{"type": "RuntimeError", "message": "_C::static_scaled_fp8_quant() expected at most 0 argument(s)"},
             {"type": "Exception", "message": "WorkerProc initialization failed due to an exception in a "
                                              "background process. See stack trace for root cause."}]
    text = line(RuntimeError(ENGINE_CORE_FAILED), noted)
    assert text == "RuntimeError in vLLM's engine process: _C::static_scaled_fp8_quant() expected at most 0 argument(s)"


def _engine_core_that_fails():  # as vLLM's run_engine_core does, in a forked process
    try:
        _check_enough_kv_cache_memory(GIB, lambda: 2 * GIB, 2048, lambda memory: 1024)
    except Exception:
        logging.getLogger("vllm.v1.engine.core").exception("EngineCore failed to start.")
        os._exit(1)


def test_start_or_exit_exits_1_with_the_line(hub, monkeypatch, tmp_path):
    from worker_vllm import worker

    hub(404, "RevisionNotFound")

    def start(env, startup, front_ends):
        EngineArgs(model="acme/chat-7b", revision="v9").create_engine_config()

    monkeypatch.setattr(worker, "start", start)
    startup = SimpleNamespace(env={}, caches="caches: -", failures=[])
    with pytest.raises(SystemExit) as exit_:
        main.start_or_exit(startup)
    assert str(exit_.value.code).startswith("startup failed: OSError: v9 is not a valid git identifier")
    assert str(exit_.value.code).endswith("Fix: pin MODEL_REVISION to a branch, tag or commit that exists in acme/chat-7b")


@pytest.mark.process
def test_a_worker_that_cannot_start_says_why_and_what_to_change(tmp_path):
    model = shutil.copytree(tiny_model.ensure(), tmp_path / "model")
    env = local_env({"MODEL_NAME": str(model), "MAX_MODEL_LEN": "1000000", "ENFORCE_EAGER": "true"})
    proc = run_test_input(json.dumps({"input": {"prompt": "x"}}), tmp_path, env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("startup failed: ValidationError: input: Value error, User-specified max_model_len "
                           "(1000000) is greater than the derived max_model_len"), proc.stderr[-3000:]
    assert last.endswith("Fix: lower MAX_MODEL_LEN to 2048 or less, the model's max_position_embeddings")
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
