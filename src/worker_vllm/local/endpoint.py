"""A local Runpod endpoint: the worker's handler behind the HTTP shapes of api.runpod.ai/v2/<id>.

    python src/serve.py [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Routes live under /v2/local/: /run, /runsync, /stream/{id}, /status/{id}, /cancel/{id}, /health,
and /openai/v1/..., which turns an OpenAI request into a job and its output back into an OpenAI
response (JSON, or SSE), as the platform does. Point an OpenAI client at
http://127.0.0.1:8000/v2/local/openai/v1 and nothing else changes.
"""

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from worker_vllm import redact
from worker_vllm.main import start_or_exit
from worker_vllm.startup import environment

PREFIX = "/v2/local"
KEEP_FINISHED = 1000  # finished jobs kept for /status; older ones are forgotten


@dataclass
class Job:
    id: str
    input: dict
    status: str = "IN_QUEUE"
    items: list = field(default_factory=list)
    error: str | None = None
    streamed: int = 0  # items already returned by /stream
    created: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task = field(init=False)  # set by Jobs.submit

    @property
    def finished(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELLED")

    def add(self, item) -> None:
        self.items.append(item)
        self.changed.set()

    def describe(self, output: bool = True) -> dict:
        body: dict[str, object] = {"id": self.id, "status": self.status}
        if output and self.status == "COMPLETED":
            body["output"] = self.items
        if self.error is not None:
            body["error"] = self.error
        return body


class Jobs:
    """Runs jobs through the handler, at most `concurrency` at once, and remembers them."""

    def __init__(self, handler, concurrency: int):
        self.handler = handler
        self.slots = asyncio.Semaphore(concurrency)
        self.jobs: OrderedDict[str, Job] = OrderedDict()

    def submit(self, job_input: dict, job_id: str | None = None) -> Job:
        job = Job(job_id or f"local-{uuid.uuid4().hex}", job_input)
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job))
        self._forget_old()
        return job

    async def _run(self, job: Job) -> None:
        try:
            async with self.slots:
                job.status = "IN_PROGRESS"
                async for item in self.handler({"id": job.id, "input": job.input}):
                    if isinstance(item, dict) and item.get("error"):
                        job.error, job.status = str(item["error"]), "FAILED"
                        job.add(item)
                        return
                    job.add(item)
                job.status = "COMPLETED"
        except asyncio.CancelledError:
            job.status = "CANCELLED"
        except Exception as e:  # noqa: BLE001 - a job's failure is reported, not raised
            job.error, job.status = f"{type(e).__name__}: {e}", "FAILED"
        finally:
            job.changed.set()

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job.id]

    def counts(self) -> dict:
        statuses = [j.status for j in self.jobs.values()]
        return {"completed": statuses.count("COMPLETED"), "failed": statuses.count("FAILED"),
                "inProgress": statuses.count("IN_PROGRESS"), "inQueue": statuses.count("IN_QUEUE"),
                "cancelled": statuses.count("CANCELLED"), "retried": 0}


async def _new_items(job: Job, wait: float) -> list:
    """Items `job` yielded since the last call; waits up to `wait` seconds for one if none."""
    if job.streamed == len(job.items) and not job.finished:
        job.changed.clear()
        try:
            await asyncio.wait_for(job.changed.wait(), wait)
        except TimeoutError:
            pass
    items, job.streamed = job.items[job.streamed:], len(job.items)
    return items


async def _openai_response(request, job: Job) -> web.StreamResponse:
    """The job's output as the platform returns it: JSON with its status, or SSE."""
    response = None
    while True:
        items = await _new_items(job, wait=3600)
        for item in items:
            if isinstance(item, dict):  # a JSON answer, or an error
                item, status = _openai_body(item)
                if response is not None:  # an error after the stream began: close it
                    await response.write(f"data: {json.dumps(item)}\n\n".encode())
                    return response
                return web.json_response(item, status=status)
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
                await response.prepare(request)
            await response.write(item.encode())
        if job.finished and job.streamed == len(job.items):
            break
    if response is None:
        return web.json_response(job.describe(), status=500)
    await response.write_eof()
    return response


