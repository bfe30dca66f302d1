"""The seam between the router and a request path.

A path takes the worker, the job's input and the job; it yields the job's output items and reports
the tokens it counted to the job. An item that is a dict with "error" is the job's last: the job
fails with it, as the runpod SDK takes it.
"""

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from worker_vllm.jobs import Job

if TYPE_CHECKING:
    from worker_vllm.worker import Worker

Item = dict[str, Any] | str  # a JSON object, or a piece of an SSE stream (whole events)


class RequestPath(Protocol):
    def __call__(self, worker: "Worker", job_input: dict[str, Any], job: Job) -> AsyncIterator[Item]: ...


def is_error(item: Item) -> bool:
    return isinstance(item, dict) and bool(item.get("error"))
