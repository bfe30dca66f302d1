"""The worker's process: prepare the start-up, start the engine, then serve Runpod's queue, or
run one local `--test_input` job."""

import asyncio
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

from worker_vllm import config, errors
from worker_vllm.local import test_input
from worker_vllm.startup import environment, imports

if TYPE_CHECKING:
    from worker_vllm.worker import Worker

log = logging.getLogger("worker")
QUEUE_FRONT_END = ("runpod", "worker_vllm.runpod_queue")  # 0.4 s (H100) to 1.3 s (CPU) of imports


def main(argv: list[str], environ: MutableMapping[str, str] = os.environ) -> None:
    try:
        own = config.worker_settings(environ)
    except config.ConfigError as e:
        sys.exit(f"startup failed: {e}")
    if own.load_balancer:
        return serve_http(own, environ)
    local = "--rp_serve_api" not in argv and not config.in_runpod(environ)
    job = test_input.test_job(argv, Path.cwd()) if local else None
    if local and job is None:
        sys.exit("Nothing to run: pass --test_input '{\"input\": {...}}' or create test_input.json "
                 "(for a local endpoint, run src/serve.py)")
    # The runpod SDK's CPU probe overlaps vLLM's import only where the SDK will be imported, and
    # its start-up checks where it would run them: in its production loop.
    production = "--rp_serve_api" not in argv and bool(environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    startup = environment.prepare(environ, probe_cpu=not local, sdk_checks=production,
                                  front_end=() if local else QUEUE_FRONT_END)
    worker = start_or_exit(startup, front_ends=not local)
    try:
        if job is not None:
            from worker_vllm.jobs import InFlight
            from worker_vllm.router import make_handler

            sys.exit(asyncio.run(test_input.run(make_handler(worker, InFlight()), job)))
        from worker_vllm import runpod_queue

        runpod_queue.serve(worker)
    finally:
        worker.engine.shutdown()


def serve_http(own: config.WorkerSettings, environ: MutableMapping[str, str]) -> None:
    """A load-balancing endpoint (LOAD_BALANCER=true): /ping answers before vLLM is imported."""
    from worker_vllm import load_balancer

    port = own.port
    health = load_balancer.start_health(port, port if own.port_health is None else own.port_health)
    worker = start_or_exit(environment.prepare(environ))
    try:
        load_balancer.serve(worker, health, port)
    finally:
        worker.engine.shutdown()


def configure_logging(process: str = "") -> None:
    """The worker's log format, at LOG_LEVEL (a no-op once logging has handlers); `process` names
    a process other than the worker's own in each line."""
    where = f"[{process}] " if process else ""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")


def start_or_exit(startup: environment.Startup, front_ends: bool = False) -> "Worker":
    """The started worker (`front_ends`: see worker.start); a start-up failure exits 1 with one
    line that names the cause."""
    with imports.uncollected():
        from worker_vllm import worker  # imports vLLM: the weights are read meanwhile

    configure_logging()
    log.info(startup.caches)
    try:
        return worker.start(startup.env, startup, front_ends)
    except config.ConfigError as e:
        sys.exit(f"startup failed: {e}")
    except Exception as e:  # one line with the cause and the fix, not a traceback wall
        log.debug("startup failed", exc_info=True)
        sys.exit(f"startup failed: {errors.startup_failure(e, startup.failures)}")
