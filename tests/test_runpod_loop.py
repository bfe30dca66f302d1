"""The worker under the runpod SDK's production loop, against a fake Runpod job API on 127.0.0.1.

One fresh worker process takes a batch of jobs, streams and reports them; its whole log is then
scanned for the secrets planted in its environment.
"""

import json
import re
import signal

import pytest

from worker_vllm.local.fake_runpod import FakeRunpod, start_worker, wait_for

pytestmark = pytest.mark.process  # each test starts worker processes of its own

SECRETS = {"HF_TOKEN": "hf_plantedHfToken0123456789", "RUNPOD_AI_API_KEY": "rpa_plantedApiKey987654",
           "MY_SERVICE_SECRET": "planted-service-secret-42"}
CHAT = [{"role": "user", "content": "hi"}]
JOBS = [
    {"id": "native-stream", "input": {"prompt": "hello", "stream": True,
                                      "sampling_params": {"max_tokens": 12, "ignore_eos": True}}},
    {"id": "openai-stream", "input": {"openai_route": "/v1/chat/completions", "openai_input": {
        "messages": CHAT, "max_tokens": 6, "ignore_eos": True, "stream": True}}},
    {"id": "openai-404", "input": {"openai_route": "/v1/chat/completions", "openai_input": {
        "model": "no-such-model", "messages": CHAT}}},
    {"id": "bad-input", "input": {"prompt": "hello", "sampling_params": {"temperature": -1}}},
    # vLLM logs an unknown model name, and the SDK at DEBUG logs what jobs yield: both must be masked.
    {"id": "secret-echo", "input": {"openai_route": "/v1/chat/completions", "openai_input": {
        "model": SECRETS["HF_TOKEN"], "messages": CHAT}}},
]


def test_production_loop_streams_reports_and_keeps_secrets_out_of_logs(tmp_path):
    fake = FakeRunpod([])
    proc, log_path = start_worker(fake, tmp_path, SECRETS | {"MAX_CONCURRENCY": "8", "RUNPOD_LOG_LEVEL": "DEBUG"})
    try:
        # vLLM's OpenAI app is built as the SDK starts taking jobs, not by the first job.
        assert wait_for(lambda: "vLLM's OpenAI app is built" in log_path.read_text() or proc.poll() is not None, 300), \
            log_path.read_text()[-4000:]
        assert "vLLM's OpenAI app is built" in log_path.read_text(), log_path.read_text()[-4000:]
        fake.queue.extend(JOBS)
        assert wait_for(lambda: len(fake.done) == len(JOBS) or proc.poll() is not None, 300), log_path.read_text()[-4000:]
        assert len(fake.done) == len(JOBS), log_path.read_text()[-4000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        fake.close()

    # Fetches as many jobs as MAX_CONCURRENCY allows, and the value never changes.
    assert set(fake.batch_sizes) == {8}

    # Native stream: each token batch streamed as it was made, and aggregated for /run and /runsync.
    streamed = [item["output"] for item in fake.streamed["native-stream"]]
    assert [item["usage"]["output"] for item in streamed] == [1, 5, 12]  # outputs of 1, 4, 4, 3 tokens
    assert fake.done["native-stream"]["output"] == streamed

    # OpenAI stream: every streamed item is whole SSE events, ending with [DONE].
    sse = [item["output"] for item in fake.streamed["openai-stream"]]
    assert all(s.startswith("data: ") and s.endswith("\n\n") for s in sse)
    assert sse[-1].endswith("data: [DONE]\n\n")

    # Failures mark the job failed; an OpenAI error stays valid JSON with vLLM's status.
    error = json.loads(fake.done["openai-404"]["error"])
    assert error["code"] == 404 and "no-such-model" in error["message"]
    assert "openai-404" not in fake.streamed
    assert "temperature must be non-negative" in fake.done["bad-input"]["error"]

    log = log_path.read_text()
    assert "ready: model" in log
    # The worker's own INFO lines outlive vLLM's OpenAI app, whose build reset the root logger's level.
    assert re.search(r"job native-stream route=native prompt_tokens=\d+ output_tokens=12 .* status=ok", log), log[-3000:]
    assert "SIGTERM: no new jobs" in log
    # A job that fails is logged as failed, though the SDK stops reading at its error item.
    for job_id in ("openai-404", "bad-input"):
        assert re.search(rf"job {job_id} route=\S+ .* status=error", log), log[-3000:]
    # The model's weights were read into memory while vLLM imported and started its engine: the
    # reading stops once the engine is up, not as it starts.
    assert re.search(r"prefetch: ([\d.]+) of \1 GiB of weights read into memory", log), log[-3000:]
    assert log.index("init engine (profile, create kv cache, warmup model) took") < log.index("prefetch: ")
    # Where start-up time went, with the phases vLLM's engine process reported (on CPU: no compile, no
    # graphs), after the starts of its two processes (the engine's and its model worker's).
    assert re.search(r"startup: process and imports [\d.]+ s, config [\d.]+ s, engine [\d.]+ s "
                     r"\(engine process start [1-9][\d.]* s, worker start [\d.]+ s, model build [\d.]+ s, "
                     r"weight load [\d.]+ s, "
                     r"KV cache profiling and warm-up [\d.]+ s\); ready [\d.]+ s", log), log[-3000:]
    # The SDK's start-up checks ran in a child process while vLLM imported (here it found no GPU),
    # and the SDK's own run, once the engine was up, skipped them.
    assert log.index("No GPU detected, skipping GPU fitness check registration") < log.index(
        "the runpod SDK's start-up checks passed in") < log.index("startup: process")
    assert log.index("ready: model") < log.index("GPU fitness check auto-registration disabled via environment")
    for name, value in SECRETS.items():
        assert value not in log, f"{name} leaked into the worker's log"


def test_a_failed_sdk_check_stops_the_worker_before_the_model_loads(tmp_path):
    # The SDK's system checks, on: memory comes first, and its failure ends them (no network check).
    fake = FakeRunpod([])
    proc, log_path = start_worker(fake, tmp_path, {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "false",
                                                   "RUNPOD_MIN_MEMORY_GB": "1000000"})
    try:
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
        fake.close()
    log = log_path.read_text()
    assert "Fitness check failed: _memory_check | RuntimeError: Insufficient memory" in log, log[-3000:]
    assert log.strip().splitlines()[-1] == ("startup failed: the runpod SDK's start-up checks failed (exit code 1); "
                                            "the lines above say which check and why"), log[-3000:]
    assert "_network_check" not in log and "Initializing a V1 LLM engine" not in log, log[-3000:]
    assert fake.batch_sizes == []  # no job was asked for
