"""Seconds to import the worker's start-up modules (vLLM, torch, transformers) in a new Python
process: as the worker does it (startup.imports: the collector off, then the heap frozen) and with
the collector on, alternating, ROUNDS of each; also the full collections each ran and the seconds
spent collecting. Run it in the Python being measured (bench/gpu_run.sh import_compare uses the
image's).

  python bench/import_time.py [--rounds 5] [--out FILE.json]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
IMPORT = """
import contextlib, gc, json, time
from worker_vllm.startup import imports
seen = {{"full_collections": 0, "collecting_s": 0.0}}

def timed(phase, info):
    if phase == "start":
        seen["started"] = time.perf_counter()
        seen["full_collections"] += info["generation"] == 2
    else:
        seen["collecting_s"] += time.perf_counter() - seen.pop("started")

gc.callbacks.append(timed)
began = time.perf_counter()
with imports.uncollected() if {uncollected} else contextlib.nullcontext():
    from worker_vllm import worker
print(json.dumps({{"import_s": time.perf_counter() - began, **seen}}))
"""
WAYS = {"collector_on": False, "uncollected": True}


def once(uncollected: bool) -> dict:
    result = subprocess.run([sys.executable, "-c", IMPORT.format(uncollected=uncollected)], cwd=SRC,
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    once(True)  # a first import reads the files into the page cache: not counted
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way, uncollected in WAYS.items():
            runs[way].append(once(uncollected))
    summary = {}
    for way, results in runs.items():
        seconds = [round(r["import_s"], 2) for r in results]
        summary[way] = {"median_s": statistics.median(seconds), "range_s": [min(seconds), max(seconds)],
                        "seconds": seconds, "full_collections": [r["full_collections"] for r in results],
                        "collecting_s": [round(r["collecting_s"], 2) for r in results]}
        print(f"{way}: {summary[way]['median_s']} s [{min(seconds)}-{max(seconds)}], full collections "
              f"{summary[way]['full_collections']}, collecting {summary[way]['collecting_s']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"python": sys.version, "rounds": args.rounds, "imports": summary}, indent=2))


if __name__ == "__main__":
    main()
