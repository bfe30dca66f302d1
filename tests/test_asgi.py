"""asgi.call against tiny hand-written ASGI apps, no engine: what reaches the app, how the response
comes back (whole or streamed), and what a disconnect, an error or a missing answer turn into."""

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker_vllm import asgi
from worker_vllm.asgi import CLIENT_CLOSED, call

STEP = 0.5  # the longest any single wait in these tests may take: nothing here can hang


@pytest.fixture(autouse=True)
def short_grace(monkeypatch):
    """Apps here that ignore their client's going are cancelled after 0.05 s, not asgi's 1 s."""
    monkeypatch.setattr(asgi, "DISCONNECT_GRACE", 0.05)


def run(test):
    """Runs one test's coroutine in a fresh event loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(test(), 2 * STEP))


async def start(send, status=200, content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})


async def chunk(send, body: bytes, more: bool = True):
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def read_all(response) -> list[bytes]:
    async def drain():
        return [part async for part in response.body]

    return await asyncio.wait_for(drain(), STEP)


async def next_chunk(body) -> bytes:
    return await asyncio.wait_for(anext(body), STEP)


def test_a_json_request_reaches_the_app_with_its_headers_and_query_and_the_json_answer_comes_back():
    seen = {}

    async def echo(scope, receive, send):
        message = await receive()
        seen.update(scope=scope, message=message)
        answer = json.dumps({"got": json.loads(message["body"])}).encode()
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await chunk(send, answer, more=False)

    async def test():
        response = await call(echo, "POST", "/v1/echo?a=1&b=two", {"prompt": "hi", "n": 2},
                              headers={"X-Request-Id": "job-7"})
        assert (response.status, response.content_type) == (201, "application/json")
        assert b"".join(await read_all(response)) == b'{"got": {"prompt": "hi", "n": 2}}'

    run(test)
    scope, message = seen["scope"], seen["message"]
    assert (scope["type"], scope["method"], scope["path"], scope["raw_path"]) == ("http", "POST", "/v1/echo", b"/v1/echo")
    assert scope["query_string"] == b"a=1&b=two"
    assert (b"x-request-id", b"job-7") in scope["headers"]
    assert (b"content-type", b"application/json") in scope["headers"]
    assert message == {"type": "http.request", "body": b'{"prompt": "hi", "n": 2}', "more_body": False}


def test_a_starlette_app_reads_the_json_body_headers_and_query_params():
    async def endpoint(request: Request):
        return JSONResponse({"body": await request.json(), "id": request.headers["x-request-id"],
                             "q": request.query_params["q"], "method": request.method}, status_code=202)

    app = Starlette(routes=[Route("/items", endpoint, methods=["GET", "POST"])])

    async def test():
        response = await call(app, "POST", "/items?q=x%20y", {"k": [1, 2]}, headers={"x-request-id": "r-1"})
        assert (response.status, response.content_type) == (202, "application/json")
        assert json.loads(b"".join(await read_all(response))) == {"body": {"k": [1, 2]}, "id": "r-1", "q": "x y",
                                                                  "method": "POST"}
        missing = await call(app, "GET", "/nowhere", None)
        assert missing.status == 404
        assert b"".join(await read_all(missing)) == b"Not Found"

    run(test)


def test_a_get_without_a_body_sends_an_empty_request_body():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["method"], scope["query_string"], await receive()))
        await start(send)
        await chunk(send, b"ok", more=False)

    async def test():
        response = await call(app, "GET", "/health", None)
        assert (response.status, await read_all(response)) == (200, [b"ok"])

    run(test)
    assert seen == [("GET", b"", {"type": "http.request", "body": b"", "more_body": False})]


def test_a_stream_arrives_chunk_by_chunk_in_order_the_first_before_the_app_sends_the_last():
    release = asyncio.Event()
    sent = []
    finished = []

    async def app(scope, receive, send):
        await receive()
        await start(send, content_type=b"text/event-stream; charset=utf-8")
        sent.append(b"one")
        await chunk(send, b"one")
        await asyncio.wait_for(release.wait(), STEP)
        for part in (b"two", b"", b"three"):  # an empty chunk in between carries nothing
            sent.append(part)
            await chunk(send, part)
        await chunk(send, b"", more=False)
        finished.append(True)

    async def test():
        response = await call(app, "POST", "/v1/completions", {"stream": True})
        assert (response.status, response.content_type) == (200, "text/event-stream; charset=utf-8")
        body = aiter(response.body)
        assert await next_chunk(body) == b"one"
        assert sent == [b"one"] and not finished  # the app is still held, mid-stream
        release.set()
        assert [part async for part in body] == [b"two", b"three"]
        assert finished == [True]

    run(test)


def test_the_stream_ends_at_the_last_chunk_and_finishing_it_ends_the_apps_task():
    after_last = []

    async def app(scope, receive, send):
        await receive()
        await start(send)
        await chunk(send, b"a")
        await chunk(send, b"b", more=False)
        try:
            after_last.append((await receive())["type"])  # lingers after its answer, until told
        except asyncio.CancelledError:
            after_last.append("cancelled")
            raise

    async def test():
        response = await call(app, "GET", "/", None)
        assert await read_all(response) == [b"a", b"b"]
        assert after_last in (["http.disconnect"], ["cancelled"])  # ended before the body's iteration returned

    run(test)


def test_the_cancel_function_disconnects_a_streaming_client_and_the_app_stops():
    cancels = []
    seen = []

    async def ticker(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        await start(send)
        disconnect = asyncio.ensure_future(receive())
        n = 0
        while not disconnect.done():
            await chunk(send, b"%d," % n)
            n += 1
            await asyncio.sleep(0.001)
        seen.append(disconnect.result()["type"])

    async def test():
        response = await call(ticker, "POST", "/stream", {}, on_cancel=cancels.append)
        assert len(cancels) == 1
        body = aiter(response.body)
        assert [await next_chunk(body) for _ in range(3)] == [b"0,", b"1,", b"2,"]
        assert seen == []
        cancels[0]()
        rest = [part async for part in body]  # ends: the app stopped on the disconnect
        assert seen == ["http.disconnect"]
        assert b"".join(rest) == b"".join(b"%d," % n for n in range(3, 3 + len(rest)))

    run(test)


def test_closing_the_body_early_ends_the_apps_task():
    outcome = []
    tasks = []

    async def endless(scope, receive, send):
        tasks.append(asyncio.current_task())
        await receive()
        await start(send)
        try:
            while True:
                await chunk(send, b"x")
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            outcome.append("ended")

    async def test():
        response = await call(endless, "GET", "/", None)
        body = response.body
        assert await next_chunk(body) == b"x"
        assert outcome == []
        await asyncio.wait_for(body.aclose(), STEP)
        assert outcome == ["cancelled", "ended"]  # done by the time aclose returned
        assert tasks[0].done()

    run(test)


def test_breaking_out_of_the_body_loop_disconnects_an_app_that_listens():
    seen = []
    tasks = []

    async def app(scope, receive, send):
        tasks.append(asyncio.current_task())
        await receive()
        await start(send)
        await chunk(send, b"first")
        seen.append((await receive())["type"])
        await chunk(send, b"after the disconnect")  # a real app might still send one more

    async def test():
        response = await call(app, "GET", "/", None)
        async with asyncio.timeout(STEP):
            async for part in response.body:
                assert part == b"first"
                break
            await response.body.aclose()
        assert seen in ([], ["http.disconnect"])  # the disconnect, or cancelled before it could look
        assert tasks[0].done()

    run(test)


def test_an_app_that_raises_before_it_answers_raises_from_call():
    class Boom(Exception):
        pass

    async def broken(scope, receive, send):
        await receive()
        raise Boom("no answer for you")

    async def test():
        with pytest.raises(Boom, match="no answer for you"):
            await call(broken, "POST", "/v1/chat/completions", {"messages": []})

    run(test)


def test_an_app_that_raises_at_once_without_receiving_raises_from_call():
    async def broken(scope, receive, send):
        raise KeyError("route")

    async def test():
        with pytest.raises(KeyError, match="route"):
            await call(broken, "GET", "/", None)

    run(test)


def test_an_app_that_returns_without_answering_gives_an_empty_499():
    async def silent(scope, receive, send):
        await receive()

    async def test():
        response = await call(silent, "POST", "/", {"x": 1})
        assert (response.status, response.content_type) == (CLIENT_CLOSED, "")
        assert await read_all(response) == []

    run(test)
    assert CLIENT_CLOSED == 499


def test_cancelled_before_the_response_starts_the_app_sees_the_disconnect_and_the_answer_is_499():
    events = []

    def cancel_at_once(cancel):
        events.append("on_cancel")
        cancel()  # the client is gone before the app has even run

    async def waits_for_disconnect(scope, receive, send):
        events.append((await receive())["type"])  # the request body still comes first
        events.append((await receive())["type"])  # then, at once, the disconnect

    async def test():
        response = await call(waits_for_disconnect, "POST", "/v1/completions", {"prompt": "p"},
                              on_cancel=cancel_at_once)
        assert (response.status, response.content_type) == (499, "")
        assert await read_all(response) == []

    run(test)
    assert events == ["on_cancel", "http.request", "http.disconnect"]


def test_cancelled_while_the_app_works_before_answering_gives_499():
    cancels = []
    waiting = asyncio.Event()

    async def slow(scope, receive, send):
        await receive()
        waiting.set()
        assert (await receive())["type"] == "http.disconnect"

    async def test():
        pending = asyncio.create_task(call(slow, "GET", "/", None, on_cancel=cancels.append))
        await asyncio.wait_for(waiting.wait(), STEP)
        assert not pending.done()
        cancels[0]()
        response = await asyncio.wait_for(pending, STEP)
        assert response.status == CLIENT_CLOSED
        assert await read_all(response) == []

    run(test)


def test_cancelling_after_the_stream_finished_is_harmless():
    cancels = []

    async def app(scope, receive, send):
        await receive()
        await start(send, content_type=b"application/json")
        await chunk(send, b"{}", more=False)

    async def test():
        response = await call(app, "GET", "/", None, on_cancel=cancels.append)
        assert await read_all(response) == [b"{}"]
        cancels[0]()  # a job aborted after vLLM answered: nothing left to stop, nothing raised

    run(test)


async def stream_forever(scope, receive, send):
    await start(send)
    while True:
        await chunk(send, b"tick")
        await asyncio.sleep(0.01)


def test_closing_an_unread_body_ends_the_apps_task():
    async def test():
        response = await call(stream_forever, "GET", "/", None)
        await asyncio.wait_for(response.body.aclose(), STEP)
        assert response.body._task.done()

    run(test)


def test_a_caller_cancelled_while_waiting_for_the_answer_disconnects_the_app():
    seen = []

    async def slow(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(10)
        finally:
            seen.append("stopped")

    async def test():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(slow, "POST", "/", {}), 0.05)
        assert seen == ["stopped"]

    run(test)


def test_an_app_that_raises_mid_stream_raises_at_the_end_of_the_body():
    async def breaks(scope, receive, send):
        await start(send)
        await chunk(send, b"part")
        raise RuntimeError("engine gone")

    async def test():
        response = await call(breaks, "GET", "/", None)
        assert await next_chunk(response.body) == b"part"
        with pytest.raises(RuntimeError, match="engine gone"):
            await next_chunk(response.body)

    run(test)


def test_cancelling_the_bodys_reader_ends_the_apps_task():
    """As when the runpod SDK cancels a job: the app must see its client go (vLLM aborts the request)."""
    async def test():
        response = await call(stream_forever, "GET", "/", None)
        assert await next_chunk(response.body) == b"tick"

        async def read_on():
            async for _ in response.body:
                pass

        reader = asyncio.create_task(read_on())
        await asyncio.sleep(0.05)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert response.body._task.done()

    run(test)


def test_an_app_that_listens_sees_its_client_go_before_any_cancel():
    """vLLM's JSON handlers run the request in a task of their own and abort it when they see the
    disconnect; cancelling the app at once would leave that task generating."""
    seen = []

    async def listens(scope, receive, send):
        await receive()
        await start(send)
        await chunk(send, b"first")
        if (await receive())["type"] == "http.disconnect":
            seen.append("disconnect")

    async def test():
        response = await call(listens, "GET", "/", None)
        assert await next_chunk(response.body) == b"first"
        await asyncio.wait_for(response.body.aclose(), STEP)
        assert seen == ["disconnect"] and not response.body._task.cancelled()

    run(test)
