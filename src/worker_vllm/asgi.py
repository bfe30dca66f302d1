"""Calls an ASGI app in-process, as an HTTP client would, with no socket in between.

The OpenAI path sends each job to vLLM's own FastAPI app this way: vLLM's validation, errors and
streaming stay vLLM's, and no port or proxy sits between the job and the engine.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Message = MutableMapping[str, Any]
App = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
DISCONNECT_GRACE = 1.0  # seconds an app gets to stop by itself once its client is gone
CLIENT_CLOSED = 499  # the status of a request stopped before its response began (nginx's convention)


@dataclass
class Response:
    status: int
    content_type: str
    body: "Body"


async def call(app: App, method: str, path: str, body: object | None, headers: dict[str, str] | None = None,
               on_cancel: Callable[[Callable[[], None]], None] = lambda cancel: None) -> Response:
    """Send one request to `app`; returns once the response starts, with its body to iterate.

    `body` is sent as JSON (None: no body). `on_cancel` receives a function that disconnects the
    client, as a closed connection would: the app sees `http.disconnect` (vLLM then aborts the
    request). Disconnected before the response starts, the response is an empty 499. An app that
    raises before it answers raises here; one that raises later, at the end of its body."""
    # In a thread: Runpod takes bodies of up to 20 MB, and encoding one on the loop (0.27 s for 20 MB
    # of short strings) would stall every stream the worker serves.
    payload = b"" if body is None else await asyncio.to_thread(_encode, body)
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    path, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80), "headers": raw_headers,
    }
    received = False
    disconnected = asyncio.Event()
    out: asyncio.Queue[Message | None] = asyncio.Queue()

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await out.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)

    task = asyncio.create_task(run())
    on_cancel(disconnected.set)
    try:
        start = await out.get()
    except BaseException:  # the caller was cancelled while the app worked: the app's client is gone
        await _end(task, disconnected)
        raise
    if start is None:  # the app stopped without answering: it raised, or the client went first
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
        return Response(CLIENT_CLOSED, "", Body(None, task, disconnected))
    content_type = dict(start.get("headers", [])).get(b"content-type", b"").decode()
    return Response(start["status"], content_type, Body(out, task, disconnected))


class Body:
    """A response's body chunks. Reading it to the end, closing it (also unread), or cancelling its
    reader ends the app's task; an app that raises after its response began raises here, at the
    end of the body."""

    def __init__(self, out: "asyncio.Queue[Message | None] | None", task: asyncio.Task, disconnected: asyncio.Event):
        self._out, self._task, self._disconnected = out, task, disconnected

    def __aiter__(self) -> "Body":
        return self

    async def __anext__(self) -> bytes:
        while self._out is not None:
            try:
                message = await self._out.get()
            except BaseException:  # the reader was cancelled: its client is gone
                await self.aclose()
                raise
            if message is None:
                break
            if not message.get("more_body", False):
                self._out = None
            if message.get("body"):
                return message["body"]
        await self.aclose()
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            raise error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._out = None
        await _end(self._task, self._disconnected)


async def _end(task: asyncio.Task, disconnected: asyncio.Event) -> None:
    """Disconnect the app's client and wait for the app's task to end: first by itself, as the app
    sees the disconnect (vLLM's handlers abort their request then; cancelling the task at once would
    leave a request that runs in a task of its own generating), then cancelled."""
    disconnected.set()
    if not task.done():
        await asyncio.wait([task], timeout=DISCONNECT_GRACE)
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _encode(body: object) -> bytes:
    return json.dumps(body).encode()
