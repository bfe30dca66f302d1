"""A local Runpod endpoint: the worker's handler behind the HTTP shapes of api.runpod.ai/v2/<id>.

    RUNPOD_LOCAL_API_KEY=KEY python src/serve.py [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Routes live under /v2/local/: /run, /runsync, /stream/{id}, /status/{id}, /cancel/{id},
/purge-queue, /health, and /openai/v1/..., which turns an OpenAI request into a job and its output
back into an OpenAI response (JSON, or SSE), as the platform does. Point an OpenAI client at
http://127.0.0.1:8000/v2/local/openai/v1, or the runpod SDK at http://127.0.0.1:8000/v2, and
nothing else changes. Like the worker, it exits 1 when vLLM's engine dies, and on SIGTERM it takes
no new jobs and gives those in flight SHUTDOWN_GRACE_SECONDS before aborting them.
"""

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import signal
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from worker_vllm import lifecycle, redact
from worker_vllm.jobs import InFlight
from worker_vllm.main import configure_logging, start_or_exit
from worker_vllm.paths import openai as openai_path
from worker_vllm.startup import environment

log = logging.getLogger("worker")

PREFIX = "/v2/local"
API_KEY_ENV = "RUNPOD_LOCAL_API_KEY"  # the key, kept out of the process list (--api-key is not)
KEEP_FINISHED = 1000  # finished jobs kept for /status; older ones are forgotten
WORKER_ID = "local"  # the workerId of every job: there is one worker
SHUTTING_DOWN = "the worker is shutting down"  # the reason jobs aborted by a shutdown end with
ABORT_WAIT = 5.0  # seconds jobs aborted by a shutdown get to end before they are cancelled
STOP_WAIT = 2.0  # seconds a job aborted by /cancel or a client that went away gets to end before it is cancelled
LINGER = 3.0  # seconds after a shutdown's last job ended in which pollers can read its final status
CLIENT_CHECK = 0.5  # seconds between checks that an OpenAI client waiting for its answer is still there


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class Job:
    id: str
    input: dict
    worker_id: str = WORKER_ID
    status: str = "IN_QUEUE"
    items: list = field(default_factory=list)  # the output; never an error item, which the platform does not stream
    error: str | None = None
    error_item: dict | None = None  # the item that failed the job, for the OpenAI translation
    streamed: int = 0  # items already returned by /stream
    reported: bool = False  # an answer carried the job's final status
    cancelling: bool = False  # Jobs.cancel is stopping it: it ends CANCELLED, whatever its path yields
    created: float = field(default_factory=time.monotonic)
    started: float | None = None  # when it left the queue
    ended: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task = field(init=False)  # set by Jobs.submit

    @property
    def finished(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELLED")

    def add(self, item) -> None:
        self.items.append(item)
        self.changed.set()

    def end(self, status: str) -> None:
        self.status, self.ended = status, time.monotonic()
        self.changed.set()

    def describe(self, output: bool = True) -> dict:
        """The job as the platform's /status shows it (and notes that its final status was reported):
        delayTime (ms in the queue) and workerId once it started, executionTime (ms) once it ended."""
        body: dict[str, object] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = _ms(self.started - self.created)
            body["workerId"] = self.worker_id
            if self.ended is not None:
                body["executionTime"] = _ms(self.ended - self.started)
        if output and self.status == "COMPLETED":
            body["output"] = self.items
        if self.error is not None:
            body["error"] = self.error
        self.reported = self.reported or self.finished
        return body


class Jobs:
    """Runs jobs through the handler, at most `concurrency` at once, and remembers them.
    `in_flight` is the handler's (router.make_handler's): a shutdown aborts the jobs in it."""

    def __init__(self, handler, concurrency: int, in_flight: InFlight | None = None, worker_id: str = WORKER_ID):
        self.handler = handler
        self.slots = asyncio.Semaphore(concurrency)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.in_flight = InFlight() if in_flight is None else in_flight
        self.worker_id = worker_id
        self.closing = False  # shutting down: no new jobs

    def submit(self, job_input: dict, job_id: str | None = None) -> Job:
        job = Job(job_id or f"local-{uuid.uuid4().hex}", job_input, self.worker_id)
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job))
        self._forget_old()
        return job

    async def _run(self, job: Job) -> None:
        status = "CANCELLED"
        try:
            async with self.slots:
                job.status, job.started = "IN_PROGRESS", time.monotonic()
                # Closed at once after an error item, as the runpod SDK stops reading there: the
                # handler then writes the job's log line.
                async with contextlib.aclosing(self.handler({"id": job.id, "input": job.input})) as items:
                    async for item in items:
                        if isinstance(item, dict) and item.get("error"):
                            job.error_item, job.error, status = item, str(item["error"]), "FAILED"
                            return
                        job.add(item)
                status = "COMPLETED"
        except asyncio.CancelledError:
            status = "CANCELLED"
        except Exception as e:  # noqa: BLE001 - a job's failure is reported, not raised
            job.error, status = f"{type(e).__name__}: {e}", "FAILED"
        finally:
            if job.cancelling:
                status, job.error, job.error_item = "CANCELLED", None, None
            job.end(status)

    async def cancel(self, job: Job, reason: str = "the job was cancelled") -> None:
        """Stop `job`; it ends CANCELLED. A job in flight is aborted as its path registered (that is
        how vLLM's OpenAI app learns that its client is gone, and aborts the request); one that has
        not ended STOP_WAIT seconds later, or that is not in flight, has its task cancelled."""
        if job.finished:
            return
        job.cancelling = True
        running = self.in_flight.jobs.get(job.id)
        if running is not None:
            running.abort(reason)
            await _finish([job.task], STOP_WAIT)
        job.task.cancel()
        await asyncio.gather(job.task, return_exceptions=True)
        if not job.finished:  # cancelled before its task began: _run never ran
            job.end("CANCELLED")

    async def purge_queue(self) -> int:
        """Drop the jobs still waiting for a slot, as the platform's /purge-queue does: they are gone."""
        queued = [job for job in self.jobs.values() if job.status == "IN_QUEUE"]
        for job in queued:
            del self.jobs[job.id]
        await asyncio.gather(*(self.cancel(job) for job in queued))
        return len(queued)

    async def drain(self, grace: float, hurry: asyncio.Event | None = None) -> None:
        """Shut down like the worker on SIGTERM: take no new jobs, cancel those still queued (no other
        worker will take them), give those running `grace` seconds (less if `hurry` is set), then abort
        them: their paths end them with the reason. Then wait up to LINGER seconds for the pollers to
        read the final statuses."""
        self.closing = True
        pending = [job for job in self.jobs.values() if not job.finished]
        queued = [job for job in pending if job.status == "IN_QUEUE"]
        await asyncio.gather(*(self.cancel(job) for job in queued))
        running = [job for job in pending if not job.finished]
        log.info("shutting down: no new jobs, %d queued cancelled; %d in flight get up to %g s to finish",
                 len(queued), len(running), grace)
        if not await _finish([job.task for job in running], grace, hurry):
            log.info("aborting %d jobs still in flight", sum(not job.finished for job in running))
            self.in_flight.abort_all(SHUTTING_DOWN)
            if not await _finish([job.task for job in running], ABORT_WAIT):
                await asyncio.gather(*(self.cancel(job) for job in running))
        deadline = time.monotonic() + LINGER
        while any(not job.reported for job in pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job.id]

    def counts(self) -> dict:
        statuses = [j.status for j in self.jobs.values()]
        return {"completed": statuses.count("COMPLETED"), "failed": statuses.count("FAILED"),
                "inProgress": statuses.count("IN_PROGRESS"), "inQueue": statuses.count("IN_QUEUE"),
                "cancelled": statuses.count("CANCELLED"), "retried": 0}


