"""A queue-based endpoint: the runpod SDK's production loop takes jobs from Runpod's queue."""

import asyncio
import logging

from worker_vllm import errors, lifecycle
from worker_vllm.jobs import InFlight
from worker_vllm.router import make_handler
from worker_vllm.worker import Worker

log = logging.getLogger("worker")


def serve(worker: Worker) -> None:
    """Take jobs until Runpod stops the worker (SIGTERM) or the engine dies (exit 1)."""
    import runpod  # here: its import reads RUNPOD_LOG_LEVEL, which startup.environment sets

    in_flight = InFlight()
    concurrency = worker.concurrency
    loop_started: list[asyncio.Task] = []

    def concurrency_modifier(_current: int) -> int:
        if not loop_started:  # the first call: on the SDK's loop, before it asks for jobs
            loop_started.append(on_loop_start(asyncio.get_running_loop(), worker, in_flight))
        # A constant: the SDK stops fetching until no job is in flight whenever this changes.
        return concurrency

    handler = make_handler(worker, in_flight)
    on_death = None
    if worker.front_ends:
        handler = worker.front_ends.balance(handler, in_flight)
        on_death = worker.front_ends.fail_all
    watchdog = lifecycle.exit_when_engine_dies(worker.engine, in_flight, on_death)
    log.info("ready: model %s, taking %d jobs at once%s", worker.engine.served_model_names[0], concurrency,
             f" over {worker.front_ends.count} front-end processes" if worker.front_ends else "")
    runpod.serverless.start({
        "handler": handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": concurrency_modifier,
    })
    watchdog.set()
    if worker.front_ends:
        worker.front_ends.close()


def on_loop_start(loop: asyncio.AbstractEventLoop, worker: Worker, in_flight: InFlight) -> asyncio.Task:
    """What starts with the SDK's loop, in the main thread, after the SDK set its SIGTERM handler:
    the worker's own SIGTERM drain, and vLLM's OpenAI app, built while the first jobs are fetched
    rather than by the first job (if that fails, the next job tries again and reports the error)."""
    lifecycle.graceful_sigterm(loop, in_flight, worker.settings.worker.shutdown_grace_seconds)
    if worker.front_ends:
        worker.front_ends.listen(loop)
    building = loop.create_task(worker.engine.ready())
    building.add_done_callback(_log_app_built)
    return building


def _log_app_built(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        log.info("vLLM's OpenAI app is built")
    else:
        log.warning("building vLLM's OpenAI app failed: %s", errors.describe(error))
