"""The local endpoint's Runpod routes, over plain HTTP on 127.0.0.1, on the real engine."""

import contextlib
import json
import time

import openai
import pytest
import requests

LONG = {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 2000, "ignore_eos": True}}


@contextlib.contextmanager
def local_endpoint(engine_loop, handler, **options):
    """Another local endpoint app on 127.0.0.1, on the session engine's loop; yields its base URL."""
    from aiohttp import web

    from worker_vllm.local import endpoint

    async def start():
        runner = web.AppRunner(endpoint.create_app(handler, 4, **options))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = engine_loop.run(start())
    try:
        yield f"http://127.0.0.1:{port}/v2/local"
    finally:
        engine_loop.run(runner.cleanup())


def poll_stream(endpoint, job_id, deadline=120) -> tuple[list, dict]:
    items, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        body = requests.get(f"{endpoint}/stream/{job_id}", timeout=30).json()
        items += [entry["output"] for entry in body["stream"]]
        if body["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return items, body
    raise AssertionError("job did not finish")


def test_run_stream_status(endpoint):
    job = requests.post(f"{endpoint}/run", json={"input": {
        "prompt": "hi", "stream": True, "sampling_params": {"max_tokens": 30, "ignore_eos": True}}}, timeout=30).json()
    assert job["status"] == "IN_QUEUE" and job["id"]
    items, last = poll_stream(endpoint, job["id"])
    assert last["status"] == "COMPLETED"
    assert [i["usage"]["output"] for i in items] == [1, 5, 17, 30]  # outputs of 1, then 4 tokens
    status = requests.get(f"{endpoint}/status/{job['id']}", timeout=30).json()
    assert status == {"id": job["id"], "status": "COMPLETED", "output": items}
    # /status does not run the job again, and /stream has nothing new to give.
    assert requests.post(f"{endpoint}/stream/{job['id']}", timeout=30).json()["stream"] == []


def test_stream_while_running_gives_items_as_they_come(endpoint):
    job = requests.post(f"{endpoint}/run", json={"input": LONG}, timeout=30).json()
    first = []
    while not first:
        first = requests.get(f"{endpoint}/stream/{job['id']}", timeout=30).json()["stream"]
    assert requests.get(f"{endpoint}/status/{job['id']}", timeout=30).json()["status"] == "IN_PROGRESS"
    requests.post(f"{endpoint}/cancel/{job['id']}", timeout=30)


def test_runsync(endpoint):
    body = requests.post(f"{endpoint}/runsync", json={"input": {"prompt": "hi", "sampling_params": {"max_tokens": 4}}},
                         timeout=90).json()
    assert body["status"] == "COMPLETED" and body["output"][0]["usage"]["output"] <= 4


def test_failed_job(endpoint):
    body = requests.post(f"{endpoint}/runsync", json={"input": {"prompt": "hi", "sampling_params": {"n": 0}}},
                         timeout=90).json()
    assert body["status"] == "FAILED" and "n must be at least 1" in body["error"]


def test_cancel_aborts_the_vllm_request(endpoint, worker):
    job = requests.post(f"{endpoint}/run", json={"input": LONG}, timeout=30).json()
    while not requests.get(f"{endpoint}/stream/{job['id']}", timeout=30).json()["stream"]:
        pass
    assert worker.engine.num_unfinished_requests() == 1
    assert requests.post(f"{endpoint}/cancel/{job['id']}", timeout=30).json()["status"] == "CANCELLED"
    end = time.monotonic() + 1
    while worker.engine.num_unfinished_requests() and time.monotonic() < end:
        time.sleep(0.02)
    assert worker.engine.num_unfinished_requests() == 0


def test_health(endpoint):
    body = requests.get(f"{endpoint}/health", timeout=30).json()
    assert set(body) == {"jobs", "workers"} and body["jobs"]["completed"] >= 0


def test_unknown_job_and_bad_body(endpoint):
    assert requests.get(f"{endpoint}/status/nope", timeout=30).status_code == 404
    assert requests.post(f"{endpoint}/run", json={"prompt": "no input wrapper"}, timeout=30).status_code == 400


def wait_until_idle(worker, seconds: float = 2) -> bool:
    end = time.monotonic() + seconds
    while worker.engine.num_unfinished_requests() and time.monotonic() < end:
        time.sleep(0.02)
    return worker.engine.num_unfinished_requests() == 0


def test_openai_stream_items_are_whole_sse_events_from_the_first_token(endpoint):
    job = requests.post(f"{endpoint}/run", json={"input": {"openai_route": "/v1/completions", "openai_input": {
        "prompt": "hi", "max_tokens": 30, "ignore_eos": True, "stream": True}}}, timeout=30).json()
    items, last = poll_stream(endpoint, job["id"])
    assert last["status"] == "COMPLETED"
    assert all(item.startswith("data: ") and item.endswith("\n\n") for item in items)
    events = [e for item in items for e in item.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        json.loads(event[len("data: "):])
    # The first token comes alone; later items group more events, growing like native batches.
    assert items[0].count("data: ") == 1 and len(items) < len(events)


def test_openai_client_going_away_aborts_the_vllm_request(endpoint, worker):
    with requests.post(f"{endpoint}/openai/v1/completions", stream=True, timeout=60, json={
            "prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}) as response:
        assert next(response.iter_lines()).startswith(b"data: ")
        assert worker.engine.num_unfinished_requests() == 1
    assert wait_until_idle(worker)


def test_a_failing_handler_is_an_openai_500(engine_loop):
    async def failing(job):
        yield {"error": "RuntimeError: boom"}

    with local_endpoint(engine_loop, failing) as base:
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as err:
            client.models.list()
        assert "boom" in err.value.message


def test_api_key_is_required_when_set(engine_loop, handler):
    with local_endpoint(engine_loop, handler, api_key="sk-local-123") as base:
        assert requests.post(f"{base}/run", json={"input": {"prompt": "x"}}, timeout=10).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/openai/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="sk-local-123", max_retries=0)
        assert client.models.list().data[0].id == "tiny-random-llama"
