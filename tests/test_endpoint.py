"""The local endpoint's Runpod routes, over plain HTTP on 127.0.0.1, on the real engine (and on
handlers of the tests' own where the engine is not the point)."""

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import aiohttp
import openai
import psutil
import pytest
import requests

from helpers import ROOT, local_env
from worker_vllm.jobs import InFlight
from worker_vllm.jobs import Job as WorkerJob
from worker_vllm.local import endpoint as local_endpoint_module

LONG = {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 2000, "ignore_eos": True}}


@contextlib.contextmanager
def local_endpoint(engine_loop, handler, concurrency: int = 4, **options):
    """Another local endpoint app on 127.0.0.1, on the session engine's loop; yields its base URL."""
    from aiohttp import web

    from worker_vllm.local import endpoint

    async def start():
        runner = web.AppRunner(endpoint.create_app(handler, concurrency, **options))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = engine_loop.run(start())
    try:
        yield f"http://127.0.0.1:{port}/v2/local"
    finally:
        engine_loop.run(runner.cleanup())


def poll_stream(endpoint, job_id, deadline=120, headers=None) -> tuple[list, dict]:
    items, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        body = requests.get(f"{endpoint}/stream/{job_id}", timeout=30, headers=headers).json()
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
    assert {k: status[k] for k in ("id", "status", "output")} == {"id": job["id"], "status": "COMPLETED",
                                                                  "output": items}
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


def test_status_runsync_and_stream_report_delay_execution_time_and_worker(endpoint):
    body = requests.post(f"{endpoint}/runsync", json={"input": {"prompt": "hi", "sampling_params": {"max_tokens": 2}}},
                         timeout=90).json()
    assert body["status"] == "COMPLETED"
    timings = {k: body[k] for k in ("delayTime", "executionTime", "workerId")}
    assert type(timings["delayTime"]) is int and type(timings["executionTime"]) is int, timings
    assert timings["delayTime"] >= 0 and timings["executionTime"] > 0 and timings["workerId"] == "local"
    status = requests.get(f"{endpoint}/status/{body['id']}", timeout=30).json()
    assert status == body
    stream = requests.get(f"{endpoint}/stream/{body['id']}", timeout=30).json()
    assert {k: stream[k] for k in timings} == timings and stream["status"] == "COMPLETED"


def test_health(endpoint):
    body = requests.get(f"{endpoint}/health", timeout=30).json()
    assert set(body) == {"jobs", "workers"} and body["jobs"]["completed"] >= 0


def blocking_handler(release: asyncio.Event):
    """A handler whose jobs wait for `release`, then yield their id."""

    async def handler(job):
        await release.wait()
        yield {"done": job["id"]}

    return handler


def test_purge_queue_drops_the_jobs_still_in_queue(engine_loop):
    release = asyncio.Event()
    with local_endpoint(engine_loop, blocking_handler(release), concurrency=1) as base:
        ids = [requests.post(f"{base}/run", json={"input": {"n": i}}, timeout=10).json()["id"] for i in range(3)]
        end = time.monotonic() + 10
        while requests.get(f"{base}/status/{ids[0]}", timeout=10).json()["status"] != "IN_PROGRESS":
            assert time.monotonic() < end
        # A queued job has no delayTime or workerId yet.
        assert requests.get(f"{base}/status/{ids[1]}", timeout=10).json() == {"id": ids[1], "status": "IN_QUEUE"}
        assert requests.get(f"{base}/health", timeout=10).json()["jobs"]["inQueue"] == 2
        purged = requests.post(f"{base}/purge-queue", timeout=10)
        assert purged.status_code == 200 and purged.json() == {"removed": 2, "status": "completed"}
        assert [requests.get(f"{base}/status/{i}", timeout=10).status_code for i in ids[1:]] == [404, 404]
        engine_loop.loop.call_soon_threadsafe(release.set)
        items, last = poll_stream(base, ids[0], deadline=10)
        assert last["status"] == "COMPLETED" and items == [{"done": ids[0]}]
        assert requests.post(f"{base}/purge-queue", timeout=10).json() == {"removed": 0, "status": "completed"}


