"""Runpod Serverless entry point: starts the worker and routes each job to its path.

A job with `openai_route` goes to the OpenAI path; one with `prompt` or `messages` to the native
path. Run locally with `python src/handler.py --test_input '{"input": {...}}'` or a test_input.json.
"""

import redact
import startup

redact.install()  # before vLLM and runpod create their log handlers
startup.record_engine_phases()  # here, so that vLLM's engine processes run it too (they import this module)

import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import baked  # noqa: E402
import config  # noqa: E402
import cpu_probe  # noqa: E402
import errors  # noqa: E402
import jobs  # noqa: E402
import lifecycle  # noqa: E402
import local_run  # noqa: E402
import native  # noqa: E402
import openai_path  # noqa: E402
import prefetch  # noqa: E402
import storage  # noqa: E402

log = logging.getLogger("worker")
worker = None  # set by main(), or by a caller that drives the handler itself (bench/, tests/)
in_flight = jobs.InFlight()


def path_for(job_input):
    """The request path for a job's input, or None if its shape is neither."""
    if isinstance(job_input, dict):
        if "openai_route" in job_input:
            return openai_path.run
        if "prompt" in job_input or "messages" in job_input:
            return native.run
    return None


async def handler(job: dict):
    path = path_for(job.get("input"))
    if path is None:
        yield {"error": 'input must be an object with "prompt" or "messages" (native) or '
                        '"openai_route" and "openai_input" (OpenAI)'}
        return
    job_input = job["input"]
    current = jobs.Job(job["id"], job_input.get("openai_route") or "native")
    in_flight.add(current)
    status = "cancelled"  # unless the job gets to the end
    try:
        async for item in path(worker, job_input, current):
            current.saw(item)
            yield item
        status = None
    except Exception as e:  # noqa: BLE001 - the job fails with one line; the log keeps the traceback
        log.exception("job %s failed", current.id)
        reason = f"vLLM engine died: {worker.engine.dead_reason}" if worker.engine.is_dead else errors.describe(e)
        status = "error"
        yield {"error": f"{type(e).__name__}: {reason}"}
    finally:
        in_flight.remove(current)
        current.finish(status)


def _log_app_built(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        log.info("vLLM's OpenAI app is built")
    else:
        log.warning("building vLLM's OpenAI app failed: %s", errors.describe(task.exception()))


def main():
    global worker
    env = baked.apply(os.environ)
    os.environ.update(storage.cache_env(env))  # before vLLM and huggingface_hub read them
    storage.seed_model_infos(os.environ)
    local = "--rp_serve_api" not in sys.argv and not config.in_runpod(os.environ)
    probing = None if local else cpu_probe.start()  # for the runpod SDK, imported once the engine is up
    reading = prefetch.start(env)  # the weights, while vLLM imports and starts its engine
    import worker as worker_module

    if probing:
        probing.join()  # before vLLM forks its engine process
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = local_run.test_job(sys.argv[1:], Path.cwd()) if local else None
    if local and job is None:
        sys.exit("Nothing to run: pass --test_input '{\"input\": {...}}' or create test_input.json "
                 "(for a local endpoint, run src/serve.py)")
    try:
        worker = worker_module.start(prefetching=reading)
    except config.ConfigError as e:
        sys.exit(f"startup failed: {e}")
    except Exception as e:  # noqa: BLE001 - one line with the cause, not a traceback wall
        log.debug("startup failed", exc_info=True)
        sys.exit(f"startup failed: {type(e).__name__}: {errors.describe(e)}")

    if local:
        try:
            code = asyncio.run(local_run.run(handler, job))
        finally:
            worker.engine.shutdown()
        sys.exit(code)

    # The SDK logs every job's input and output at its default level, DEBUG; an empty value crashes it.
    if not os.environ.get("RUNPOD_LOG_LEVEL"):
        os.environ["RUNPOD_LOG_LEVEL"] = "INFO"
    import runpod

    concurrency = worker.concurrency
    grace = worker.settings.worker.shutdown_grace_seconds

    on_loop = []

    def concurrency_modifier(_current: int) -> int:
        # First called on the SDK's loop, in the main thread, after the SDK set its SIGTERM handler
        # and before it asks for the first jobs.
        if not on_loop:
            loop = asyncio.get_running_loop()
            lifecycle.graceful_sigterm(loop, in_flight, grace)
            # vLLM's OpenAI app, built while the first jobs are fetched, not by the first job; if
            # that fails, the next job tries again and reports the error.
            on_loop.append(loop.create_task(worker.engine.ready()))
            on_loop[0].add_done_callback(_log_app_built)
        # A constant: the SDK stops fetching until no job is in flight whenever this changes.
        return concurrency

    watchdog = lifecycle.exit_when_engine_dies(worker.engine, in_flight)
    log.info("ready: model %s, taking %d jobs at once", worker.engine.served_model_names[0], concurrency)
    runpod.serverless.start({
        "handler": handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": concurrency_modifier,
    })
    watchdog.set()
    worker.engine.shutdown()


if __name__ == "__main__":
    main()
