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
    from runpod.serverless.modules import rp_scale

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
    rp_scale.JobScaler.run_jobs = run_jobs_as_they_arrive
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


async def run_jobs_as_they_arrive(self, session) -> None:
    """The runpod SDK's JobScaler.run_jobs (1.10.0), but each fetched job starts as it is queued.

    The SDK's own loop looks at its queue of fetched jobs every 0.1 s, so each job waited up to
    100 ms before its handler ran: from the job API handing a job out to its first streamed item
    took 11-110 ms (median 64) on CPU with the tiny model, and 8-14 ms (median 10) with this loop
    (bench/job_pickup.py). Here a get() on the queue wakes the loop instead. Concurrency, the job
    tasks the SDK's stop signals cancel, and the drain once the worker stops are as in the SDK's."""
    tasks: set[asyncio.Task] = set()
    arrival: asyncio.Task | None = None  # a get() on the jobs queue, done when a job is put there
    watched = self.jobs_queue

    def start(job: dict) -> None:
        task = asyncio.create_task(self.handle_job(session, job))
        tasks.add(task)
        self.jobs_tasks[job["id"]] = task

    while True:
        if arrival is not None and arrival.done():
            if not arrival.cancelled():
                start(arrival.result())
            arrival = None
        while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
            start(self.jobs_queue.get_nowait())
        if not self.is_alive() and self.jobs_queue.empty():
            break
        if arrival is not None and watched is not self.jobs_queue:  # the SDK's set_scale made a new queue
            arrival.cancel()  # not done (seen above, and nothing ran since): a cancelled get() takes no job
            arrival = None
        if arrival is None and len(tasks) < self.current_concurrency:  # else tasks holds one at least
            arrival, watched = asyncio.create_task(self.jobs_queue.get()), self.jobs_queue
        done, _ = await asyncio.wait({*tasks, *([arrival] if arrival else [])},
                                     return_when=asyncio.FIRST_COMPLETED, timeout=0.1)  # to see a stop
        tasks.difference_update(done)
    if arrival is not None:
        arrival.cancel()  # the queue is empty: it holds no job
    # As the SDK's loop ends: stopped jobs end in CancelledError; any other error is logged.
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.error("a job failed while the worker stopped: %s", errors.describe(result))
