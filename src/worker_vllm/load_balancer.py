"""A load-balancing endpoint: Runpod routes each HTTP request straight to this worker's server.

vLLM's OpenAI app is served on PORT by uvicorn, as `vllm serve` serves it, with every route it
registers for the model. GET /ping on PORT_HEALTH tells Runpod whether to route here: 204 while
the worker starts (bound before vLLM is imported), 200 once it serves, 503 once it drains after
SIGTERM or its engine died. The same start-up, caches, secret masking and per-request log line
as the queue worker apply.
"""

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from worker_vllm import asgi, lifecycle
from worker_vllm.asgi import App, Message
from worker_vllm.jobs import InFlight, Job
from worker_vllm.paths import openai

if TYPE_CHECKING:
    from worker_vllm.worker import Worker

log = logging.getLogger("worker")
MAX_BODY = 30 * 2**20  # Runpod's payload limit for load-balancing endpoints
STARTING, READY, DRAINING = "starting", "ready", "draining"
# Routes that change the worker for every later request, or reach into other requests: off unless
# ENABLE_OPENAI_ADMIN_ROUTES=true, as on the queue path.
ADMIN_PATHS = set(openai.ADMIN_ROUTES) | {"/collective_rpc", "/scale_elastic_ep", "/inference/v1/abort_requests",
                                          "/reset_mm_cache", "/is_sleeping"}
UNLOGGED = {"/metrics", "/health", "/version", "/load"}  # scraped often; not requests to log


class Health:
    """What /ping answers, and a small server that answers it while the worker starts.

    The socket for PORT_HEALTH is bound at once. When PORT_HEALTH is PORT, the server hands the
    listening socket over to uvicorn once the app is served (a /ping meanwhile waits in the
    socket's queue); otherwise it keeps answering /ping on its own port."""

    def __init__(self, port: int, health_port: int) -> None:
        self.state = STARTING
        self.worker: Worker | None = None
        self.shared = port == health_port
        health = self

        class Ping(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = health.status() if self.path == "/ping" else 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass  # Runpod pings often; the state changes are logged instead

        self.server = ThreadingHTTPServer(("0.0.0.0", health_port), Ping)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)
        self._thread.start()

    def status(self) -> int:
        if self.worker is not None and self.worker.engine.is_dead:
            return 503
        return {STARTING: 204, READY: 200}.get(self.state, 503)

    def hand_over(self) -> socket.socket:
        """Stop answering on the shared port; the listening socket, for uvicorn."""
        self.server.shutdown()  # the socket stays open and listening
        return self.server.socket


def start_health(port: int, health_port: int) -> Health:
    health = Health(port, health_port)
    log.info("load balancer: /ping on port %d answers 204 while the worker starts", health_port)
    return health


