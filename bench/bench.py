"""Drives one workload four ways on one GPU and writes what it measured.

  (a) vLLM's AsyncLLM, directly: the ceiling;
  (b) the worker's handler, native path, run by the runpod SDK's own job runner;
  (c) the handler's OpenAI path, /v1/chat/completions with stream: true;
  (d) `vllm serve` on loopback, with a handler that forwards its SSE over aiohttp: the design
      other workers use.

(a), (b) and (c) share one engine in this process and run in the order --modes names them; (d)
starts after that engine is shut down.

  python bench/bench.py --model DIR --out DIR [--concurrency 256 32] [--modes a b c d]
                        [--openai-stream-interval N ...]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the worker_vllm package

import make_model  # bench/, the script's own folder


@dataclass
class Trace:
    """One request as its client saw it: when each piece arrived and how many tokens it held."""

    start: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    items: int = 0

    def got(self, tokens: int) -> None:
        self.items += 1
        if tokens:
            self.arrivals.append((time.perf_counter(), tokens))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(traces: list[Trace], wall: float, cpu: float) -> dict:
    ttft = [t.arrivals[0][0] - t.start for t in traces]
    itl = []  # per output token: the gap before the piece it arrived in, shared by its tokens
    for t in traces:
        for (before, _), (now, tokens) in zip(t.arrivals, t.arrivals[1:], strict=False):
            itl += [(now - before) / tokens] * tokens
    tokens = sum(n for t in traces for _, n in t.arrivals)
    return {
        "requests": len(traces), "output_tokens": tokens, "wall_s": round(wall, 3),
        "output_tok_per_s": round(tokens / wall, 1),
        "ttft_ms_p50": round(percentile(ttft, 50) * 1e3, 1), "ttft_ms_p99": round(percentile(ttft, 99) * 1e3, 1),
        "itl_ms_p50": round(percentile(itl, 50) * 1e3, 2), "itl_ms_p99": round(percentile(itl, 99) * 1e3, 2),
        "stream_items_per_request": round(statistics.mean(t.items for t in traces), 1),
        "first_item_tokens_max": max(t.arrivals[0][1] for t in traces),
        "worker_cpu_cores": round(cpu / wall, 2),
    }


async def wave(send, concurrency: int, prompt_len: int, output_len: int, seed: int, vocab: int) -> dict:
    """`concurrency` requests at once; `send(prompt, trace, output_len)` runs one and records it."""
    me = psutil.Process()
    prompts = [make_model.prompt(prompt_len, seed * 100_000 + i, vocab) for i in range(concurrency)]
    cpu_before, began = sum(me.cpu_times()[:2]), time.perf_counter()
    traces = [Trace(began) for _ in prompts]
    await asyncio.gather(*(send(p, t, output_len) for p, t in zip(prompts, traces, strict=False)))
    wall = time.perf_counter() - began
    return summarize(traces, wall, sum(me.cpu_times()[:2]) - cpu_before)


# --- the four ways -------------------------------------------------------------------------------


def direct(worker, handler):
    counter = iter(range(10**9))

    async def send(prompt, trace, output_len):
        engine_input = await worker.engine.render(prompt=prompt)
        params = worker.engine.sampling_params({"max_tokens": output_len, "ignore_eos": True})  # streams deltas
        async for out in worker.engine.llm.generate(engine_input, params, f"direct-{next(counter)}"):
            trace.got(len(out.outputs[0].token_ids))

    return send


def run_by_sdk(handler, job_input_of, tokens_in):
    """Jobs through the runpod SDK's generator runner, as a deployed worker runs them."""
    from runpod.serverless.modules.rp_job import run_job_generator

    counter = iter(range(10**9))

    async def send(prompt, trace, output_len):
        job = {"id": f"job-{next(counter)}", "input": job_input_of(prompt, output_len)}
        seen = 0
        async for partial in run_job_generator(handler, job):
            assert "error" not in partial, partial
            seen, tokens = tokens_in(partial["output"], seen)
            trace.got(tokens)

    return send


def native_tokens(item, seen):
    return item["usage"]["output"], item["usage"]["output"] - seen


def sse_tokens(item, seen, per_delta=1):
    """Tokens in a piece of an OpenAI chat stream: `per_delta` per content delta (vLLM's stream
    interval; the first delta holds one), until the closing usage event gives the exact total (a
    delta can hold more when the client lags)."""
    tokens = 0
    for event in item.split("\n\n"):
        if '"usage":{' in event and '"completion_tokens":' in event:
            total = json.loads(event[len("data: "):])["usage"]["completion_tokens"]
            tokens += total - (seen + tokens)
        elif event.startswith("data: {") and '"content":"' in event and '"content":""' not in event:
            tokens += 1 if seen + tokens == 0 else per_delta
    return seen + tokens, tokens


def native(worker, handler):
    return run_by_sdk(handler, lambda prompt, n: {
        "prompt": prompt, "stream": True, "sampling_params": {"max_tokens": n, "ignore_eos": True}}, native_tokens)


