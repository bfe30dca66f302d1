"""The worker under the runpod SDK's production loop, against a fake Runpod job API on 127.0.0.1.

One fresh worker process takes a batch of jobs, streams and reports them; its whole log is then
scanned for the secrets planted in its environment.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

import tiny_model

ROOT = Path(__file__).resolve().parents[1]
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


class FakeRunpod:
    """Serves JOBS once through job-take, and records what the worker streams and reports."""

    def __init__(self):
        self.queue = list(JOBS)
        self.batch_sizes, self.streamed, self.done = [], {}, {}
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/job-take/{worker}", self.take)
        app.router.add_get("/job-take-batch/{worker}", self.take)
        app.router.add_get("/job-stop/{worker}", self.stop)
        app.router.add_post("/job-stream/{worker}/{job}", self.stream)
        app.router.add_post("/job-done/{worker}/{job}", self.finish)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def take(self, request):
        size = int(request.query.get("batch_size", 1))
        self.batch_sizes.append(size)
        jobs, self.queue = self.queue[:size], self.queue[size:]
        if not jobs:
            return web.Response(status=204)
        return web.json_response(jobs if "batch" in request.path else jobs[0])

    async def stop(self, request):
        await asyncio.sleep(1)
        return web.Response(status=204)

    async def stream(self, request):
        self.streamed.setdefault(request.match_info["job"], []).append(json.loads(await request.text()))
        return web.json_response({})

    async def finish(self, request):
        self.done[request.match_info["job"]] = json.loads(await request.text())
        return web.json_response({})

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_production_loop_streams_reports_and_keeps_secrets_out_of_logs(tmp_path):
    fake = FakeRunpod()
    base = f"http://127.0.0.1:{fake.port}"
    env = {k: v for k, v in os.environ.items() if k != "MODEL_NAME"} | SECRETS | {
        "MODEL_NAME": str(tiny_model.ensure()), "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048",
        "MAX_CONCURRENCY": "8", "RUNPOD_POD_ID": "test-worker", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_LOG_LEVEL": "DEBUG",
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "handler.py")], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(fake.done) < len(JOBS) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(fake.done) == len(JOBS), log_path.read_text()[-4000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.close()

    # Fetches as many jobs as MAX_CONCURRENCY allows, and the value never changes.
    assert set(fake.batch_sizes) == {8}

    # Native stream: each token batch streamed as it was made, and aggregated for /run and /runsync.
    streamed = [item["output"] for item in fake.streamed["native-stream"]]
    assert [item["usage"]["output"] for item in streamed] == [1, 4, 12]
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
    for name, value in SECRETS.items():
        assert value not in log, f"{name} leaked into the worker's log"
