"""Drives one workload five ways on one GPU and writes what it measured.

  (a) vLLM's AsyncLLM, directly: the ceiling;
  (b) the worker's handler, native path, run by the runpod SDK's own job runner;
  (c) the handler's OpenAI path, /v1/chat/completions with stream: true;
  (d) `vllm serve` on loopback, with a handler that forwards its SSE over aiohttp: the design
      other workers use;
  (e) the worker as a load-balancing endpoint (LOAD_BALANCER=true), its HTTP server called directly.

(a), (b) and (c) share one engine in this process and run interleaved, round after round, in the
order --modes names them; (d) and (e) each start a server of their own after that engine is shut
down, and run their rounds on it. Every wave gets prompts of its own (no prefix-cache hits).
throughput.json holds each round and, per way and concurrency, the median and range of its
throughput and TTFT p50, and its ratio to (a): round by round for (b) and (c), to (a)'s median for
(d) and (e), which did not run beside it.

  python bench/bench.py --model DIR --out DIR [--concurrency 256 32 max] [--modes a b c d e]
                        [--rounds 3] [--openai-stream-interval N ...]

"max" is the engine's max_num_seqs: the jobs a worker takes at once when MAX_CONCURRENCY is unset.
"""

import argparse
import asyncio
import contextlib
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

ROOT = Path(__file__).resolve().parent.parent


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


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


async def wave(send, concurrency: int, prompt_len: int, output_len: int, seed: int, vocab: int,
               front_ends: list[psutil.Process]) -> dict:
    """`concurrency` requests at once; `send(prompt, trace, output_len)` runs one and records it.
    The worker's CPU is this process's; with API_SERVER_COUNT > 1, also its other front ends'."""
    me = psutil.Process()
    prompts = [make_model.prompt(prompt_len, seed * 100_000 + i, vocab) for i in range(concurrency)]
    cpu_before, others_before, began = cpu_seconds([me]), cpu_seconds(front_ends), time.perf_counter()
    traces = [Trace(began) for _ in prompts]
    await asyncio.gather(*(send(p, t, output_len) for p, t in zip(prompts, traces, strict=False)))
    wall = time.perf_counter() - began
    result = summarize(traces, wall, cpu_seconds([me]) - cpu_before)
    if front_ends:
        result["other_front_ends_cpu_cores"] = round((cpu_seconds(front_ends) - others_before) / wall, 2)
    return result


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


