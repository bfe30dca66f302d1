"""LOAD_BALANCER=true: the worker serves vLLM's app over HTTP, as on a Runpod load-balancing
endpoint or a Pod, with /ping telling Runpod when to route to it."""

import re
import signal
import socket
import threading
import time

import anthropic
import openai
import psutil
import pytest
import requests

from worker_vllm.local.fake_runpod import launch, wait_for

pytestmark = pytest.mark.process  # each test starts a worker process of its own
CHAT = [{"role": "user", "content": "hi"}]
MODEL = "tiny-random-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int) -> int | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code
    except requests.ConnectionError:
        return None


def running(port: int) -> float:
    """Requests vLLM is generating now, from its /metrics."""
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("vllm:num_requests_running"))


def start(tmp_path, **env):
    port = free_port()
    env = {"LOAD_BALANCER": "true", "PORT": str(port), "RUNPOD_POD_ID": "lb-worker-1",
           "OPENAI_SERVED_MODEL_NAME_OVERRIDE": MODEL, **env}
    proc, log_path = launch(tmp_path, env)
    return proc, log_path, port


def test_serves_vllms_app_with_ping_limits_and_a_drain_on_sigterm(tmp_path):
    health_port = free_port()
    proc, log_path, port = start(tmp_path, PORT_HEALTH=str(health_port), SHUTDOWN_GRACE_SECONDS="20")
    try:
        # 204 while the worker starts (bound before vLLM is imported), then 200.
        seen = []
        assert wait_for(lambda: seen.append(ping(health_port)) or seen[-1] == 200 or proc.poll() is not None, 300), \
            log_path.read_text()[-3000:]
        assert 204 in seen and seen[-1] == 200, (seen[:5], log_path.read_text()[-3000:])
        assert ping(port) == 200  # the serving port answers /ping too
        base = f"http://127.0.0.1:{port}"

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        reply = client.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=5,
                                                                 extra_body={"ignore_eos": True})
        assert reply.headers["x-runpod-worker-id"] == "lb-worker-1"
        assert reply.parse().usage.completion_tokens == 5
        chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=9, stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 9
        assert client.responses.create(model=MODEL, input="hi", max_output_tokens=3,
                                      extra_body={"ignore_eos": True}).usage.output_tokens == 3
        with anthropic.Anthropic(base_url=base, api_key="x", max_retries=0, timeout=60) as claude:
            assert claude.messages.create(model=MODEL, max_tokens=4, messages=CHAT).type == "message"
            with claude.messages.stream(model=MODEL, max_tokens=4, messages=CHAT) as stream:
                assert stream.get_final_message().role == "assistant"
        assert requests.post(f"{base}/tokenize", json={"prompt": "hello"}, timeout=30).json()["count"] > 0
        assert "vllm" in requests.get(f"{base}/metrics", timeout=30).text

        # vLLM's own errors and status codes; the worker's limits.
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.chat.completions.create(model=MODEL, messages=CHAT, temperature=-1)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=CHAT)
        assert requests.post(f"{base}/v1/load_lora_adapter", json={}, timeout=30).status_code == 404  # admin: off
        big = requests.post(f"{base}/v1/chat/completions", data=b"x" * (31 * 2**20),
                            headers={"Content-Type": "application/json"}, timeout=60)
        assert big.status_code == 413 and "at most" in big.json()["error"]["message"]

        # SIGTERM: the request in flight finishes, new ones get 503 and /ping stops answering 200.
        finished = {}

        def long_request():
            finished["reply"] = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1000,
                                                               extra_body={"ignore_eos": True})

        in_flight = threading.Thread(target=long_request)
        in_flight.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: ping(health_port) != 200, 10)
        assert requests.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "x"},
                             timeout=30).status_code == 503
        in_flight.join(60)
        assert finished["reply"].usage.completion_tokens == 1000
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    log = log_path.read_text()
    assert "startup: process and imports" in log and "ready: model tiny-random-llama, serving HTTP" in log
    assert "SIGTERM: no new requests" in log
    assert re.search(r"job \w+ route=/v1/chat/completions prompt_tokens=\d+ output_tokens=5 .* status=ok", log), log
    assert "status=error" in log and "route=/metrics" not in log


def test_request_timeout_then_engine_death_fails_ping_and_exits_non_zero_within_5_s(tmp_path):
    proc, log_path, port = start(tmp_path, REQUEST_TIMEOUT="1")  # PORT_HEALTH unset: /ping on PORT
    try:
        assert wait_for(lambda: ping(port) == 200 or proc.poll() is not None, 300), log_path.read_text()[-3000:]
        slow = requests.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
            "model": MODEL, "prompt": "hi", "max_tokens": 2000, "ignore_eos": True})  # 3-4 s on a CPU
        assert slow.status_code == 408 and "timed out after 1 s" in slow.json()["error"]["message"], slow.text
        assert wait_for(lambda: running(port) == 0, 2), "vLLM kept generating the timed-out request"

        cores = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
        for core in cores:
            core.kill()
        killed = time.monotonic()
        assert wait_for(lambda: ping(port) != 200, 5)
        code = proc.wait(timeout=30)
        assert time.monotonic() - killed < 5
    finally:
        proc.kill()
    assert code != 0 and "vLLM engine died" in log_path.read_text()
