"""Conformance: the runpod SDK's own clients (runpod.Endpoint, runpod.AsyncioEndpoint), pointed at the
local endpoint instead of api.runpod.ai/v2, on the session engine; few jobs, few tokens."""

import asyncio
import time

import aiohttp
import pytest
import runpod

from test_endpoint import LONG, blocking_handler, local_endpoint

SHORT_STREAM = {"prompt": "hi", "stream": True, "sampling_params": {"max_tokens": 8, "ignore_eos": True}}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


def point_sdk_at(monkeypatch, base: str, api_key: str = "local-key") -> None:
    """runpod's module-wide settings, as a user sets them, for an endpoint app's base URL (.../v2/local)."""
    monkeypatch.setattr(runpod, "api_key", api_key)
    monkeypatch.setattr(runpod, "endpoint_url_base", base.removesuffix("/local"))


@pytest.fixture
def sdk_endpoint(endpoint, monkeypatch) -> runpod.Endpoint:
    point_sdk_at(monkeypatch, endpoint)
    return runpod.Endpoint("local")


def test_run_status_stream_and_output(sdk_endpoint):
    job = sdk_endpoint.run(SHORT_STREAM)
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    streamed = list(job.stream())
    assert [item["usage"]["output"] for item in streamed][-1] == 8
    assert job.output(timeout=60) == streamed
    assert job.status() == "COMPLETED"


def test_run_sync(sdk_endpoint):
    output = sdk_endpoint.run_sync({"prompt": "hi", "sampling_params": {"max_tokens": 4}}, timeout=60)
    assert isinstance(output, list) and 1 <= output[0]["usage"]["output"] <= 4


def test_cancel(sdk_endpoint):
    job = sdk_endpoint.run(LONG)
    end = time.monotonic() + 60
    while job.status() != "IN_PROGRESS":
        assert time.monotonic() < end
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED" and job.output() is None


def test_health(sdk_endpoint):
    health = sdk_endpoint.health()
    assert {"completed", "failed", "inProgress", "inQueue", "retried"} <= set(health["jobs"])
    assert set(health["workers"]) >= {"idle", "running"}


def test_purge_queue_and_the_api_key(engine_loop, monkeypatch):
    release = asyncio.Event()
    with local_endpoint(engine_loop, blocking_handler(release), concurrency=1, api_key="sk-local-sdk") as base:
        point_sdk_at(monkeypatch, base, api_key="wrong-key")
        with pytest.raises(RuntimeError, match="401 Unauthorized"):
            runpod.Endpoint("local").health()
        point_sdk_at(monkeypatch, base, api_key="sk-local-sdk")
        endpoint = runpod.Endpoint("local")
        jobs = [endpoint.run({"n": n}) for n in range(3)]
        end = time.monotonic() + 10
        while jobs[0].status() != "IN_PROGRESS":
            assert time.monotonic() < end
        assert endpoint.health()["jobs"]["inQueue"] == 2
        assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
        engine_loop.loop.call_soon_threadsafe(release.set)
        assert jobs[0].output(timeout=10) == [{"done": jobs[0].job_id}]
        assert endpoint.health()["jobs"]["inQueue"] == 0


def test_asyncio_endpoint(endpoint, monkeypatch):
    point_sdk_at(monkeypatch, endpoint)

    async def scenario():
        async with aiohttp.ClientSession() as session:
            client = runpod.AsyncioEndpoint("local", session)
            job = await client.run(SHORT_STREAM)
            streamed = [item async for item in job.stream()]
            output = await job.output(timeout=60)
            status = await job.status()
            long = await client.run(LONG)
            end = time.monotonic() + 60
            while await long.status() != "IN_PROGRESS":
                assert time.monotonic() < end
            cancelled = await long.cancel()
            long_status = await long.status()
            health = await client.health()
            purged = await client.purge_queue()
        return streamed, output, status, long.job_id, cancelled, long_status, health, purged

    streamed, output, status, long_id, cancelled, long_status, health, purged = asyncio.run(scenario())
    assert streamed == output and output[-1]["usage"]["output"] == 8 and status == "COMPLETED"
    assert cancelled == {"id": long_id, "status": "CANCELLED"} and long_status == "CANCELLED"
    assert set(health) == {"jobs", "workers"}
    assert purged == {"removed": 0, "status": "completed"}


def test_asyncio_purge_queue(engine_loop, monkeypatch):
    release = asyncio.Event()
    with local_endpoint(engine_loop, blocking_handler(release), concurrency=1) as base:
        point_sdk_at(monkeypatch, base)

        async def scenario():
            async with aiohttp.ClientSession() as session:
                client = runpod.AsyncioEndpoint("local", session)
                jobs = [await client.run({"n": n}) for n in range(3)]
                while await jobs[0].status() != "IN_PROGRESS":
                    await asyncio.sleep(0.01)
                purged = await client.purge_queue()
                engine_loop.loop.call_soon_threadsafe(release.set)
                return purged, jobs[0].job_id, await jobs[0].output(timeout=10)

        purged, first, output = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert purged == {"removed": 2, "status": "completed"} and output == [{"done": first}]
