"""The OpenAI path: what Runpod sends for https://api.runpod.ai/v2/<id>/openai/v1/...

The request goes to vLLM's own OpenAI app in-process. JSON answers are yielded as objects; a
stream is yielded as items of whole SSE events, grouped like native token batches.
"""

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from worker_vllm import errors
from worker_vllm.jobs import Job
from worker_vllm.paths import limits, native
from worker_vllm.paths.base import Item
from worker_vllm.paths.batching import batched

if TYPE_CHECKING:
    from worker_vllm.config import WorkerSettings
    from worker_vllm.engine import Engine
    from worker_vllm.worker import Worker

# The public routes of vLLM's app, each served when the app registers it for the model's tasks
# (generation, embedding, scoring, classification).
ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/responses": "POST",
    "/v1/messages": "POST",  # Anthropic Messages
    "/v1/messages/count_tokens": "POST",
    "/v1/models": "GET",
    "/v1/embeddings": "POST",
    "/pooling": "POST",
    "/classify": "POST",
    "/score": "POST",
    "/v1/score": "POST",
    "/rerank": "POST",
    "/v1/rerank": "POST",
    "/v2/rerank": "POST",
    "/tokenize": "POST",
    "/detokenize": "POST",
}
# Runpod turns .../openai/v1/<path> into the route /v1/<path>; vLLM serves these two without /v1.
ALIASES = {"/v1/tokenize": "/tokenize", "/v1/detokenize": "/detokenize"}
MODEL_ROUTE = "/v1/models/"  # + a model id: the openai client's models.retrieve, which vLLM's app lacks
DEFAULT_ROUTE = "/v1/chat/completions"  # for worker-vllm's inputs that name none
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


# The error type an OpenAI client reads for each status the worker answers itself.
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 408: "TimeoutError",
               413: "BadRequestError", 500: "InternalServerError", 503: "ServiceUnavailableError"}


def error(message: str, status: int = 400, param: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """An OpenAI error body; `kind` defaults to the type OpenAI clients expect for `status`."""
    kind = kind or ERROR_TYPES.get(status, "APIError")
    return {"error": OpenAIError(message=message, type=kind, param=param, code=status)}


class OpenAIInput(BaseModel):
    """An OpenAI job's input, as Runpod builds it from the HTTP request. worker-vllm's generic form,
    {"route", "body", "method"}, is taken too; a job that names no route is a chat completion."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    openai_route: str = Field(DEFAULT_ROUTE, validation_alias=AliasChoices("openai_route", "route"))
    openai_input: dict | None = Field(None, validation_alias=AliasChoices("openai_input", "body"))
    method: Literal["GET", "POST"] | None = None
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


def _data(event: bytes) -> Any:
    """The JSON of an SSE event's data line (chat and completions events are only that; Responses
    events name their type on an "event:" line first); None if it has none."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                return json.loads(line[len(b"data: "):])
            except ValueError:
                return None
    return None


def _stream_error(event: bytes) -> tuple[str, int] | None:
    """(message, status) of an SSE event that reports an error: vLLM ends a chat or completions
    stream that fails with {"error": {...}}, a Responses stream with an "error" event."""
    if b'"error"' not in event:
        return None
    data = _data(event)
    if not isinstance(data, dict):
        return None
    if isinstance(failure := data.get("error"), dict):
        code = failure.get("code")
        return str(failure.get("message")), code if isinstance(code, int) and code >= 400 else 500
    if data.get("type") == "error":
        return str(data.get("message")), 500
    return None


def _carries_output(event: bytes) -> int:
    """0 for a chat stream's opening event (the role, no text yet), else 1."""
    if b'"role"' not in event or not event.startswith(b"data: "):
        return 1
    data = _data(event)
    choices = (data.get("choices") if isinstance(data, dict) else None) or [{}]
    return int(any(value for c in choices for key, value in (c.get("delta") or {}).items() if key != "role"))


def _counts(usage: Any) -> tuple[int | None, int | None] | None:
    """(prompt, output) tokens of a usage object: chat and completions name them prompt_tokens and
    completion_tokens, Responses input_tokens and output_tokens."""
    if not isinstance(usage, dict):
        return None
    return (usage.get("prompt_tokens", usage.get("input_tokens")),
            usage.get("completion_tokens", usage.get("output_tokens")))


def usage_reports(chunk: bytes) -> Iterator[tuple[int | None, int | None]]:
    """The token counts a piece of a response body reports: a JSON answer's usage, or each SSE
    event's that has one."""
    if b'"usage":{' not in chunk:
        return
    if chunk.lstrip().startswith(b"{"):
        try:
            data = json.loads(chunk)
        except ValueError:
            return
        if isinstance(data, dict) and (counts := _counts(data.get("usage"))):
            yield counts
        return
    for event in chunk.split(b"\n\n"):
        if counts := _stream_usage(event):
            yield counts


def _stream_usage(event: bytes) -> tuple[int | None, int | None] | None:
    """The token counts an SSE event reports: a chat or completions stream's usage event, or a
    Responses stream's response.completed; None for any other event."""
    if b'"usage":{' not in event:
        return None
    data = _data(event)
    if not isinstance(data, dict):
        return None
    return _counts(data.get("usage") or (data.get("response") or {}).get("usage"))


