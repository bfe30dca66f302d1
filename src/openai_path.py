"""The OpenAI path: what Runpod sends for https://api.runpod.ai/v2/<id>/openai/v1/...

The request goes to vLLM's own OpenAI app in-process. JSON answers are yielded as objects; a
stream is yielded as items of whole SSE events, grouped like native token batches.
"""

import json
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

import errors
import limits
import native
from batching import batched

ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",
    "/v1/responses": "POST",
    "/v1/embeddings": "POST",
    "/tokenize": "POST",
    "/detokenize": "POST",
}
# Off unless ENABLE_OPENAI_ADMIN_ROUTES is set: they change the worker for every later job.
ADMIN_ROUTES = {
    "/v1/load_lora_adapter": "POST",
    "/v1/unload_lora_adapter": "POST",
    "/reset_prefix_cache": "POST",
    "/sleep": "POST",
    "/wake_up": "POST",
}


class OpenAIError(dict):
    """An OpenAI error body's "error" member. The runpod SDK stores a failed job's error as
    str(value); this makes that string JSON rather than a Python repr."""

    def __str__(self) -> str:
        return json.dumps(self)


def error(message: str, status: int = 400, param: str | None = None, kind: str = "BadRequestError") -> dict:
    return {"error": OpenAIError(message=message, type=kind, param=param, code=status)}


class OpenAIInput(BaseModel):
    """An OpenAI job's input, as Runpod builds it from the HTTP request."""

    model_config = ConfigDict(extra="forbid")

    openai_route: str
    openai_input: dict | None = None
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)
    request_timeout: float | None = Field(None, gt=0)


def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Whole SSE events ("data: ...\\n\\n"), however the body was cut into chunks."""

    async def events():
        pending = b""
        async for chunk in chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n\n")
            for event in complete:
                if event.strip():
                    yield event + b"\n\n"
        if pending.strip():
            yield pending + b"\n\n"

    return events()


def _carries_output(event: bytes) -> int:
    """0 for a chat stream's opening event (the role, no text yet), else 1."""
    if b'"role"' not in event:
        return 1
    try:
        choices = json.loads(event[len(b"data: "):]).get("choices") or [{}]
    except ValueError:
        return 1
    return int(any(value for c in choices for key, value in (c.get("delta") or {}).items() if key != "role"))


async def run(worker, job_input: dict, job) -> AsyncIterator:
    """Yields vLLM's JSON answer, or its SSE stream as text items, or an OpenAI error object."""
    defaults = worker.settings.worker
    try:
        limits.check_text(job_input, defaults.max_input_chars)
        request = OpenAIInput.model_validate(job_input)
        limits.check_stop((request.openai_input or {}).get("stop"), "openai_input.stop")
    except ValueError as e:  # pydantic's ValidationError is one
        yield error(errors.describe(e))
        return
    routes = ROUTES | (ADMIN_ROUTES if worker.settings.worker.enable_openai_admin_routes else {})
    method = routes.get(request.openai_route)
    if method is None:
        yield error(f"openai_route {request.openai_route!r} is not supported; use one of: "
                    + ", ".join(routes), 404, "openai_route", "NotFoundError")
        return
    body = dict(request.openai_input or {}) if method == "POST" else None
    if body is not None:
        if not body.get("model"):
            body["model"] = worker.engine.served_model_names[0]
        if request.openai_route == "/v1/completions":
            body.setdefault("max_tokens", worker.settings.worker.default_max_tokens)

    job.set_timeout(request.request_timeout or defaults.request_timeout)
    response = await worker.engine.http(method, request.openai_route, body, job.id, on_cancel=job.on_abort)
    if not response.content_type.startswith("text/event-stream"):
        content = b"".join([chunk async for chunk in response.body])
        if job.abort_reason:
            yield _aborted(job, "the request was aborted")
            return
        payload = json.loads(content or b"null")
        if response.status >= 400 and isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            payload["error"] = OpenAIError(payload["error"])
        elif response.status == 404:  # vLLM's app has no such route for this model's tasks
            payload = error(f"openai_route {request.openai_route!r} is not served for this model "
                            "(completions and chat need a generative model, embeddings a pooling model): "
                            f"{_detail(payload)}", 404, "openai_route", "NotFoundError")
        elif response.status >= 400:
            payload = error(_detail(payload), response.status,
                            kind="BadRequestError" if response.status < 500 else "InternalServerError")
        yield payload
        return

    async for batch in batched(_sse_events(response.body), native.batch_sizes(request, defaults),
                               weight=_carries_output):
        yield b"".join(batch).decode()
    if job.abort_reason:  # what was streamed is the partial output
        yield _aborted(job, "the stream was cut short")


def _detail(payload) -> str:
    """The message of an error body that is not an OpenAI error object (FastAPI's {"detail": ...})."""
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    return detail if isinstance(detail, str) else json.dumps(detail)


def _aborted(job, what: str) -> dict:
    status, kind = (408, "TimeoutError") if job.timed_out else (503, "ServiceUnavailableError")
    return error(f"{job.abort_reason}; {what}", status, kind=kind)
