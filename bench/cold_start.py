"""Cold start of the worker as Runpod starts it (`python src/handler.py`, one job): seconds from
process start to ready and to the first token, first with empty caches, then with the caches the
first start left. The phases come from the worker's own start-up line.

The caches live where the worker puts them on Runpod: on the network volume, /runpod-volume
(created and emptied here: run it on a machine of your own). The empty start is
builder/warm_cache.py, which fills the volume as a user would (one local job, with no runpod SDK);
the warm start is the worker in the runpod SDK's production loop, which finds what it left and
takes one streaming job from a fake Runpod job API on 127.0.0.1. Its first token is the moment
the first streamed item reaches that API. A "first" run is that start on an emptied volume: a new
endpoint's first worker, which finds only what the image carries. A "load_balancer" run starts the worker with
LOAD_BALANCER=true instead and polls /ping every 20 ms: Runpod's cold-start figure for such an
endpoint is the time from the first 204 to the first 200; then one streamed chat completion.

  python bench/cold_start.py --model DIR --out DIR [--label NAME] [--runs empty first warm load_balancer]
                             [--real-weights] [--evict-weights] [--worker PATH] [--py-spy PATH]

The weights are dummy unless LOAD_FORMAT says otherwise, or --real-weights leaves the loader to
the worker (FAST_BOOT's InstantTensor on a GPU) and vLLM; --evict-weights drops the model's weight
files from the page cache before each start, as on a machine that has not read them yet. With
--py-spy, py-spy samples each start's processes (vLLM's engine process too) into a raw profile.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the worker_vllm package

from worker_vllm.local.fake_runpod import FakeRunpod, wait_for

HERE = Path(__file__).resolve().parent
VOLUME = Path("/runpod-volume")
KV_CACHE = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
WORKER_LINE = "startup: process and imports"  # the worker's breakdown, vLLM's engine phases included
PHASE = re.compile(r"([A-Za-z][\w. -]*?) ([\d.]+) s\b")
PREFETCH = re.compile(r"prefetch: ([\d.]+) of ([\d.]+) GiB of weights read into memory in ([\d.]+) s")
JIT = re.compile(r"(?i)flashinfer\.jit|\[flashinfer\].*(compil|build)|\bninja\b")
LB_PORT = 18433


def evict(model: Path) -> None:
    """Drop the model's weight files from the page cache."""
    for path in model.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # written pages must be clean to be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def start_once(model: Path, run: str, log_path: Path, worker: Path, py_spy: Path | None = None,
               real_weights: bool = False) -> dict:
    """One start of the worker on `model`; what it measured."""
    weights = {} if real_weights else {"LOAD_FORMAT": "dummy"}
    env = weights | os.environ | {"MODEL_NAME": str(model), "MAX_MODEL_LEN": "4096"}
    job = {"prompt": "t11 t12 t13", "stream": True, "sampling_params": {"max_tokens": 8}}
    fake = None
    if run == "empty":
        command = [HERE.parent / "builder" / "warm_cache.py", VOLUME]
    elif run == "load_balancer":
        env |= {"LOAD_BALANCER": "true", "PORT": str(LB_PORT), "PORT_HEALTH": str(LB_PORT)}
        command = [worker.resolve()]
    else:
        fake = FakeRunpod([{"id": "first", "input": job}])
        env |= fake.worker_env()
        command = [worker.resolve()]
    result, jit_lines = {}, []
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, *map(str, command)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd="/tmp")
    profiler = py_spy and profile(py_spy, proc.pid, log_path.with_suffix(".pyspy.txt"))
    if fake:  # the job done: stop the worker as Runpod does, with SIGTERM; a start that hangs is killed
        threading.Thread(target=stop_when_done, args=(proc, fake), daemon=True).start()
    if run == "load_balancer":  # as Runpod's load balancer sees it; then SIGTERM
        threading.Thread(target=lambda: result.update(load_balancer_timeline(proc, began)) or proc.terminate(),
                         daemon=True).start()
    with open(log_path, "w") as log:
        for line in proc.stdout:
            log.write(line)
            if "available_kv_cache_gib" not in result and (match := KV_CACHE.search(line)):
                result["available_kv_cache_gib"] = float(match.group(1))
            if "worker_line" not in result and WORKER_LINE in line:
                result["ready_after_launch_s"] = round(time.monotonic() - began, 2)
                result["worker_line"] = line.split("startup: ", 1)[1].strip()
                result["phases_s"] = {name: float(seconds) for name, seconds in PHASE.findall(result["worker_line"])}
            if match := PREFETCH.search(line):
                result["prefetch_gib_read_of_total_in_s"] = [float(g) for g in match.groups()]
            if JIT.search(line):
                jit_lines.append(line.strip()[:200])
            if not fake and "first_token_after_launch_s" not in result and line.startswith('{"choices"'):
                result["first_token_after_launch_s"] = round(time.monotonic() - began, 2)
    result["exit_code"] = proc.wait()
    if profiler:  # it writes its profile once the worker is gone
        profiler.wait(60)
    if fake:
        if "first" in fake.first_streamed_at:
            result["first_token_after_launch_s"] = round(fake.first_streamed_at["first"] - began, 2)
            if "ready_after_launch_s" in result:  # the SDK's import and start, the job's fetch and first token
                result["ready_to_first_token_s"] = round(result["first_token_after_launch_s"]
                                                         - result["ready_after_launch_s"], 2)
        result["job_done"] = fake.done.get("first")
        fake.close()
    result["kernel_jit_log_lines"] = jit_lines[:20]
    return result