async def _finish(tasks: list[asyncio.Task], timeout: float, hurry: asyncio.Event | None = None) -> bool:
    """Wait up to `timeout` seconds (or until `hurry` is set) for `tasks`; whether they all ended."""
    if tasks:
        waits: list[asyncio.Future] = [asyncio.ensure_future(asyncio.wait(tasks))]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:  # cancels the waiting only, never the tasks
                wait.cancel()
    return all(task.done() for task in tasks)


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _new_items(job: Job, wait: float, request: web.BaseRequest | None = None) -> list:
    """Items `job` yielded since the last call; waits up to `wait` seconds for one if none. With
    `request`, raises ConnectionResetError once its client has gone."""
    deadline = time.monotonic() + wait
    while job.streamed == len(job.items) and not job.finished:
        if request is not None and _client_gone(request):
            raise ConnectionResetError("the client went away")
        left = deadline - time.monotonic()
        if left <= 0:
            break
        job.changed.clear()
        try:
            await asyncio.wait_for(job.changed.wait(), left if request is None else min(left, CLIENT_CHECK))
        except TimeoutError:
            pass
    items, job.streamed = job.items[job.streamed:], len(job.items)
    return items


async def _openai_response(request, job: Job) -> web.StreamResponse:
    """The job's output as the platform returns it: JSON with its status, or SSE."""
    response = None
    while True:
        for item in await _new_items(job, wait=3600, request=request):
            if isinstance(item, dict):  # a JSON answer
                return web.json_response(item)
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
                await response.prepare(request)
            await response.write(item.encode())
        if job.finished and job.streamed == len(job.items):
            break
    if job.status != "COMPLETED" or response is None:
        failure = job.error_item or {"error": job.error or f"the job ended {job.status} with no output"}
        body, status = _openai_body(failure)
        if response is None:
            return web.json_response(body, status=status)
        await response.write(f"data: {json.dumps(body)}\n\n".encode())  # an error after the stream began
        return response
    await response.write_eof()
    return response