def test_a_failed_job_streams_its_items_never_its_error(engine_loop):
    async def failing(job):
        yield {"token": 1}
        yield {"error": "ValueError: boom"}

    with local_endpoint(engine_loop, failing) as base:
        job = requests.post(f"{base}/run", json={"input": {}}, timeout=10).json()
        items, last = poll_stream(base, job["id"], deadline=10)
        assert items == [{"token": 1}]
        assert last["status"] == "FAILED" and last["error"] == "ValueError: boom"
        status = requests.get(f"{base}/status/{job['id']}", timeout=10).json()
        assert status["status"] == "FAILED" and status["error"] == "ValueError: boom" and "output" not in status


def test_an_openai_error_keeps_its_status_and_body(endpoint):
    client = openai.OpenAI(base_url=f"{endpoint}/openai/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-random-llama", prompt="hi", max_tokens=-1)
    assert err.value.status_code == 400 and err.value.body["code"] == 400


def test_bodies_that_are_not_json_and_bad_waits_are_400s(endpoint):
    deep = '{"input": {"prompt": ' + "[" * 1000 + "]" * 1000 + "}}"
    json_header = {"Content-Type": "application/json"}
    for route in ("run", "runsync"):
        for body in (b'{"input": {"prompt": "\xff\xfe"}}', b"\xff\xfe", deep.encode()):
            response = requests.post(f"{endpoint}/{route}", data=body, headers=json_header, timeout=30)
            assert response.status_code == 400, (route, body[:30], response.text[:200])
            assert isinstance(response.json()["error"], str)
    for body in (b"\xff\xfe", deep.encode()):
        response = requests.post(f"{endpoint}/openai/v1/completions", data=body, headers=json_header, timeout=30)
        assert response.status_code == 400, response.text[:200]
        assert response.json()["error"]["code"] == 400 and response.json()["error"]["type"] == "BadRequestError"
    for wait in ("abc", "nan", "inf", "-1"):
        assert requests.get(f"{endpoint}/stream/any?wait={wait}", timeout=30).status_code == 400, wait
        response = requests.post(f"{endpoint}/runsync?wait={wait}", json={"input": {"prompt": "x"}}, timeout=30)
        assert response.status_code == 400, wait


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


def no_tracebacks(records) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.exc_info]


