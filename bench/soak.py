"""Memory over many tiny jobs (CPU, tiny model): does the worker level off, and if not, what grows.

One process: the worker on the embedded tiny model, and its handler called in-process with --concurrency
jobs in flight (the runpod SDK, its HTTP and its JSON are NOT part of this). The jobs cycle through
four kinds, "hello" with max_tokens 4: native, native streamed, OpenAI chat, OpenAI chat streamed.
Every --every jobs it records the RSS (and USS) of this process and of vLLM's processes (EngineCore
and its model worker, found among this process's children by their titles), the Python objects
alive here (gc), the jobs that failed or were lost, and the requests vLLM still holds. With
--tracemalloc-from N, tracemalloc starts after N jobs and the lines whose allocations grew most
from then to the end are reported.

  python bench/soak.py [--jobs 20000] [--concurrency 64] [--max-seconds 2400] [--results FILE]

The samples go into FILE (default bench/results/2026-11-30-cpu-soak.json) under "soak" (other keys
are kept). A job is "failed" if it yields an error item or raises, "lost" if it yields nothing or
runs past --job-timeout.
"""

import argparse
import asyncio
import collections
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # the worker_vllm package

RESULTS = ROOT / "bench" / "results" / "2026-11-30-cpu-soak.json"
# As bench/input_stall.py: the test session's engine settings, and room for other jobs on the machine.
ENGINE_ENV = {"ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048", "VLLM_CPU_KVCACHE_SPACE": "1",
              "DTYPE": "float32", "GPU_MEMORY_UTILIZATION": "0.3", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
CHAT = "/v1/chat/completions"
KINDS = (
    ("native", {"prompt": "hello", "sampling_params": {"max_tokens": 4}}),
    ("native_stream", {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 4}}),
    ("openai", {"openai_route": CHAT, "openai_input": {"messages": [{"role": "user", "content": "hello"}],
                                                      "max_tokens": 4}}),
    ("openai_stream", {"openai_route": CHAT, "openai_input": {"messages": [{"role": "user", "content": "hello"}],
                                                             "max_tokens": 4, "stream": True}}),
)
MB = 1 << 20


def processes(me: psutil.Process) -> dict[str, psutil.Process]:
    """vLLM's processes under this one, by role: EngineCore, and the model worker it starts."""
    found = {}
    for child in me.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in title:
            found["engine_core"] = child
        elif "Worker" in title:
            found["model_worker"] = child
    return found


def memory(process: psutil.Process) -> dict:
    try:
        info = process.memory_full_info()
        where = rss_by_mapping(process.pid)
    except (psutil.Error, OSError) as e:
        return {"error": type(e).__name__}
    return {"rss_mb": round(info.rss / MB, 1), "uss_mb": round(info.uss / MB, 1), **where}


def rss_by_mapping(pid: int) -> dict:
    """RSS in MB by kind of mapping (/proc/PID/smaps): the brk heap, anonymous mappings of 512 MB and
    more (vLLM's CPU KV cache), other anonymous memory (malloc's mmaps and thread arenas, pymalloc,
    torch), shared memory, and files (libraries)."""
    kb = {"heap": 0, "anon_big": 0, "anon": 0, "shm": 0, "file": 0}
    kind, size = "file", 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and not first[0].endswith(":"):  # a mapping's header line
                name = first[5].strip() if len(first) > 5 else ""
                kind = ("heap" if name == "[heap]" else "shm" if name.startswith("/dev/shm")
                        else "file" if name.startswith("/") else "anon")
            elif first[0] == "Size:":
                size = int(first[1])
            elif first[0] == "Rss:":
                kb["anon_big" if kind == "anon" and size >= 512 * 1024 else kind] += int(first[1])
    return {f"rss_{k}_mb": round(v / 1024, 1) for k, v in kb.items()}


