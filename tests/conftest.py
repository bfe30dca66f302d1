"""One real vLLM engine (CPU, embedded tiny model) for the whole test session.

vLLM's AsyncLLM binds to the event loop of its first request, so every test talks to it through
one loop that runs in a background thread: `run(coro)` and `collect(async_iterator)`.
"""

import asyncio
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
for marker in ("RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB"):
    os.environ.pop(marker, None)


class EngineLoop:
    """An event loop in a thread; tests submit coroutines to it and wait."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def collect(self, items, timeout: float = 120) -> list:
        async def gather():
            return [item async for item in items]

        return self.run(gather(), timeout)


# The session engine's settings, as a user would set them in the endpoint's environment.
# Features that need an engine flag are switched on here, so one engine serves every test.
SESSION_ENV = {
    "ENFORCE_EAGER": "true",
    "MAX_MODEL_LEN": "2048",
    "ENABLE_AUTO_TOOL_CHOICE": "true",
    "TOOL_CALL_PARSER": "hermes",
}


@pytest.fixture(scope="session")
def engine_loop():
    loop = EngineLoop()
    yield loop
    loop.loop.call_soon_threadsafe(loop.loop.stop)


@pytest.fixture(scope="session")
def worker(engine_loop):
    """The started worker, serving the embedded tiny model; handler.handler routes to it."""
    import handler
    import worker as worker_module

    env = {k: v for k, v in os.environ.items() if k != "MODEL_NAME"} | SESSION_ENV
    started = worker_module.start(env)
    handler.worker = started
    engine_loop.run(started.engine.ready())
    yield started
    started.engine.shutdown()


@pytest.fixture
def run_job(worker, engine_loop):
    """Run one job through the real handler; returns the list of yielded items."""
    import handler

    def run(job_input: dict, job_id: str | None = None) -> list:
        job = {"id": job_id or f"test-{uuid.uuid4().hex[:12]}", "input": job_input}
        return engine_loop.collect(handler.handler(job))

    return run


@pytest.fixture(scope="session")
def endpoint(worker, engine_loop):
    """src/serve.py's app on 127.0.0.1 (a free port), on the session engine; yields its base URL."""
    from aiohttp import web

    import handler
    import serve

    async def start():
        runner = web.AppRunner(serve.create_app(handler.handler, worker.concurrency, runsync_timeout=60))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = engine_loop.run(start())
    yield f"http://127.0.0.1:{port}/v2/local"
    engine_loop.run(runner.cleanup())