def test_openai_client_going_away_aborts_the_vllm_request(endpoint, worker, caplog):
    with requests.post(f"{endpoint}/openai/v1/completions", stream=True, timeout=60, json={
            "prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}) as response:
        assert next(response.iter_lines()).startswith(b"data: ")
        assert worker.engine.num_unfinished_requests() == 1
    assert wait_until_idle(worker)
    time.sleep(0.2)  # aiohttp logs after the handler returns
    assert no_tracebacks(caplog.records) == []


def test_openai_client_going_away_before_a_json_answer_aborts_the_vllm_request(engine_loop, worker, caplog):
    from worker_vllm.router import make_handler

    in_flight = InFlight()  # shared by the handler and the endpoint, as serve.py shares it
    with local_endpoint(engine_loop, make_handler(worker, in_flight), in_flight=in_flight) as base:
        port = int(base.split(":")[2].split("/")[0])
        body = json.dumps({"prompt": "hi", "max_tokens": 2000, "ignore_eos": True}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v2/local/openai/v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            end = time.monotonic() + 30
            while not worker.engine.num_unfinished_requests():
                assert time.monotonic() < end
                time.sleep(0.01)
        assert wait_until_idle(worker, 1.5)
        end = time.monotonic() + 5
        while (jobs := requests.get(f"{base}/health", timeout=10).json()["jobs"])["cancelled"] != 1:
            assert time.monotonic() < end, jobs
            time.sleep(0.05)
    time.sleep(0.2)
    assert no_tracebacks(caplog.records) == []


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
        refused = requests.post(f"{base}/run", json={"input": {"prompt": "x"}}, timeout=10)
        assert refused.status_code == 401 and isinstance(refused.json()["error"], str)
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=f"{base}/openai/v1", api_key="wrong", max_retries=0).models.list()
        # On the OpenAI routes, an OpenAI error object.
        assert err.value.body == {"message": err.value.body["message"], "type": "AuthenticationError", "param": None,
                                  "code": 401}
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="sk-local-123", max_retries=0)
        assert client.models.list().data[0].id == "tiny-random-llama"
        # Runpod takes the key with or without "Bearer ".
        assert requests.get(f"{base}/health", headers={"Authorization": "sk-local-123"}, timeout=10).status_code == 200


def abortable_handler(in_flight: InFlight):
    """A handler like router.make_handler's without the engine: a job yields {"step": i} every 50 ms
    for input["steps"] steps, is noted in `in_flight`, and ends with an error item when aborted."""

    async def handler(job):
        current = WorkerJob(job["id"], "test")
        in_flight.add(current)
        aborted = asyncio.Event()
        current.on_abort(aborted.set)
        status = "cancelled"
        try:
            for step in range(job["input"]["steps"]):
                yield {"step": step}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(aborted.wait(), 0.05)
                if aborted.is_set():
                    status = "error"
                    yield {"error": f"{current.abort_reason}; generation was aborted"}
                    return
            status = "ok"
        finally:
            in_flight.remove(current)
            current.finish(status)

    return handler


async def serving(app, grace: float, **options) -> tuple[asyncio.Task, str]:
    """endpoint.serve(app) on a free port of 127.0.0.1, in this thread's loop; its task and base URL."""
    ready = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(local_endpoint_module.serve(
        app, "127.0.0.1", 0, grace, announce=lambda host, port: ready.set_result(port), **options))
    port = await asyncio.wait_for(ready, 10)
    return server, f"http://127.0.0.1:{port}/v2/local"


async def poll(http: aiohttp.ClientSession, base: str, job_id: str) -> tuple[list, dict]:
    items: list = []
    while True:
        async with http.get(f"{base}/stream/{job_id}") as response:
            body = await response.json()
        items += [entry["output"] for entry in body["stream"]]
        if body["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return items, body


def test_sigterm_refuses_new_jobs_lets_short_ones_finish_aborts_the_rest_and_answers_pollers():
    # In this process, in the main thread (serve handles signals there), with no engine.
    in_flight, before = InFlight(), signal.getsignal(signal.SIGTERM)

    async def scenario():
        app = local_endpoint_module.create_app(abortable_handler(in_flight), 2, in_flight=in_flight)
        server, base = await serving(app, grace=0.5)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            ids = []
            for steps in (4, 100_000, 1):  # short, long, and one left in the queue (2 at once)
                async with http.post(f"{base}/run", json={"input": {"steps": steps}}) as response:
                    ids.append((await response.json())["id"])
            pollers = [asyncio.create_task(poll(http, base, job_id)) for job_id in ids]
            await asyncio.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.05)
            async with http.post(f"{base}/run", json={"input": {"steps": 1}}) as response:
                refused = response.status, await response.json()
            async with http.post(f"{base}/openai/v1/models", json={}) as response:
                refused_openai = response.status, await response.json()
            results = await asyncio.gather(*pollers)
            await asyncio.wait_for(server, 15)  # serve returns: main() then exits 0
        return refused, refused_openai, results, time.monotonic() - signalled

    refused, refused_openai, (short, long, queued), took = asyncio.run(scenario())
    assert refused[0] == 503 and "shutting down" in refused[1]["error"]
    assert refused_openai[0] == 503 and refused_openai[1]["error"]["code"] == 503
    assert short[1]["status"] == "COMPLETED" and short[0] == [{"step": i} for i in range(4)]
    assert long[1]["status"] == "FAILED" and long[1]["error"].startswith("the worker is shutting down"), long[1]
    assert long[0] and "error" not in long[0][-1]
    assert queued[1]["status"] == "CANCELLED"
    assert 0.5 <= took < 5, took
    assert len(in_flight) == 0
    assert signal.getsignal(signal.SIGTERM) == before  # serve put the handler back


class DyingEngine:
    is_dead = False
    dead_reason = "EngineCore died (test)"

    def kill(self) -> None:  # it started no processes
        pass


def test_the_endpoint_exits_1_within_5_s_when_the_engine_dies(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)  # the watchdog's exit, recorded
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    in_flight, engine = InFlight(), DyingEngine()

    async def scenario():
        app = local_endpoint_module.create_app(abortable_handler(in_flight), 2, in_flight=in_flight)
        server, base = await serving(app, grace=30, engine=engine)
        async with aiohttp.ClientSession() as http, http.post(f"{base}/run", json={"input": {"steps": 5}}) as response:
            assert response.status == 200
        engine.is_dead = True
        died = time.monotonic()
        while not exits and time.monotonic() - died < 10:
            await asyncio.sleep(0.05)
        took = time.monotonic() - died
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        return took

    took = asyncio.run(scenario())
    assert exits == [1] and took < 5, (exits, took)


@pytest.mark.process  # starts src/serve.py, with an engine of its own
def test_serve_py_logs_like_the_worker_takes_its_key_from_the_environment_and_drains_on_sigterm(tmp_path):
    key = f"sk-local-{uuid.uuid4().hex}"
    env = local_env({"RUNPOD_LOCAL_API_KEY": key, "SHUTDOWN_GRACE_SECONDS": "0.5",
                     "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048"})
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "serve.py"), "--port", "0"], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end, found = time.monotonic() + 300, None
        while found is None and proc.poll() is None and time.monotonic() < end:
            found = re.search(r"Local endpoint: (http://127\.0\.0\.1:\d+/v2/local)", log_path.read_text())
            time.sleep(0.2)
        assert found, log_path.read_text()[-3000:]
        base, auth = found.group(1), {"Authorization": f"Bearer {key}"}
        assert key not in " ".join(psutil.Process(proc.pid).cmdline())
        assert requests.get(f"{base}/health", timeout=10).status_code == 401
        short = requests.post(f"{base}/runsync", headers=auth, timeout=90, json={
            "input": {"prompt": "hi", "sampling_params": {"max_tokens": 3}}}).json()
        assert short["status"] == "COMPLETED", short
        long = requests.post(f"{base}/run", headers=auth, json={"input": LONG}, timeout=10).json()
        while not requests.get(f"{base}/stream/{long['id']}", headers=auth, timeout=10).json()["stream"]:
            pass
        proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 5
        while requests.post(f"{base}/run", headers=auth, json={"input": LONG}, timeout=10).status_code != 503:
            assert time.monotonic() < end, "still takes jobs after SIGTERM"
        items, last = poll_stream(base, long["id"], deadline=30, headers=auth)
        assert last["status"] == "FAILED" and last["error"].startswith("the worker is shutting down"), last
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    log = log_path.read_text()
    line = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "  # time and level, as the worker logs
    assert re.search(line + r"WARNING worker: MODEL_NAME is not set", log, re.M), log[-3000:]
    assert re.search(line + r"INFO worker: startup: process and imports", log, re.M), log[-3000:]
    assert re.search(line + rf"INFO worker.jobs: job {short['id']} route=native .* status=ok$", log, re.M), log[-3000:]
    assert re.search(line + rf"INFO worker.jobs: job {long['id']} route=native .* status=error$", log, re.M)
    assert "Traceback" not in log and key not in log