def _openai_body(item: dict) -> tuple[dict, int]:
    """An error item as an OpenAI response body and status: an OpenAI error object keeps the status
    vLLM chose; any other error (the handler failed) becomes a 500 in the same shape."""
    error = item.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        return item, error["code"]
    return openai_path.error(str(error), 500), 500


def _error_body(status: int, message: str, openai: bool) -> dict:
    """Runpod's error body, or on the OpenAI routes an OpenAI error object."""
    return openai_path.error(message, status) if openai else {"error": message}


def _refuse(status: int, message: str, openai: bool = False) -> web.HTTPException:
    kind = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound,
            503: web.HTTPServiceUnavailable}[status]
    return kind(text=json.dumps(_error_body(status, message, openai)), content_type="application/json")


async def _read_json(request, openai: bool = False):
    """The request's JSON body; HTTP 400 for a body that is not JSON in UTF-8 (or its declared charset)."""
    raw = await request.read()
    try:
        return json.loads(raw.decode(request.charset or "utf-8"))
    except (UnicodeDecodeError, LookupError) as e:
        raise _refuse(400, f"body is not text in UTF-8 (or the charset it names): {e}", openai) from None
    except RecursionError:
        raise _refuse(400, "body is not JSON we can read: nested too deeply", openai) from None
    except ValueError as e:
        raise _refuse(400, f"body is not JSON: {e}", openai) from None


def _wait_query(request, default: float, unit: float, low: float, high: float) -> float:
    """?wait= in seconds: a number of `unit` seconds, within [low, high] seconds; HTTP 400 if not a number."""
    raw = request.query.get("wait")
    if raw is None:
        return default
    try:
        value = float(raw) * unit
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise _refuse(400, f"wait must be a number >= 0, not {raw!r}")
    return min(max(value, low), high)


def _authorized(header: str, api_key: str) -> bool:
    """Runpod takes the key alone or as 'Bearer KEY'."""
    given = header[len("Bearer "):] if header.startswith("Bearer ") else header
    return hmac.compare_digest(given.encode(), api_key.encode())


JOBS = web.AppKey("jobs", Jobs)


