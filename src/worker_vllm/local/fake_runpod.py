"""A fake Runpod job API on 127.0.0.1, and a worker process that takes its jobs from it."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from worker_vllm.startup import tiny_model

HANDLER = Path(__file__).resolve().parents[2] / "handler.py"  # src/handler.py


class FakeRunpod:
    """Hands out the jobs in `queue` through job-take (append more at any time), and records what
    the worker streams and reports, when each job was handed out, and when its first item arrived."""

    def __init__(self, jobs: list[dict]):
        self.queue = list(jobs)
        self.batch_sizes: list[int] = []
        self.streamed: dict[str, list] = {}  # each job's streamed items, as the worker posted them
        self.done: dict[str, dict] = {}  # each job's final report
        self.taken_at: dict[str, float] = {}
        self.first_streamed_at: dict[str, float] = {}
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
        self.port = self.runner.addresses[0][1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def worker_env(self) -> dict:
        """The environment Runpod gives a worker, pointed at this API."""
        base = f"http://127.0.0.1:{self.port}"
        return {"RUNPOD_POD_ID": "test-worker", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
                "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=cpu",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu"}

    async def take(self, request):
        size = int(request.query.get("batch_size", 1))
        self.batch_sizes.append(size)
        jobs, self.queue = self.queue[:size], self.queue[size:]
        if not jobs:
            await asyncio.sleep(0.2)  # Runpod holds an empty take open a while
            return web.Response(status=204)
        self.taken_at.update(dict.fromkeys((job["id"] for job in jobs), time.monotonic()))
        return web.json_response(jobs if "batch" in request.path else jobs[0])

    async def stop(self, request):
        await asyncio.sleep(1)
        return web.Response(status=204)

    async def stream(self, request):
        self.first_streamed_at.setdefault(request.match_info["job"], time.monotonic())
        self.streamed.setdefault(request.match_info["job"], []).append(json.loads(await request.text()))
        return web.json_response({})

    async def finish(self, request):
        self.done[request.match_info["job"]] = json.loads(await request.text())
        return web.json_response({})

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def start_worker(fake: FakeRunpod, tmp_path: Path, env: dict,
                 handler: Path = HANDLER) -> tuple[subprocess.Popen, Path]:
    """`python src/handler.py` (or another version's `handler`) as Runpod starts it, taking jobs from
    `fake`; its log goes to a file."""
    return launch(tmp_path, fake.worker_env() | env, handler)


def launch(tmp_path: Path, env: dict, handler: Path = HANDLER) -> tuple[subprocess.Popen, Path]:
    """`python src/handler.py` (or `handler`) on the embedded model with `env` added; its log goes to a file."""
    env = {k: v for k, v in os.environ.items() if k != "MODEL_NAME"} | {
        "MODEL_NAME": str(tiny_model.ensure()), "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048",
    } | env
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(handler)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