def openai_chat(worker, handler, stream_interval=None):
    extra = {"stream_interval": stream_interval} if stream_interval else {}
    per_delta = max(stream_interval or 1, worker.engine.args.stream_interval)  # vLLM takes the larger
    return run_by_sdk(handler, lambda prompt, n: {"openai_route": "/v1/chat/completions", "openai_input": {
        "messages": [{"role": "user", "content": prompt}], "max_tokens": n, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}} | extra},
        lambda item, seen: sse_tokens(item, seen, per_delta))


def proxied(port: int):
    """A peer-style handler: forwards the job to `vllm serve` over HTTP and yields each SSE event."""
    import aiohttp

    # No cap on connections: aiohttp's default TCPConnector allows 100 at once, which held (d) to 100
    # concurrent streams in the 256-request wave while (a) to (c) ran all 256.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=3600))

    async def handler(job):
        body = job["input"]["openai_input"]
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    yield line.decode()

    return run_by_sdk(handler, lambda prompt, n: {"openai_input": {
        "model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": n,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}}, sse_tokens), session


# --- orchestration -------------------------------------------------------------------------------


def engine_env(model: Path) -> dict:
    """The worker's settings, with the caches it would use on Runpod (the volume, if there is one)."""
    from worker_vllm import config
    from worker_vllm.startup import caches

    env = {"MODEL_NAME": str(model), "LOAD_FORMAT": "dummy", "MAX_MODEL_LEN": "4096",
           "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "bench"}
    return env | caches.cache_env(os.environ | env, config.worker_settings(os.environ).volume)


async def measure(name, send, args, results, out):
    # Each way gets prompts of its own, so none finds another's in the prefix cache.
    seed = zlib.crc32(name.encode())
    await wave(send, 8, 64, 16, seed=seed, vocab=args.vocab)  # warm-up: first-request work is not throughput
    for concurrency in args.concurrency:
        result = await wave(send, concurrency, args.prompt_len, args.output_len, seed + concurrency, args.vocab)
        results.setdefault(str(concurrency), {})[name] = result
        print(name, concurrency, json.dumps(result), flush=True)
        (out / "throughput.json").write_text(json.dumps(results, indent=2))


async def in_process(args, results, out):
    from worker_vllm.startup import hooks

    hooks.install()  # as src/handler.py does: the worker's log masking, and its engine-phase records

    from worker_vllm import worker as worker_module
    from worker_vllm.jobs import InFlight
    from worker_vllm.router import make_handler
    from worker_vllm.startup import environment

    os.environ.update(engine_env(args.model))  # the engine's processes read the cache places from it
    # As the worker's process starts: FAST_BOOT's vLLM variables and the phases file go into os.environ.
    startup = environment.prepare(os.environ)
    worker = worker_module.start(startup.env, startup)
    handler = make_handler(worker, InFlight())
    modes = {"a_direct": direct, "b_native": native, "c_openai": openai_chat}
    for interval in args.openai_stream_interval:  # vLLM's per-request stream_interval on (c)
        modes[f"c_openai_stream_interval_{interval}"] = lambda w, h, n=interval: openai_chat(w, h, n)
    for mode in args.modes:  # in the order given
        for name, make_send in modes.items():
            if name[0] == mode:
                await measure(name, make_send(worker, handler), args, results, out)
    worker.engine.shutdown()


async def via_vllm_serve(args, results, out):
    port = 18431
    log = open(out / "vllm_serve.log", "w")
    env = os.environ | engine_env(args.model) | {"VLLM_LOGGING_LEVEL": "WARNING"}
    # `vllm serve`'s own server module, without the CLI wrapper (which needs the package named "vllm").
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(args.model),
           "--load-format", "dummy",
           "--max-model-len", "4096", "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
           "--disable-uvicorn-access-log"] + (["--enforce-eager"] if os.environ.get("ENFORCE_EAGER") == "true" else [])
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as probe:
            for _ in range(1200):
                try:
                    async with probe.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert server.poll() is None, "vllm serve exited"
                await asyncio.sleep(0.5)
        send, session = proxied(port)
        api = psutil.Process(server.pid)
        api_cpu = sum(api.cpu_times()[:2])
        await measure("d_vllm_serve_proxy", send, args, results, out)
        results["d_vllm_serve_api_process_cpu_s"] = round(sum(api.cpu_times()[:2]) - api_cpu, 1)
        await session.close()
    finally:
        server.terminate()
        server.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder from make_model.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["a", "b", "c", "d"])
    parser.add_argument("--openai-stream-interval", type=int, nargs="*", default=[],
                        help="also run (c) with these stream_interval values in the request")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    results = {}
    if set(args.modes) & {"a", "b", "c"}:
        asyncio.run(in_process(args, results, args.out))
    if "d" in args.modes:
        asyncio.run(via_vllm_serve(args, results, args.out))


if __name__ == "__main__":
    main()
