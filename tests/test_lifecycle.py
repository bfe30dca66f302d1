"""The worker process under the runpod SDK: SIGTERM, engine death, start-up failure."""

import re
import signal
import time

import psutil
import pytest

from helpers import local_env, run_test_input
from worker_vllm.local.fake_runpod import FakeRunpod, start_worker, wait_for

pytestmark = pytest.mark.process  # each test starts worker processes of its own


def long_job(job_id: str, max_tokens: int = 2000) -> dict:
    return {"id": job_id, "input": {"prompt": "hello", "stream": True, "max_batch_size": 4,
                                    "sampling_params": {"max_tokens": max_tokens, "ignore_eos": True}}}


def test_sigterm_finishes_short_jobs_aborts_long_ones_after_the_grace_and_exits_0(tmp_path):
    fake = FakeRunpod([long_job("long"), long_job("short", 40)])
    proc, log_path = start_worker(fake, tmp_path, {"SHUTDOWN_GRACE_SECONDS": "0.5"})
    try:
        assert wait_for(lambda: "long" in fake.streamed and "short" in fake.streamed, 300), log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)  # a job-take request already under way may still bring jobs
        fake.queue.append(long_job("after-sigterm", 4))
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        assert time.monotonic() - signalled < 20
    finally:
        proc.kill()
        fake.close()
    assert "error" not in fake.done["short"] and fake.done["short"]["output"][-1]["usage"]["output"] == 40
    error = fake.done["long"]["error"]
    assert error.startswith("the worker is shutting down; generation was aborted. Partial output:")
    assert fake.queue == [long_job("after-sigterm", 4)], "took a job after SIGTERM"


def openai_job(job_id: str, stream: bool) -> dict:
    return {"id": job_id, "input": {"openai_route": "/v1/chat/completions", "openai_input": {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos": True, "stream": stream}}}


def test_engine_death_fails_jobs_in_flight_and_exits_non_zero_within_5_s(tmp_path):
    victims = [long_job("victim"), openai_job("openai-stream", True), openai_job("openai-json", False)]
    fake = FakeRunpod(victims)
    proc, log_path = start_worker(fake, tmp_path, {})
    try:
        assert wait_for(lambda: "victim" in fake.streamed and "openai-stream" in fake.streamed, 300), \
            log_path.read_text()[-3000:]
        cores = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
        assert cores, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        for core in cores:
            core.kill()
        killed = time.monotonic()
        code = proc.wait(timeout=30)
        exited_after = time.monotonic() - killed
    finally:
        proc.kill()
        fake.close()
    assert code != 0
    assert exited_after < 5, f"exited {exited_after:.1f} s after the engine died"
    # Every job in flight fails with the cause, none is reported as a success: the native stream, an
    # OpenAI stream that vLLM ends with an error event, and an OpenAI request waiting for its answer.
    for job in victims:
        assert "vLLM engine died" in str(fake.done[job["id"]].get("error")), fake.done[job["id"]]
    log = log_path.read_text()
    assert "'State' object has no attribute" not in log
    assert re.search(r"job openai-stream route=/v1/chat/completions .* status=error", log), log[-3000:]


def test_startup_failure_is_one_line_with_the_cause(tmp_path):
    env = local_env({"MODEL_NAME": str(tmp_path / "no-such-model"), "HF_HUB_OFFLINE": "1"})
    proc = run_test_input('{"input": {"prompt": "x"}}', tmp_path, env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("startup failed: ") and "no-such-model" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
