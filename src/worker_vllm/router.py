"""Routes each job to its request path by the shape of its input, and keeps the job's record."""

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from worker_vllm import errors
from worker_vllm.jobs import InFlight, Job
from worker_vllm.paths import native, openai
from worker_vllm.paths.base import Item, RequestPath, is_error
from worker_vllm.worker import Worker

log = logging.getLogger("worker")
Handler = Callable[[dict[str, Any]], AsyncIterator[Item]]
UNKNOWN_SHAPE = ('input must be an object with "prompt" or "messages" (native) or '
                 '"openai_route" and "openai_input" (OpenAI)')


def path_for(job_input: object) -> RequestPath | None:
    """The request path for a job's input, or None if its shape is neither."""
    if isinstance(job_input, dict):
        if job_input.keys() & {"openai_route", "openai_input", "route"}:  # "route": worker-vllm's form
            return openai.run
        if "prompt" in job_input or "messages" in job_input:
            return native.run
    return None


def make_handler(worker: Worker, in_flight: InFlight) -> Handler:
    """The runpod SDK's async-generator handler: each job through its path on `worker`, noted in
    `in_flight` while it runs."""

    async def handler(job: dict[str, Any]) -> AsyncIterator[Item]:
        path = path_for(job.get("input"))
        if path is None:
            yield {"error": UNKNOWN_SHAPE}
            return
        current = Job(job["id"], job["input"].get("openai_route") or "native")
        in_flight.add(current)
        status = "cancelled"  # unless the job gets to the end, or fails
        try:
            async for item in path(worker, job["input"], current):
                current.yielded()
                if is_error(item):
                    status = "error"  # now: the runpod SDK stops reading at an error item
                yield item
            if status != "error":
                status = "ok"
        except Exception as e:  # the job fails with one line; the log keeps the traceback
            log.exception("job %s failed", current.id)
            engine = worker.engine
            reason = f"vLLM engine died: {engine.dead_reason}" if engine.is_dead else errors.describe(e)
            status = "error"
            yield {"error": f"{type(e).__name__}: {reason}"}
        finally:
            in_flight.remove(current)
            current.finish(status)

    return handler
