"""Cancellation and per-request timeouts abort vLLM's work, through the real engine; every job
leaves one log line."""

import asyncio
import json
import logging
import time
import uuid

import pytest

LONG = {"max_tokens": 2000, "ignore_eos": True}
CHAT = [{"role": "user", "content": "hi"}]


def cancel_after_first_item(engine_loop, worker, handler, job_input) -> float:
    """Start a job, cancel its task after its first item; seconds until vLLM has no request left."""

    async def scenario():
        first = asyncio.Event()

        async def consume():
            async for _ in handler({"id": f"cancel-{uuid.uuid4().hex[:8]}", "input": job_input}):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 60)
        assert worker.engine.num_unfinished_requests() == 1
        task.cancel()
        cancelled = time.monotonic()
        while worker.engine.num_unfinished_requests():
            await asyncio.sleep(0.01)
        return time.monotonic() - cancelled

    return engine_loop.run(scenario())


@pytest.mark.parametrize("job_input", [
    {"prompt": "hello", "stream": True, "sampling_params": LONG},
    {"openai_route": "/v1/chat/completions", "openai_input": {"messages": CHAT, "stream": True, **LONG}},
], ids=["native", "openai"])
def test_a_cancelled_job_aborts_its_vllm_request_within_1_s(engine_loop, worker, handler, job_input):
    assert cancel_after_first_item(engine_loop, worker, handler, job_input) < 1


def test_a_cancelled_openai_request_without_stream_aborts_its_vllm_request_within_1_s(engine_loop, worker, handler):
    """No item comes before the answer: the job is cancelled while vLLM generates it."""

    async def scenario():
        job_input = {"openai_route": "/v1/chat/completions", "openai_input": {"messages": CHAT, **LONG}}
        task = asyncio.create_task(anext(handler({"id": f"cancel-{uuid.uuid4().hex[:8]}", "input": job_input}), None))
        while not worker.engine.num_unfinished_requests():
            await asyncio.sleep(0.01)
        task.cancel()
        cancelled = time.monotonic()
        while worker.engine.num_unfinished_requests() and time.monotonic() - cancelled < 10:
            await asyncio.sleep(0.01)
        return time.monotonic() - cancelled

    assert engine_loop.run(scenario()) < 1


def test_native_timeout_ends_with_an_error_and_the_partial_output(run_job, worker):
    items = run_job({"prompt": "hello", "stream": True, "request_timeout": 0.5, "sampling_params": LONG})
    *streamed, last = items
    assert streamed and all("choices" in item for item in streamed)
    assert last["error"].startswith("timed out after 0.5 s (REQUEST_TIMEOUT or request_timeout); generation was aborted")
    partial = json.loads(last["error"].split("Partial output: ", 1)[1])
    assert 0 < partial["usage"]["output"] < 2000
    assert partial["choices"][0]["finish_reason"] == "abort"
    assert worker.engine.num_unfinished_requests() == 0


def test_native_timeout_without_stream_returns_the_partial_text(run_job):
    (item,) = run_job({"prompt": "hello", "request_timeout": 0.5, "sampling_params": LONG})
    partial = json.loads(item["error"].split("Partial output: ", 1)[1])
    assert partial["choices"][0]["text"] and 0 < partial["usage"]["output"] < 2000


def test_openai_stream_timeout_ends_with_a_408_error_after_whole_events(run_job, worker):
    items = run_job({"openai_route": "/v1/chat/completions", "request_timeout": 0.5,
                     "openai_input": {"messages": CHAT, "stream": True, **LONG}})
    *streamed, last = items
    assert streamed and all(s.startswith("data: ") and s.endswith("\n\n") for s in streamed)
    assert last["error"]["code"] == 408 and "timed out after 0.5 s" in last["error"]["message"]
    assert worker.engine.num_unfinished_requests() == 0


def test_openai_timeout_without_stream(run_job, worker):
    (item,) = run_job({"openai_route": "/v1/chat/completions", "request_timeout": 0.5,
                       "openai_input": {"messages": CHAT, **LONG}})
    assert item["error"]["code"] == 408
    assert worker.engine.num_unfinished_requests() == 0


def test_request_timeout_from_the_environment(run_job, worker, monkeypatch):
    monkeypatch.setattr(worker.settings.worker, "request_timeout", 0.5)
    (item,) = run_job({"prompt": "hello", "sampling_params": LONG})
    assert item["error"].startswith("timed out after 0.5 s")


@pytest.mark.parametrize("job_input", [
    {"prompt": "hello", "sampling_params": LONG},
    {"openai_route": "/v1/chat/completions", "openai_input": {"messages": CHAT, **LONG}},
], ids=["native", "openai"])
def test_a_job_may_shorten_request_timeout_but_not_lift_it(run_job, worker, monkeypatch, job_input):
    monkeypatch.setattr(worker.settings.worker, "request_timeout", 0.5)
    (item,) = run_job({**job_input, "request_timeout": 1e308})
    assert "timed out after 0.5 s" in str(item["error"])
    monkeypatch.setattr(worker.settings.worker, "request_timeout", 60)
    (item,) = run_job({**job_input, "request_timeout": 0.3})
    assert "timed out after 0.3 s" in str(item["error"])


def test_each_job_logs_one_line(run_job, caplog):
    with caplog.at_level(logging.INFO, logger="worker.jobs"):
        run_job({"prompt": "hello", "sampling_params": {"max_tokens": 7, "ignore_eos": True}}, job_id="log-me")
        run_job({"prompt": "hello", "sampling_params": {"temperature": -2}}, job_id="log-bad")
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.jobs"]
    assert len(lines) == 2
    assert lines[0].startswith("job log-me route=native prompt_tokens=")
    assert "output_tokens=7 ttft=" in lines[0] and lines[0].endswith("status=ok")
    assert lines[1].startswith("job log-bad route=native") and lines[1].endswith("status=error")


def test_an_abort_that_comes_before_the_job_is_noted_still_aborts_it(engine_loop, worker):
    """Another front end can get a job's abort (SIGTERM's drain) before the job's handler has noted
    the job in its InFlight: the abort waits for the job, which then ends at once with the reason."""
    from worker_vllm.jobs import InFlight
    from worker_vllm.router import make_handler

    in_flight = InFlight()
    in_flight.abort("early", "the worker is shutting down")
    job = {"id": "early", "input": {"prompt": "hello", "stream": True, "sampling_params": LONG}}
    began = time.monotonic()
    items = engine_loop.collect(make_handler(worker, in_flight)(job))
    assert items[-1]["error"].startswith("the worker is shutting down; generation was aborted"), items[-1]
    assert '"output": 0}' in items[-1]["error"] and time.monotonic() - began < 5
    assert worker.engine.num_unfinished_requests() == 0
