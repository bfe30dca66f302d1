"""A bounded load test on 127.0.0.1 through src/serve.py and the real engine: 500 jobs from 64
concurrent clients, native and OpenAI, streaming and not. Each completes once with its own output,
and the worker's memory comes back to where it was."""

import asyncio
import json

import aiohttp
import psutil
import requests

JOBS, CLIENTS = 500, 64


def expected(k: int) -> tuple[str, int]:
    """Job k's prompt and output length: together they tell one job's output from another's."""
    return "word " * (1 + k % 29), 2 + k % 13


async def native(session, base, k, stream: bool) -> tuple[int, int]:
    prompt, max_tokens = expected(k)
    job_input = {"prompt": prompt, "stream": stream, "sampling_params": {"max_tokens": max_tokens, "ignore_eos": True}}
    if not stream:
        async with session.post(f"{base}/runsync", json={"input": job_input}) as r:
            body = await r.json()
        assert body["status"] == "COMPLETED", body
        (item,) = body["output"]
        return item["usage"]["input"], item["usage"]["output"]
    async with session.post(f"{base}/run", json={"input": job_input}) as r:
        job_id = (await r.json())["id"]
    items = []
    while True:
        async with session.get(f"{base}/stream/{job_id}") as r:
            body = await r.json()
        items += [entry["output"] for entry in body["stream"]]
        if body["status"] != "IN_PROGRESS" and body["status"] != "IN_QUEUE":
            break
    assert body["status"] == "COMPLETED", body
    async with session.get(f"{base}/status/{job_id}") as r:
        assert (await r.json())["output"] == items  # /stream gave each item exactly once
    return items[-1]["usage"]["input"], items[-1]["usage"]["output"]


async def openai(session, base, k, stream: bool) -> tuple[int, int]:
    prompt, max_tokens = expected(k)
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with session.post(f"{base}/openai/v1/completions", json=body) as r:
        assert r.status == 200
        if not stream:
            usage = (await r.json())["usage"]
            return usage["prompt_tokens"], usage["completion_tokens"]
        text = await r.text()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    usage = json.loads(events[-2][len("data: "):])["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def completed(endpoint) -> int:
    return requests.get(f"{endpoint}/health", timeout=10).json()["jobs"]["completed"]


def memory_mb() -> float:
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20


def test_500_jobs_from_64_clients(endpoint, engine_loop, worker):
    kinds = [lambda s, k: native(s, endpoint, k, True), lambda s, k: native(s, endpoint, k, False),
             lambda s, k: openai(s, endpoint, k, True), lambda s, k: openai(s, endpoint, k, False)]

    async def load(count: int) -> dict:
        results: dict[int, tuple] = {}
        queue = iter(range(count))
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def client():
                for k in queue:
                    results[k] = await kinds[k % 4](session, k)

            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CLIENTS))), 600)
        return results

    engine_loop.run(load(40), timeout=300)  # warm-up: first-use allocations are not a leak
    before, done_before = memory_mb(), completed(endpoint)
    results = engine_loop.run(load(JOBS), timeout=700)
    after = memory_mb()

    assert completed(endpoint) - done_before == JOBS, "the endpoint ran a job more or less than once"
    assert sorted(results) == list(range(JOBS))
    prompt_tokens = {}
    for k, (prompt_len, output_len) in results.items():
        assert output_len == expected(k)[1], f"job {k} got another job's output"
        prompt_tokens.setdefault(expected(k)[0], set()).add(prompt_len)
    assert all(len(lengths) == 1 for lengths in prompt_tokens.values()), "a job got another job's prompt"
    assert worker.engine.num_unfinished_requests() == 0
    assert after <= before * 1.10, f"memory grew from {before:.0f} MiB to {after:.0f} MiB"
