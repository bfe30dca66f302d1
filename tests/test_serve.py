"""The local endpoint's Runpod routes, over plain HTTP on 127.0.0.1, on the real engine."""

import time

import requests

LONG = {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 2000, "ignore_eos": True}}


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
    assert [i["usage"]["output"] for i in items] == [1, 4, 13, 30]
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
