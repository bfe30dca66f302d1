"""The start-up breakdown: vLLM's phase log records, noted in the file the worker names (no engine;
tests/test_runpod_loop.py checks the line a real start logs)."""

import logging
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from worker_vllm.startup import phases

VLLM_LINES = [  # as vLLM 0.32 logs them on a GPU, from two tensor-parallel workers
    "Initializing model took 0.500000 seconds",
    "Loading weights took 2.10 seconds",
    "Model loading took 7.5 GiB memory and 3.25 seconds",
    "Model loading took 7.5 GiB memory and 3.75 seconds",
    "torch.compile took 20.50 s in total",
    "Graph capturing finished in 6 secs, took 0.53 GiB",
    "init engine (profile, create kv cache, warmup model) took 31.00 s (compilation: 20.50 s)",
]


@pytest.fixture
def phases_file(tmp_path, monkeypatch):
    """The phases file, named in this process's environment, with the recorder installed."""
    path = tmp_path / "phases"
    path.touch()
    monkeypatch.setenv(phases.FILE_ENV, str(path))
    phases.record_engine_phases()
    return path


@pytest.fixture
def log():
    """A vLLM logger, as vLLM's own modules log through."""
    logger = logging.getLogger("vllm.test")
    logger.setLevel(logging.INFO)
    return logger


def test_vllm_phase_records_are_noted_and_summed_up(phases_file, log):
    for line in VLLM_LINES:
        log.info(line)
    logging.getLogger("somebody.else").warning("Loading weights took 99 seconds")  # not vLLM's

    found = phases.engine_phases(phases_file)
    # vLLM's model load is split: building the model, its weights, and what came after them.
    assert found == pytest.approx({"model build": 0.5, "weight load": 2.1, "weight processing": 1.15,
                                   "torch.compile": 20.5, "CUDA graphs": 6.0, "KV cache profiling and warm-up": 4.5})
    assert list(found)[:3] == ["model build", "weight load", "weight processing"]
    line = phases.summary(25.0, 0.25, 35.0, found)
    assert line == ("startup: process and imports 25.0 s, config 0.2 s, engine 35.0 s (model build 0.5 s, "
                    "weight load 2.1 s, weight processing 1.1 s, torch.compile 20.5 s, CUDA graphs 6.0 s, "
                    "KV cache profiling and warm-up 4.5 s); ready 60.2 s after process start")
    # A wait for the runpod SDK's checks (startup.fitness) is named, and is not the engine's.
    assert phases.summary(25.0, 0.25, 35.0, {}, checks=1.5) == (
        "startup: process and imports 25.0 s, config 0.2 s, runpod SDK checks 1.5 s, engine 35.0 s; "
        "ready 61.8 s after process start")


def test_a_loader_that_logs_no_weights_line_has_its_model_load_named_weight_load(phases_file, log):
    log.info("Initializing model took 1.000000 seconds")
    log.info("Model loading took 15.0 GiB memory and 6.500000 seconds")
    assert phases.engine_phases(phases_file) == {"model build": 1.0, "weight load": 5.5}


def test_the_engine_and_worker_process_starts_are_timed_from_their_first_records(phases_file, log, monkeypatch):
    began = time.time()
    times = iter([began + 6.0, began + 11.5])  # the engine process's first record, then its worker's
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: next(times))  # what logging stamps a record with
        log.info("Initializing a V1 LLM engine (v0.32.0) with config: model='m'")
        log.info("Starting to load model /models/m...")
    log.info("Loading weights took 2.10 seconds")

    found = phases.engine_phases(phases_file, began)
    assert list(found) == ["engine process start", "worker start", "weight load"]
    assert found["engine process start"] == pytest.approx(6.0) and found["worker start"] == pytest.approx(5.5)
    assert "engine process start" not in phases.engine_phases(phases_file)  # no start time: not named


def test_the_gpu_model_runner_s_start_is_timed_too(phases_file, log, monkeypatch):
    began = time.time()
    times = iter([began + 1.2, began + 3.3])
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: next(times))
        log.info("Initializing a V1 LLM engine (v0.32.0) with config: model='m'")
        log.info("Loading model from scratch...")  # vLLM 0.32's v2 model runner, on a GPU
    assert phases.engine_phases(phases_file, began)["worker start"] == pytest.approx(2.1)


def test_nothing_is_noted_once_the_worker_removed_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(phases.FILE_ENV, str(tmp_path / "gone"))
    phases.record_engine_phases()
    logging.getLogger("vllm.test").info("torch.compile took 1.00 s in total")
    assert not (tmp_path / "gone").exists()
    assert phases.engine_phases(tmp_path / "gone") == {}


def test_seconds_since_process_start_counts_from_the_process_launch():
    launched = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from worker_vllm.startup import phases; import time; time.sleep(0.3); "
                           "print(phases.seconds_since_process_start())"],
                          cwd=ROOT / "src", capture_output=True, text=True, timeout=60, check=True)
    took = time.monotonic() - launched
    assert 0.3 <= float(done.stdout) <= took + 0.01  # the kernel notes the start in 10 ms ticks