def _openai_body(item: dict) -> tuple[dict, int]:
    """A yielded dict as an OpenAI response body and status: an OpenAI error object keeps the
    status vLLM chose; any other error (the handler failed) becomes a 500 in the same shape."""
    error = item.get("error")
    if not error:
        return item, 200
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return item, error["code"]
    return {"error": {"message": str(error), "type": "InternalServerError", "param": None, "code": 500}}, 500


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def create_app(handler, concurrency: int, api_key: str | None = None, runsync_timeout: float = 90) -> web.Application:
    """The endpoint's aiohttp app around `handler` (router.make_handler's)."""
    jobs = Jobs(handler, concurrency)

    @web.middleware
    async def require_key(request, handler):
        if api_key and request.headers.get("Authorization") != f"Bearer {api_key}":
            return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return await handler(request)

    async def job_input(request) -> dict:
        try:
            body = await request.json()
        except json.JSONDecodeError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {e}"}),
                                     content_type="application/json") from None
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": 'body must be {"input": {...}}'}),
                                     content_type="application/json")
        return body["input"]

    def find(request) -> Job:
        job = jobs.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "job not found"}), content_type="application/json")
        return job

    async def run(request):
        job = jobs.submit(await job_input(request))
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def runsync(request):
        job = jobs.submit(await job_input(request))
        await asyncio.wait([job.task], timeout=runsync_timeout)
        return web.json_response(job.describe())

    async def stream(request):
        job = find(request)
        items = await _new_items(job, wait=float(request.query.get("wait", 2)))
        body = {"id": job.id, "status": job.status, "stream": [{"output": item} for item in items]}
        if job.error is not None:
            body["error"] = job.error
        return web.json_response(body)

    async def status(request):
        return web.json_response(find(request).describe())

    async def cancel(request):
        job = find(request)
        if not job.finished:
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        return web.json_response(job.describe(output=False))

    async def health(request):
        busy = any(j.status == "IN_PROGRESS" for j in jobs.jobs.values())
        return web.json_response({"jobs": jobs.counts(), "workers": {"idle": int(not busy), "running": int(busy)}})

    async def openai(request):
        route = "/v1/" + request.match_info["path"]
        body = None
        if request.method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError as e:
                return web.json_response({"error": {"message": f"body is not JSON: {e}", "type": "BadRequestError",
                                                    "param": None, "code": 400}}, status=400)
        job = jobs.submit({"openai_route": route, "openai_input": body})
        try:
            return await _openai_response(request, job)
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away: stop the job
            job.task.cancel()
            raise

    app = web.Application(middlewares=[require_key], client_max_size=64 * 2**20)
    app.router.add_post(f"{PREFIX}/run", run)
    app.router.add_post(f"{PREFIX}/runsync", runsync)
    for method in ("GET", "POST"):
        app.router.add_route(method, f"{PREFIX}/stream/{{id}}", stream)
        app.router.add_route(method, f"{PREFIX}/status/{{id}}", status)
    app.router.add_post(f"{PREFIX}/cancel/{{id}}", cancel)
    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_route("*", f"{PREFIX}/openai/v1/{{path:.+}}", openai)
    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    args = parser.parse_args(argv)
    redact.add_secret(args.api_key)

    worker = start_or_exit(environment.prepare(os.environ))
    from worker_vllm.jobs import InFlight  # after vLLM's import, which start_or_exit did
    from worker_vllm.router import make_handler

    try:
        web.run_app(create_app(make_handler(worker, InFlight()), worker.concurrency, args.api_key),
                    host=args.host, port=args.port, print=lambda *_: print(
                        f"Local endpoint: http://{args.host}:{args.port}{PREFIX}  "
                        f"(OpenAI: http://{args.host}:{args.port}{PREFIX}/openai/v1)", flush=True))
    finally:
        worker.engine.shutdown()