def chat_body(prompt: str, output_len: int) -> dict:
    return {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": output_len,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def openai_chat(worker, handler, stream_interval=None):
    extra = {"stream_interval": stream_interval} if stream_interval else {}
    per_delta = max(stream_interval or 1, worker.engine.args.stream_interval)  # vLLM takes the larger
    return run_by_sdk(handler, lambda prompt, n: {"openai_route": "/v1/chat/completions",
                                                  "openai_input": chat_body(prompt, n) | extra},
                      lambda item, seen: sse_tokens(item, seen, per_delta))


def http_session():
    """An aiohttp session with no cap on connections: the default TCPConnector allows 100 at once,
    which once held (d) to 100 concurrent streams while (a) to (c) ran all 256. Idle connections are
    dropped after 3 s, before uvicorn closes them (5 s): reusing one it is closing failed a wave
    with "Server disconnected"."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3600))


async def sse_lines(session, port: int, body: dict):
    async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
        assert response.status == 200, (response.status, await response.text())
        async for line in response.content:
            if line.startswith(b"data: "):
                yield line.decode()


def proxied(session, port: int):
    """A peer-style handler: forwards the job to `vllm serve` over HTTP and yields each SSE event."""

    async def handler(job):
        async for line in sse_lines(session, port, job["input"]["openai_input"]):
            yield line

    return run_by_sdk(handler, lambda prompt, n: {"openai_input": chat_body(prompt, n)}, sse_tokens)


def direct_http(session, port: int, per_delta: int):
    """The client of a load-balancing endpoint: its requests reach the worker's server as they are."""

    async def send(prompt, trace, output_len):
        seen = 0
        async for line in sse_lines(session, port, chat_body(prompt, output_len)):
            seen, tokens = sse_tokens(line, seen, per_delta)
            trace.got(tokens)

    return send


# --- orchestration -------------------------------------------------------------------------------


def engine_env(model: Path) -> dict:
    """The worker's settings, with the caches it would use on Runpod (the volume, if there is one)."""
    from worker_vllm import config
    from worker_vllm.startup import caches

    env = {"MODEL_NAME": str(model), "LOAD_FORMAT": "dummy", "MAX_MODEL_LEN": "4096",
           "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "bench"}
    return env | caches.cache_env(os.environ | env, config.worker_settings(os.environ).volume)


class Results:
    """Each round's numbers, and their summary, written to throughput.json after every wave."""

    def __init__(self, out: Path):
        self.path, self.rounds, self.extra = out / "throughput.json", {}, {}

    def add(self, concurrency: str, name: str, round_: int, result: dict) -> None:
        self.rounds.setdefault(concurrency, {}).setdefault(name, []).append(result | {"round": round_})
        print(name, concurrency, round_, json.dumps(result), flush=True)
        self.path.write_text(json.dumps({"summary": self.summary(), "rounds": self.rounds} | self.extra, indent=2))

    def summary(self) -> dict:
        def spread(values):
            return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}

        summary = {}
        for concurrency, ways in self.rounds.items():
            ceiling = {r["round"]: r["output_tok_per_s"] for r in ways.get("a_direct", [])}
            for name, runs in ways.items():
                entry = {key: spread([r[key] for r in runs]) for key in ("output_tok_per_s", "ttft_ms_p50")}
                if name[0] in "bc" and ceiling:  # interleaved with (a) on one engine: round by round
                    entry["vs_a_direct"] = spread([round(r["output_tok_per_s"] / ceiling[r["round"]], 3)
                                                   for r in runs if r["round"] in ceiling])
                elif name[0] in "de" and ceiling:  # on an engine of their own, later: to (a)'s median
                    entry["vs_a_direct_median"] = round(entry["output_tok_per_s"]["median"]
                                                        / statistics.median(ceiling.values()), 3)
                summary.setdefault(concurrency, {})[name] = entry
        return summary


async def measure(name, send, args, results: Results, concurrencies: list[int], round_: int,
                  front_ends: list[psutil.Process] | None = None):
    # Each way, round and concurrency gets prompts of its own, so none finds another's in the prefix cache.
    seed = zlib.crc32(name.encode()) + 1000 * round_
    front_ends = front_ends or []
    if round_ == 0:  # warm-up: first-request work is not throughput
        await wave(send, 8 * (len(front_ends) + 1), 64, 16, seed=seed, vocab=args.vocab, front_ends=front_ends)
    for concurrency, label in zip(concurrencies, args.concurrency, strict=True):
        result = await wave(send, concurrency, args.prompt_len, args.output_len, seed + concurrency, args.vocab,
                            front_ends)
        results.add(label if label != "max" else f"max={concurrency}", name, round_, result)


def concurrencies(args, max_num_seqs: int) -> list[int]:
    return [max_num_seqs if c == "max" else int(c) for c in args.concurrency]


async def in_process(args, results: Results):
    from worker_vllm.startup import hooks

    hooks.install()  # as src/handler.py does: the worker's log masking, and its engine-phase records

    from worker_vllm import worker as worker_module
    from worker_vllm.jobs import InFlight
    from worker_vllm.router import make_handler
    from worker_vllm.startup import environment

    os.environ.update(engine_env(args.model))  # the engine's processes read the cache places from it
    # As the worker's process starts: FAST_BOOT's vLLM variables and the phases file go into os.environ.
    startup = environment.prepare(os.environ)
    worker = worker_module.start(startup.env, startup, front_ends=True)  # as on Runpod (runpod_queue.serve)
    in_flight = InFlight()
    handler = make_handler(worker, in_flight)
    front_ends = []
    if worker.front_ends:  # API_SERVER_COUNT > 1: (b) and (c) spread over the front ends, (a) in this process
        handler = worker.front_ends.balance(handler, in_flight)
        worker.front_ends.listen(asyncio.get_running_loop())
        while len(worker.front_ends.remotes) < worker.front_ends.count - 1:
            await asyncio.sleep(0.5)
        front_ends = [psutil.Process(p.pid) for p in worker.engine.front_ends]
    modes = {"a_direct": direct, "b_native": native, "c_openai": openai_chat}
    for interval in args.openai_stream_interval:  # vLLM's per-request stream_interval on (c)
        modes[f"c_openai_stream_interval_{interval}"] = lambda w, h, n=interval: openai_chat(w, h, n)
    sends = {name: make(worker, handler) for mode in args.modes for name, make in modes.items() if name[0] == mode}
    results.extra["max_num_seqs"] = worker.engine.max_num_seqs
    results.extra["stream_interval"] = worker.engine.args.stream_interval
    results.extra["api_server_count"] = worker.engine.args.api_server_count or 1
    waves = concurrencies(args, worker.engine.max_num_seqs)
    for round_ in range(args.rounds):
        for name, send in sends.items():
            await measure(name, send, args, results, waves, round_, front_ends)
    worker.engine.shutdown()
    if worker.front_ends:
        worker.front_ends.close()


@contextlib.asynccontextmanager
async def server(cmd: list[str], env: dict, url: str, log: Path):
    """A server process, once `url` answers 200; yields its psutil.Process."""
    import aiohttp

    with open(log, "w") as output:
        process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        async with aiohttp.ClientSession() as probe:
            for _ in range(1200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with probe.get(url) as r:
                        if r.status == 200:
                            break
                assert process.poll() is None, f"{cmd[1:3]} exited: see {log}"
                await asyncio.sleep(0.5)
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(60)


async def over_http(name: str, make_send, cmd: list[str], env: dict, health: str, args, results: Results):
    """Rounds of one way that runs in a server process; its process's CPU seconds go in the results."""
    async with server(cmd, env, health, args.out / f"{name}.log") as process, http_session() as session:
        send = make_send(session)
        # "max" is allowed only where (a) to (c) ran first and noted max_num_seqs (main checks).
        cpu, waves = sum(process.cpu_times()[:2]), concurrencies(args, results.extra.get("max_num_seqs", 0))
        for round_ in range(args.rounds):
            await measure(name, send, args, results, waves, round_)
        results.extra[f"{name}_server_process_cpu_s"] = round(sum(process.cpu_times()[:2]) - cpu, 1)


async def via_vllm_serve(args, results: Results):
    port = 18431
    env = os.environ | engine_env(args.model) | {"VLLM_LOGGING_LEVEL": "WARNING"}
    # `vllm serve`'s own server module, without the CLI wrapper (which needs the package named "vllm").
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(args.model),
           "--load-format", "dummy",
           "--max-model-len", "4096", "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
           "--disable-uvicorn-access-log"] + (["--enforce-eager"] if os.environ.get("ENFORCE_EAGER") == "true" else [])
    await over_http("d_vllm_serve_proxy", lambda session: proxied(session, port), cmd, env,
                    f"http://127.0.0.1:{port}/health", args, results)


async def load_balancing(args, results: Results):
    port = 18432
    env = os.environ | engine_env(args.model) | {"LOAD_BALANCER": "true", "PORT": str(port), "PORT_HEALTH": str(port)}
    per_delta = int(results.extra.get("stream_interval", 4))
    cmd = [sys.executable, str(ROOT / "src" / "handler.py")]
    await over_http("e_load_balancer", lambda session: direct_http(session, port, per_delta), cmd, env,
                    f"http://127.0.0.1:{port}/ping", args, results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder from make_model.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", nargs="+", default=["256", "32"],
                        help='requests at once, one wave each; "max" is the engine\'s max_num_seqs')
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["a", "b", "c", "d", "e"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--openai-stream-interval", type=int, nargs="*", default=[],
                        help="also run (c) with these stream_interval values in the request")
    args = parser.parse_args()
    if "max" in args.concurrency and not set(args.modes) & {"a", "b", "c"}:
        parser.error("--concurrency max needs mode a, b or c: their engine reports max_num_seqs")
    args.out.mkdir(parents=True, exist_ok=True)
    args.vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    results = Results(args.out)
    if set(args.modes) & {"a", "b", "c"}:
        asyncio.run(in_process(args, results))
    if "e" in args.modes:
        asyncio.run(load_balancing(args, results))
    if "d" in args.modes:
        asyncio.run(via_vllm_serve(args, results))


if __name__ == "__main__":
    main()