def profile(py_spy: Path, pid: int, out: Path) -> subprocess.Popen:
    """py-spy attached to the worker and the processes it starts, every thread, waiting included:
    a start's time is mostly one thread at a time, often waiting on the GPU or another process.
    Attached, not launching, so that the worker gets Runpod's SIGTERM itself; nonblocking, so that
    the start is not paused. Its first samples come once the interpreter is up."""
    time.sleep(0.2)
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses", "--threads", "--idle",
                             "--nonblocking", "-r", "100", "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=out.with_suffix(".log").open("w"))


def stop_when_done(proc: subprocess.Popen, fake: FakeRunpod, deadline_s: float = 240) -> None:
    if not wait_for(lambda: fake.done or proc.poll() is not None, deadline_s):
        proc.kill()  # its log and result say how far it got; the next start goes on
    elif proc.poll() is None:
        proc.terminate()


def load_balancer_timeline(proc: subprocess.Popen, began: float) -> dict:
    """Seconds after launch of the first /ping answer, the first 204 and the first 200, then of the
    first token of one streamed chat completion."""
    seen: dict[str, float] = {}
    while "ping_200_after_launch_s" not in seen and proc.poll() is None and time.monotonic() - began < 900:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{LB_PORT}/ping", timeout=2) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:  # not listening yet
            status = None
        if status is not None:
            seen.setdefault("ping_first_answer_after_launch_s", round(time.monotonic() - began, 2))
            if status in (200, 204):
                seen.setdefault(f"ping_{status}_after_launch_s", round(time.monotonic() - began, 2))
        time.sleep(0.02)
    if "ping_200_after_launch_s" not in seen:
        return seen
    if "ping_204_after_launch_s" in seen:
        seen["runpod_cold_start_s"] = round(seen["ping_200_after_launch_s"] - seen["ping_204_after_launch_s"], 2)
    body = json.dumps({"messages": [{"role": "user", "content": "t11 t12 t13"}], "max_tokens": 8,
                       "stream": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{LB_PORT}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                seen["first_token_after_launch_s"] = round(time.monotonic() - began, 2)
                break
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="default")
    parser.add_argument("--runs", nargs="+", default=["empty", "warm"],
                        choices=["empty", "first", "warm", "load_balancer"])
    parser.add_argument("--real-weights", action="store_true", help="no dummy default for LOAD_FORMAT")
    parser.add_argument("--evict-weights", action="store_true")
    parser.add_argument("--worker", type=Path, default=HERE.parent / "src" / "handler.py",
                        help="the handler.py the warm starts run (to compare two versions on one machine)")
    parser.add_argument("--py-spy", type=Path, help="py-spy's executable: profile each start")
    args = parser.parse_args()
    if "empty" in args.runs:
        shutil.rmtree(VOLUME, ignore_errors=True)
    VOLUME.mkdir(exist_ok=True)
    results = {name: os.environ.get(name) for name in ("VLLM_USE_FLASHINFER_SAMPLER", "FAST_BOOT", "LOAD_FORMAT",
                                                       "KV_CACHE_MEMORY_BYTES", "VLLM_ENABLE_STARTUP_PLAN",
                                                       "PREFETCH_WEIGHTS", "INSTANTTENSOR_BACKEND")}
    for number, run in enumerate(args.runs, 1):  # the first run fills the caches the next ones find
        if args.evict_weights:
            evict(args.model)
        if run == "first":
            shutil.rmtree(VOLUME)
            VOLUME.mkdir()
        name = run if args.runs.count(run) == 1 else f"{run}_{number}"  # a repeated run keeps each start
        results[name] = start_once(args.model, run, args.out / f"cold_start_{args.label}_{name}.log", args.worker,
                                   args.py_spy, args.real_weights)
        print(name, json.dumps(results[name]), flush=True)
        (args.out / f"cold_start_{args.label}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