async def run(worker: "Worker", job_input: dict[str, Any], job: Job) -> AsyncIterator[Item]:
    """Yields vLLM's JSON answer, or its SSE stream as text items, or an OpenAI error object."""
    defaults = worker.settings.worker
    try:
        request = await limits.validated(OpenAIInput, job_input, defaults.max_input_chars)
        limits.check_stop((request.openai_input or {}).get("stop"), "openai_input.stop")
    except ValueError as e:  # pydantic's ValidationError is one
        yield error(errors.describe(e))
        return
    route = ALIASES.get(request.openai_route, request.openai_route)
    if route.startswith(MODEL_ROUTE):
        yield await _model(worker.engine, route[len(MODEL_ROUTE):], job)
        return
    routes = ROUTES | (ADMIN_ROUTES if defaults.enable_openai_admin_routes else {})
    method = routes.get(route)
    if method is None:
        served = await worker.engine.routes()
        yield error(f"openai_route {request.openai_route!r} is not supported; use one of: "
                    + ", ".join(r for r in routes if r in served), 404, "openai_route", "NotFoundError")
        return
    if request.method not in (None, method):
        yield error(f"method {request.method} is not allowed on {route}: use {method}", 405, "method",
                    "MethodNotAllowedError")
        return
    body = dict(request.openai_input or {}) if method == "POST" else None
    if body is not None:
        if not body.get("model"):
            body["model"] = worker.engine.served_model_names[0]
        if route == "/v1/completions":
            body.setdefault("max_tokens", worker.settings.worker.default_max_tokens)
        try:
            limits.check_n(body.get("n"), defaults.max_n, "openai_input.n")
        except ValueError as e:
            yield error(str(e), param="n")
            return

    job.set_timeout(request.request_timeout, defaults.request_timeout)
    response = await worker.engine.http(method, route, body, job.id, on_cancel=job.on_abort)
    async with contextlib.aclosing(response.body):  # also when the SDK stops reading: vLLM aborts the request
        if response.content_type.startswith("text/event-stream"):
            async for item in _stream(response.body, request, defaults, job, worker.engine):
                yield item
        else:
            content = b"".join([chunk async for chunk in response.body])
            yield _answer(response.status, content, request, job, worker.engine)


def _answer(status: int, content: bytes, request: OpenAIInput, job: Job, engine: "Engine") -> dict[str, Any]:
    """vLLM's JSON answer, with its error as an OpenAIError the runpod SDK stores as JSON."""
    if job.abort_reason:
        return _aborted(job, "the request was aborted")
    if status >= 500 and engine.is_dead:
        return error(f"vLLM engine died: {engine.dead_reason}", 503, kind="ServiceUnavailableError")
    payload = json.loads(content or b"null")
    if isinstance(payload, dict) and (counts := _counts(payload.get("usage"))):
        job.report_usage(*counts)
    if status >= 400 and isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload["error"] = OpenAIError(payload["error"])
    elif status == 404:  # vLLM's app has no such route for this model's tasks
        payload = error(f"openai_route {request.openai_route!r} is not served for this model "
                        "(completions and chat need a generative model, embeddings a pooling model): "
                        f"{_detail(payload)}", 404, "openai_route", "NotFoundError")
    elif status >= 400:
        payload = error(_detail(payload), status, kind="BadRequestError" if status < 500 else "InternalServerError")
    return payload


async def _stream(chunks: AsyncIterator[bytes], request: OpenAIInput, defaults: "WorkerSettings",
                  job: Job, engine: "Engine") -> AsyncIterator[Item]:
    """vLLM's SSE stream as items of whole events, grouped like native token batches. A stream that
    vLLM ends with an error event fails the job; what was streamed before it stays streamed."""
    async for batch in batched(_sse_events(chunks), native.batch_sizes(request, defaults), weight=_carries_output):
        for i, event in enumerate(batch):
            if counts := _stream_usage(event):
                job.report_usage(*counts)
            if failure := _stream_error(event):
                if i:
                    yield b"".join(batch[:i]).decode()
                message, status = failure
                if engine.is_dead:
                    message, status = f"vLLM engine died: {engine.dead_reason}", 503
                yield error(f"{message}; the stream was cut short", status,
                            kind="ServiceUnavailableError" if status == 503 else "InternalServerError")
                return
        yield b"".join(batch).decode()
    if job.abort_reason:  # what was streamed is the partial output
        yield _aborted(job, "the stream was cut short")


async def _model(engine: "Engine", model_id: str, job: Job) -> dict[str, Any]:
    """One model of vLLM's /v1/models (the served name or a LoRA adapter), or an OpenAI 404."""
    response = await engine.http("GET", "/v1/models", None, job.id)
    listed = json.loads(b"".join([chunk async for chunk in response.body]))
    for model in listed.get("data", []):
        if model.get("id") == model_id:
            return model
    return error(f"The model `{model_id}` does not exist.", 404, "model", "NotFoundError")


def _detail(payload) -> str:
    """The message of an error body that is not an OpenAI error object (FastAPI's {"detail": ...})."""
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    return detail if isinstance(detail, str) else json.dumps(detail)


def _aborted(job: Job, what: str) -> dict[str, Any]:
    status, kind = (408, "TimeoutError") if job.timed_out else (503, "ServiceUnavailableError")
    return error(f"{job.abort_reason}; {what}", status, kind=kind)