class Soak:
    def __init__(self, handler, worker, args):
        self.handler, self.worker, self.args = handler, worker, args
        self.me = psutil.Process()
        self.children = processes(self.me)
        self.started = 0
        self.done = 0
        self.failed: collections.Counter[str] = collections.Counter()
        self.lost = 0
        self.errors: list[str] = []
        self.samples: list[dict] = []
        self.census: list[collections.Counter[str]] = []  # the first and the latest only: this soak's own memory
        self.began = time.monotonic()
        self.tracing: tracemalloc.Snapshot | None = None

    async def one(self, n: int) -> None:
        kind, job_input = KINDS[n % len(KINDS)]
        items = []

        async def run() -> None:
            async for item in self.handler({"id": f"soak-{n}", "input": job_input}):
                items.append(item)

        try:
            await asyncio.wait_for(run(), self.args.job_timeout)
        except TimeoutError:
            self.lost += 1
            self.errors.append(f"soak-{n} {kind}: timed out")
        except Exception as e:  # noqa: BLE001 - counted, and the soak goes on
            self.failed[kind] += 1
            self.errors.append(f"soak-{n} {kind}: {type(e).__name__}: {e}"[:300])
        else:
            if not items:
                self.lost += 1
                self.errors.append(f"soak-{n} {kind}: no items")
            elif any(isinstance(i, dict) and "error" in i for i in items):
                self.failed[kind] += 1
                self.errors.append(f"soak-{n} {kind}: {str(items[-1])[:300]}")

    async def lane(self, deadline: float) -> None:
        while self.started < self.args.jobs and time.monotonic() < deadline:
            n = self.started
            self.started += 1
            await self.one(n)
            self.done += 1
            if self.done % self.args.every == 0:
                self.sample()
            if self.args.tracemalloc_from and self.done == self.args.tracemalloc_from:
                tracemalloc.start(self.args.tracemalloc_frames)
                self.tracing = tracemalloc.take_snapshot()

    def sample(self) -> None:
        gc_objects = gc.get_objects()
        self.census[1:] = [collections.Counter(type(o).__qualname__ for o in gc_objects)]
        engine = self.worker.engine
        sample = {
            "jobs": self.done, "seconds": round(time.monotonic() - self.began, 1),
            "worker": memory(self.me),
            **{role: memory(p) for role, p in self.children.items()},
            "gc_objects": len(gc_objects), "gc_counts": gc.get_count(),
            "failed": sum(self.failed.values()), "lost": self.lost,
            "vllm_unfinished_requests": engine.num_unfinished_requests(),
            "threads": self.me.num_threads(),
        }
        if tracemalloc.is_tracing():
            sample["tracemalloc_mb"] = round(tracemalloc.get_traced_memory()[0] / MB, 1)
        del gc_objects
        self.samples.append(sample)
        print(json.dumps(sample), flush=True)

    def growth(self) -> dict:
        """What grew: object types (first sample after warm-up to the last), and tracemalloc's lines."""
        out: dict = {}
        if len(self.census) >= 2:  # both after gc.collect(): before the first job, after the last
            first, last = self.census[0], self.census[-1]
            grown = (last - first).most_common(15)
            out["object_types_grown"] = {name: [first[name], last[name]] for name, _ in grown}
        if self.tracing is not None:
            gc.collect()
            after = tracemalloc.take_snapshot()
            keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
            stats = after.filter_traces(keep).compare_to(self.tracing.filter_traces(keep), "traceback")
            out["tracemalloc_top"] = [
                {"kb": round(s.size_diff / 1024, 1), "count": s.count_diff,
                 "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in s.traceback][-6:]}
                for s in stats[:12]]
            tracemalloc.stop()
        return out


def main(args) -> None:
    began = time.monotonic()
    deadline = began + args.max_seconds
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB")}
    env |= ENGINE_ENV
    # vLLM reads this one from the process environment, not from the settings (tests/conftest.py sets it so)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", env["VLLM_CPU_KVCACHE_SPACE"])
    from worker_vllm import worker as worker_module
    from worker_vllm.jobs import InFlight
    from worker_vllm.router import make_handler

    worker = worker_module.start(env)
    in_flight = InFlight()
    handler = make_handler(worker, in_flight)
    started = time.monotonic() - began

    async def run() -> Soak:
        await worker.engine.ready()
        soak = Soak(handler, worker, args)
        gc.collect()
        soak.sample()  # jobs 0: the engine up, the OpenAI app built
        soak.began = time.monotonic()
        lanes = [asyncio.create_task(soak.lane(deadline)) for _ in range(args.concurrency)]
        # Each lane ends after its job; a job is bounded by --job-timeout.
        await asyncio.wait_for(asyncio.gather(*lanes), max(1.0, deadline - time.monotonic()) + args.job_timeout + 30)
        if soak.done % args.every:
            soak.sample()
        await asyncio.sleep(1)  # the last jobs' tasks end
        gc.collect()
        soak.sample()  # after a collection: what stays
        soak.samples[-1]["after_gc_collect"] = True
        return soak

    try:
        soak = asyncio.run(run())
    finally:
        worker.engine.shutdown()
    seconds = round(time.monotonic() - began, 1)
    first, last = soak.samples[1] if len(soak.samples) > 2 else soak.samples[0], soak.samples[-2]
    result = {
        "what": __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1].replace("\n", " "),
        "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "path": "handler in-process (router.make_handler), no runpod SDK",
        "jobs_asked": args.jobs, "jobs_done": soak.done, "concurrency": args.concurrency, "every": args.every,
        "kinds": [kind for kind, _ in KINDS], "job_inputs": dict(KINDS),
        "failed": dict(soak.failed), "lost": soak.lost, "errors": soak.errors[:20],
        "engine_start_s": round(started, 1), "seconds": seconds,
        "jobs_per_s": round(soak.done / max(soak.samples[-1]["seconds"], 1e-9), 1),
        "stopped_by": "jobs" if soak.done >= args.jobs else "max-seconds",
        "in_flight_at_end": len(in_flight),
        # the first sample after jobs (every jobs) and the last one before the final collection
        "rss_mb_first_to_last": {role: [first[role].get("rss_mb"), last[role].get("rss_mb")]
                                 for role in ("worker", "engine_core", "model_worker") if role in last},
        "samples": soak.samples,
        **soak.growth(),
    }
    results_file = Path(args.results)
    saved = json.loads(results_file.read_text()) if results_file.exists() else {}
    saved[args.key] = result
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(saved, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "job_inputs")}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--every", type=int, default=500, help="a sample every this many jobs")
    parser.add_argument("--max-seconds", type=float, default=2400, help="no new job after this, start-up included")
    parser.add_argument("--job-timeout", type=float, default=120)
    parser.add_argument("--tracemalloc-from", type=int, default=0, help="start tracemalloc after this many jobs")
    parser.add_argument("--tracemalloc-frames", type=int, default=8)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--key", default="soak", help="the key of the results file to write")
    main(parser.parse_args())
