"""How much one large job input stalls the other jobs' streams, and the memory it adds (CPU, tiny model).

One process, one event loop, the worker's handler called in-process (no runpod SDK). For each large
input (about --size-mb of JSON each), while the job that carries it is handled:

  - a streaming native job (stream, ignore_eos, max_batch_size 1) runs, restarted whenever it ends:
    `stream_gap_ms` is the longest gap between two of its items that overlaps the large job;
  - a ticker task sleeps 5 ms at a time: `loop_lag_ms` is how late it woke, at most;
  - `rss_added_x` is the process's peak RSS (VmHWM, reset before the job) less its RSS just before
    the job, divided by the input's size as JSON (json.dumps).

The same stream and ticker over a window with no large job are the case's `baseline`. Each input is
parsed from its JSON text before the clock starts, as the runpod SDK would have done: the SDK's
own read and parse of the request is NOT measured here.

  python bench/input_stall.py --src DIR [--size-mb 20] [--cases ...] [--max-input-chars N] --json-out FILE
      one process against the worker_vllm package under DIR (default: this checkout's src/)
  python bench/input_stall.py --compare BEFORE_SRC [--rounds 3] [--results FILE]
      runs the above alternately against BEFORE_SRC and this checkout's src/, and writes the median
      and range of each number per case into FILE under "input_stall" (other keys are kept)
"""

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "2026-11-30-cpu-soak.json"
TICK_S = 0.005
# The session engine's settings from tests/conftest.py that matter here. On CPU, vLLM refuses to start
# unless GPU_MEMORY_UTILIZATION of the node's memory is free (the KV cache is VLLM_CPU_KVCACHE_SPACE):
# 0.3, so that other jobs on a shared machine do not stop it.
ENGINE_ENV = {"ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048", "VLLM_CPU_KVCACHE_SPACE": "1",
              "DTYPE": "float32", "GPU_MEMORY_UTILIZATION": "0.3", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
STREAM_INPUT = {"prompt": "hello", "stream": True, "max_batch_size": 1,
                "sampling_params": {"max_tokens": 2000, "ignore_eos": True, "temperature": 0}}
CHAT = "/v1/chat/completions"
CASES = ("prompt_string", "native_strings", "openai_strings", "native_short_strings", "openai_short_strings",
         "native_parts", "openai_parts")


def make_input(case: str, size: int, max_chars: int) -> dict:
    """About `size` bytes of JSON, of the shape `case` names."""
    small = {"max_tokens": 4}
    if case == "prompt_string":  # one string
        return {"prompt": "hello world " * (size // 12), "sampling_params": small}
    if case.endswith("_strings"):  # many small strings: "abcdefgh" goes over MAX_INPUT_CHARS, "a" stays under
        if "short" in case:
            items = ["a"] * min(size // 5, int(max_chars * 0.97))
        else:
            items = ["abcdefgh"] * (size // 12)
        if case.startswith("native"):
            return {"prompt": "a", "sampling_params": small, "extra": items}
        return {"openai_route": CHAT, "openai_input": {"messages": [{"role": "user", "content": "hi"}],
                                                       "max_tokens": 4, "extra": items}}
    if case.endswith("_parts"):  # one message of many small text parts
        parts = [{"type": "text", "text": "ab"}] * (size // 32)
        messages = [{"role": "user", "content": parts}]
        if case.startswith("native"):
            return {"messages": messages, "sampling_params": small}
        return {"openai_route": CHAT, "openai_input": {"messages": messages, "max_tokens": 4}}
    raise ValueError(case)


def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in kB."""
    status = open("/proc/self/status").read()
    return tuple(int(re.search(rf"{name}:\s+(\d+)", status).group(1)) for name in ("VmRSS", "VmHWM"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


def summary(item) -> str:
    if isinstance(item, dict) and "error" in item:
        return "error: " + str(item["error"])[:160]
    return "ok"


class Probe:
    """The streaming job (restarted as it ends) and the ticker, recording until `stop`."""

    def __init__(self, handler):
        self.handler = handler
        self.items: list[tuple[int, float]] = []  # (stream number, arrival)
        self.ticks: list[tuple[float, float]] = []  # (when, lag)
        self.running = True
        self.stream_errors: list[str] = []

    async def stream(self, deadline: float) -> None:
        n = 0
        while self.running and time.monotonic() < deadline:
            n += 1
            async for item in self.handler({"id": f"stream-{n}", "input": STREAM_INPUT}):
                if isinstance(item, dict) and "error" in item:
                    self.stream_errors.append(summary(item))
                self.items.append((n, time.monotonic()))
                if not self.running:
                    break

    async def tick(self, deadline: float) -> None:
        expected = time.monotonic() + TICK_S
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.ticks.append((now, now - expected))
            expected = now + TICK_S

    def window(self, start: float, end: float) -> dict:
        """The longest stream gap and loop lag that overlap [start, end]."""
        gaps = [b - a for (s1, a), (s2, b) in zip(self.items, self.items[1:], strict=False)
                if s1 == s2 and b > start and a < end]
        lags = [lag for when, lag in self.ticks if when > start and when - lag - TICK_S < end]
        return {"stream_gap_ms": round(max(gaps, default=float("nan")) * 1e3, 1),
                "loop_lag_ms": round(max(lags, default=float("nan")) * 1e3, 1),
                "stream_items": sum(1 for _, t in self.items if start <= t <= end)}


async def measure(handler, cases: list[str], size: int, max_chars: int, baseline_s: float, deadline: float) -> dict:
    probe = Probe(handler)
    tasks = [asyncio.create_task(probe.stream(deadline)), asyncio.create_task(probe.tick(deadline))]
    await asyncio.sleep(1.0)  # the stream is going
    results = {}
    try:
        for case in cases:
            if time.monotonic() > deadline - 30:
                results[case] = {"skipped": "out of time"}
                continue
            text = json.dumps(make_input(case, size, max_chars))
            json_bytes = len(text)  # ASCII: characters are bytes
            job_input = json.loads(text)  # distinct objects, as the SDK's parse makes them
            del text
            gc.collect()
            await asyncio.sleep(0.5)  # building the input held the loop: the stream is going again
            began = time.monotonic()
            await asyncio.sleep(baseline_s)
            base = probe.window(began, time.monotonic())
            reset_peak()
            rss_before, _ = rss_kb()
            cpu_before = time.process_time()
            start = time.monotonic()
            items = [item async for item in handler({"id": f"large-{case}", "input": job_input})]
            end = time.monotonic()
            cpu = time.process_time() - cpu_before
            rss_after, peak = rss_kb()
            await asyncio.sleep(0.3)  # the stream's next item after the job
            del job_input, items[1:]
            gc.collect()
            rss_freed, _ = rss_kb()
            results[case] = {
                "json_mb": round(json_bytes / 1e6, 2), "job_s": round(end - start, 3), "cpu_s": round(cpu, 2),
                "outcome": summary(items[0]) if items else "no items",
                **probe.window(start, end),
                "baseline": base,
                "rss_peak_added_mb": round((peak - rss_before) / 1e3, 1),
                "rss_added_x": round((peak - rss_before) * 1e3 / json_bytes, 2),
                "rss_kept_after_mb": round((rss_freed - rss_before) / 1e3, 1),
                "rss_after_job_mb": round((rss_after - rss_before) / 1e3, 1),
            }
            print(case, json.dumps(results[case]), flush=True)
    finally:
        probe.running = False
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"cases": results, "stream_errors": probe.stream_errors[:5]}


def run_one(args) -> None:
    sys.path.insert(0, str(Path(args.src).resolve()))
    began = time.monotonic()
    deadline = began + args.max_seconds
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB")}
    env |= ENGINE_ENV
    # vLLM reads this one from the process environment, not from the settings (tests/conftest.py sets it so)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", env["VLLM_CPU_KVCACHE_SPACE"])
    if args.max_input_chars:
        env["MAX_INPUT_CHARS"] = str(args.max_input_chars)
    import worker_vllm
    from worker_vllm import worker as worker_module
    from worker_vllm.jobs import InFlight
    from worker_vllm.router import make_handler
    worker = worker_module.start(env)
    handler = make_handler(worker, InFlight())
    max_chars = worker.settings.worker.max_input_chars

    async def main() -> dict:
        await worker.engine.ready()
        for job in ({"prompt": "hello", "sampling_params": {"max_tokens": 4}},
                    {"openai_route": CHAT, "openai_input": {"messages": [{"role": "user", "content": "hi"}],
                                                            "max_tokens": 4}}):
            [_ async for _ in handler({"id": "warm-up", "input": job})]
        return await measure(handler, args.cases, int(args.size_mb * 1e6), max_chars, args.baseline_s, deadline)

    try:
        result = asyncio.run(main())
    finally:
        worker.engine.shutdown()
    result |= {"src": str(Path(worker_vllm.__file__).parents[1]), "max_input_chars": max_chars,
               "size_mb": args.size_mb, "seconds": round(time.monotonic() - began, 1)}
    Path(args.json_out).write_text(json.dumps(result, indent=1))


def stats(values: list[float]) -> dict:
    values = [v for v in values if v == v]  # not NaN
    if not values:
        return {}
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


NUMBERS = ("job_s", "cpu_s", "stream_gap_ms", "loop_lag_ms", "rss_peak_added_mb", "rss_added_x", "rss_kept_after_mb")


def compare(args) -> None:
    """Alternate runs against `args.compare` (before) and this checkout's src/ (after)."""
    versions = {"before": args.compare, "after": str(ROOT / "src")}
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for version, src in versions.items():
                left = args.max_seconds - (time.monotonic() - began)
                if left < 120:
                    print("out of time; stopping", flush=True)
                    break
                out = Path(tmp) / f"{version}-{round_}.json"
                command = [sys.executable, __file__, "--src", src, "--json-out", str(out), "--size-mb",
                           str(args.size_mb), "--baseline-s", str(args.baseline_s),
                           "--max-seconds", str(min(args.run_seconds, left - 60)), "--cases", *args.cases]
                if args.max_input_chars:
                    command += ["--max-input-chars", str(args.max_input_chars)]
                print(f"round {round_ + 1}: {version} ({src})", flush=True)
                try:
                    subprocess.run(command, timeout=min(args.run_seconds, left - 60) + 120, check=True)
                    runs[version].append(json.loads(out.read_text()))
                except (subprocess.SubprocessError, OSError) as e:
                    print(f"round {round_ + 1} {version} failed: {e}", flush=True)
    table: dict = {}
    for version, results in runs.items():
        for case in args.cases:
            done = [r["cases"][case] for r in results if "job_s" in r["cases"].get(case, {})]
            if not done:
                continue
            row = {name: stats([d[name] for d in done]) for name in NUMBERS}
            row |= {"baseline_" + name: stats([d["baseline"][name] for d in done])
                    for name in ("stream_gap_ms", "loop_lag_ms")}
            row |= {"rounds": len(done), "json_mb": done[0]["json_mb"],
                    "outcomes": sorted({d["outcome"] for d in done})}
            table.setdefault(case, {})[version] = row
    results_file = Path(args.results)
    saved = json.loads(results_file.read_text()) if results_file.exists() else {}
    key = "input_stall" if not args.max_input_chars else f"input_stall_max_input_chars_{args.max_input_chars}"
    saved[key] = {
        "what": __doc__.split("\n\n")[1].strip().replace("\n", " "),
        "command": " ".join(["python", "bench/input_stall.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "size_mb": args.size_mb, "rounds": args.rounds, "order": "before, after, before, after, ...",
        "versions": versions, "cases": table, "runs": runs,
    }
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(saved, indent=1) + "\n")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder whose worker_vllm to import")
    parser.add_argument("--compare", metavar="BEFORE_SRC", help="alternate runs: BEFORE_SRC, then this src/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--json-out", default="/dev/stdout")
    parser.add_argument("--size-mb", type=float, default=20)
    parser.add_argument("--baseline-s", type=float, default=2.0)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--max-input-chars", type=int, help="MAX_INPUT_CHARS (default: the worker's own)")
    parser.add_argument("--max-seconds", type=float, default=3000, help="the whole --compare run")
    parser.add_argument("--run-seconds", type=float, default=600, help="one process, start-up included")
    parsed = parser.parse_args()
    if parsed.compare:
        compare(parsed)
    else:
        parsed.max_seconds = min(parsed.max_seconds, parsed.run_seconds)
        run_one(parsed)