def create_app(handler, concurrency: int, api_key: str | None = None, runsync_timeout: float = 90, *,
               in_flight: InFlight | None = None, worker_id: str = WORKER_ID) -> web.Application:
    """The endpoint's aiohttp app around `handler` (router.make_handler's, made with `in_flight`)."""
    jobs = Jobs(handler, concurrency, in_flight, worker_id)

    @web.middleware
    async def require_key(request, handler):
        if api_key and not _authorized(request.headers.get("Authorization", ""), api_key):
            raise _refuse(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                          openai=request.path.startswith(f"{PREFIX}/openai/"))
        return await handler(request)

    def submit(job_input: dict, openai: bool = False) -> Job:
        if jobs.closing:
            raise _refuse(503, f"{SHUTTING_DOWN}: it takes no new jobs", openai)
        return jobs.submit(job_input)

    async def job_input(request) -> dict:
        body = await _read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise _refuse(400, 'body must be {"input": {...}}')
        return body["input"]

    def find(request) -> Job:
        job = jobs.jobs.get(request.match_info["id"])
        if job is None:
            raise _refuse(404, "job not found")
        return job

    async def run(request):
        job = submit(await job_input(request))
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def runsync(request):
        # ?wait= in milliseconds, as on the platform: 1,000 to 300,000.
        wait = _wait_query(request, runsync_timeout, unit=0.001, low=1, high=300)
        job = submit(await job_input(request))
        await asyncio.wait([job.task], timeout=wait)
        return web.json_response(job.describe())

    async def stream(request):
        wait = _wait_query(request, 2, unit=1, low=0, high=60)
        job = find(request)
        items = await _new_items(job, wait)
        return web.json_response(job.describe(output=False) | {"stream": [{"output": item} for item in items]})

    async def status(request):
        return web.json_response(find(request).describe())

    async def cancel(request):
        job = find(request)
        await jobs.cancel(job)
        job.reported = True
        return web.json_response({"id": job.id, "status": job.status})

    async def purge_queue(request):
        return web.json_response({"removed": await jobs.purge_queue(), "status": "completed"})

    async def health(request):
        busy = any(j.status == "IN_PROGRESS" for j in jobs.jobs.values())
        return web.json_response({"jobs": jobs.counts(), "workers": {"idle": int(not busy), "running": int(busy)}})

    async def openai(request):
        route = "/v1/" + request.match_info["path"]
        body = await _read_json(request, openai=True) if request.method == "POST" else None
        job = submit({"openai_route": route, "openai_input": body}, openai=True)
        try:
            return await _openai_response(request, job)
        except ConnectionResetError:  # the client went away: stop the job; there is no one to answer
            await jobs.cancel(job, "the client went away")
            return web.Response(status=499)
        finally:
            job.reported = True

    app = web.Application(middlewares=[require_key], client_max_size=64 * 2**20)
    app[JOBS] = jobs
    app.router.add_post(f"{PREFIX}/run", run)
    app.router.add_post(f"{PREFIX}/runsync", runsync)
    for method in ("GET", "POST"):
        app.router.add_route(method, f"{PREFIX}/stream/{{id}}", stream)
        app.router.add_route(method, f"{PREFIX}/status/{{id}}", status)
    app.router.add_post(f"{PREFIX}/cancel/{{id}}", cancel)
    app.router.add_post(f"{PREFIX}/purge-queue", purge_queue)
    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_route("*", f"{PREFIX}/openai/v1/{{path:.+}}", openai)
    return app


def _announce(host: str, port: int) -> None:
    print(f"Local endpoint: http://{host}:{port}{PREFIX}  (OpenAI: http://{host}:{port}{PREFIX}/openai/v1)",
          flush=True)


async def serve(app: web.Application, host: str, port: int, grace: float, *, engine=None,
                announce=_announce) -> None:
    """Serve `app` until SIGTERM (then `Jobs.drain` with `grace`) or SIGINT (the same, with no grace);
    a second signal aborts the jobs at once. With `engine`, exit 1 when it dies, as the worker does.
    Call from the main thread."""
    jobs, loop = app[JOBS], asyncio.get_running_loop()
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    stop, hurry = asyncio.Event(), asyncio.Event()
    watchdog = lifecycle.exit_when_engine_dies(engine, jobs.in_flight) if engine is not None else None

    def on_signal(signum: int) -> None:
        log.info("%s received", signal.Signals(signum).name)
        if signum == signal.SIGINT and watchdog is not None:
            watchdog.set()  # Ctrl-C stops vLLM's processes too: not an engine failure
        if stop.is_set() or signum == signal.SIGINT:
            hurry.set()
        stop.set()

    signals = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        site = web.TCPSite(runner, host, port)
        await site.start()
        announce(host, runner.addresses[0][1])
        await stop.wait()
        await jobs.drain(grace, hurry)
    finally:
        for signum, previous in signals.items():
            loop.remove_signal_handler(signum)
            if previous is not None:  # None: not set from Python
                signal.signal(signum, previous)
        if watchdog is not None:
            watchdog.set()
        await runner.cleanup()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0: any free one)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request; the process list "
                                          f"shows it, so prefer the {API_KEY_ENV} environment variable")
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    redact.add_secret(api_key)

    # Before `prepare`: what it and the prefetch thread log while vLLM is imported keeps its time and level.
    configure_logging()
    worker = start_or_exit(environment.prepare(os.environ))
    from worker_vllm.router import make_handler  # after vLLM's import, which start_or_exit did

    in_flight = InFlight()  # the handler's, the watchdog's and the shutdown's
    app = create_app(make_handler(worker, in_flight), worker.concurrency, api_key, in_flight=in_flight)
    try:
        asyncio.run(serve(app, args.host, args.port, worker.settings.worker.shutdown_grace_seconds,
                          engine=worker.engine))
    finally:
        worker.engine.shutdown()