class Gate:
    """vLLM's app behind what Runpod's load balancer expects of a worker: /ping, 503 while draining,
    413 over 30 MB, 408 after REQUEST_TIMEOUT, X-Runpod-Worker-Id on every response, one log line
    per request under vLLM's request id."""

    app: App  # vLLM's, set once it is built on the serving loop

    def __init__(self, health: Health, in_flight: InFlight, timeout: float | None, worker_id: str, admin: bool):
        self.health, self.in_flight, self.timeout = health, in_flight, timeout
        self.closed = set() if admin else ADMIN_PATHS
        self.worker_header = (b"x-runpod-worker-id", worker_id.encode())

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/ping":
            return await self._answer(send, self.health.status())
        if self.health.status() != 200:
            return await self._answer(send, 503, "the worker is not serving: it is starting, draining or its "
                                                 "engine died")
        if scope["path"] in self.closed:
            return await self._answer(send, 404, f"{scope['path']} is off: set ENABLE_OPENAI_ADMIN_ROUTES=true")
        if scope["path"] in UNLOGGED:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY:
            return await self._answer(send, 413, f"the request body is {int(length)} bytes; at most {MAX_BODY} "
                                                 "are allowed")
        scope, request_id = _with_request_id(scope)
        job = Job(request_id, scope["path"])
        self.in_flight.add(job)
        started, status = False, 499
        gone = asyncio.Event()  # set when the job is aborted: the app sees its client go

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if gone.is_set() and not started:
                return  # the worker answers an aborted request itself
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message = {**message, "headers": [*message.get("headers", []), self.worker_header]}
            elif body := message.get("body"):
                job.yielded()
                for counts in openai.usage_reports(body):
                    job.report_usage(*counts)
            await send(message)

        async def receive_until_gone() -> Message:
            if not gone.is_set():
                waiting, aborted = asyncio.ensure_future(receive()), asyncio.ensure_future(gone.wait())
                await asyncio.wait([waiting, aborted], return_when=asyncio.FIRST_COMPLETED)
                (aborted if waiting.done() else waiting).cancel()  # the other one is not needed
                if waiting.done() and not waiting.cancelled():
                    return waiting.result()
            return {"type": "http.disconnect"}

        call = asyncio.ensure_future(self.app(scope, receive_until_gone, send_with_id))

        def stop() -> None:
            # As in asgi.call: vLLM's JSON handlers abort their request when they see the client go;
            # cancelling the app at once would leave it generating.
            gone.set()
            asyncio.get_running_loop().call_later(asgi.DISCONNECT_GRACE, call.cancel)

        job.on_abort(stop)
        job.set_timeout(None, self.timeout)
        try:
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError:
                if not call.cancelled():  # the server cancelled this request (the client went away)
                    call.cancel()
                    raise
            if gone.is_set() and not started:  # aborted by the timeout or the drain, before vLLM answered
                status = 408 if job.timed_out else 503
                await self._answer(send, status, job.abort_reason or "aborted")
        finally:
            self.in_flight.remove(job)
            job.finish("ok" if status < 400 else "cancelled" if status == 499 else "error")

    async def _answer(self, send: Any, status: int, message: str | None = None) -> None:
        body = b"" if message is None else json.dumps(openai.error(message, status)).encode()
        headers = [self.worker_header, (b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _with_request_id(scope: Message) -> tuple[Message, str]:
    """The request's X-Request-Id, which vLLM takes for its request id; one is added if missing."""
    headers = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id":
            return scope, value.decode()
    request_id = uuid.uuid4().hex
    return {**scope, "headers": [*headers, (b"x-request-id", request_id.encode())]}, request_id


def serve(worker: "Worker", health: Health, port: int) -> None:
    """Serve vLLM's app on `port` until SIGTERM (drain, exit 0) or the engine's death (exit 1)."""
    import uvicorn

    settings = worker.settings.worker
    in_flight = InFlight()

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:  # SIGTERM drains first: see drain()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(drain()))
            yield

    async def drain() -> None:
        if health.state == DRAINING:
            return
        health.state = DRAINING
        grace = settings.shutdown_grace_seconds
        log.info("SIGTERM: no new requests; %d in flight get up to %g s to finish", len(in_flight), grace)
        deadline = time.monotonic() + grace
        while len(in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        in_flight.abort_all("the worker is shutting down")
        server.should_exit = True

    async def run() -> None:
        gate.app = app = await worker.engine.ready()
        app.state.server = server  # vLLM's engine-error handler stops it
        sockets = [health.hand_over()] if health.shared else None
        serving = asyncio.ensure_future(server.serve(sockets=sockets))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        health.worker, health.state = worker, READY
        log.info("ready: model %s, serving HTTP on port %d", worker.engine.served_model_names[0], port)
        await serving

    gate = Gate(health, in_flight, settings.request_timeout, settings.runpod_pod_id or socket.gethostname(),
                settings.enable_openai_admin_routes)
    server = Server(uvicorn.Config(gate, host="0.0.0.0", port=port, lifespan="off", log_level="warning",
                                   access_log=False, timeout_keep_alive=65))
    watchdog = lifecycle.exit_when_engine_dies(worker.engine, in_flight)
    asyncio.run(run())
    watchdog.set()
