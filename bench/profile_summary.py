"""Where a serving process's CPU went, from a py-spy raw profile (`py-spy record -f raw`).

Each sample while the event loop serves (start-up and imports left out) goes to the innermost
frame that belongs to a known part: the worker, the runpod SDK, vLLM's OpenAI layer, its ASGI
stack, vLLM's engine client, the benchmark's own client. Libraries those parts call (pydantic,
json, asyncio, zmq, ...) count for the part that called them; waiting in the selector is idle.

  python bench/profile_summary.py PROFILE.txt [--top 15]
"""

import argparse
import collections
import re
from pathlib import Path

# (part, pattern in a frame's file); the first that matches, innermost frame first, takes the sample.
PARTS = [
    ("worker (src/worker_vllm)", "worker_vllm/"),
    ("runpod SDK", "runpod/"),
    ("vLLM OpenAI serving layer", "vllm/entrypoints/"),
    ("ASGI stack (starlette, fastapi, middleware)", r"(starlette|fastapi|prometheus_fastapi_instrumentator|anyio)/"),
    ("vLLM engine client (AsyncLLM, output processing)", "vllm/"),
    ("benchmark client (bench.py, aiohttp)", r"(bench\.py|aiohttp/)"),
]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
STARTUP = ("_find_and_load", "in_process (", "Engine.ready", "load_balancing (", "via_vllm_serve (")


def part_of(frames: list[str]) -> str:
    if frames[-1].startswith("EpollSelector.select") or frames[-1].startswith("select ("):
        return "idle (waiting in the selector)"
    for frame in reversed(frames):
        match = FRAME.match(frame)
        file = match["file"] if match else frame
        for part, pattern in PARTS:
            if re.search(pattern, file):
                return part
    return "asyncio and other"


def summarize(path: Path, top: int) -> str:
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("_run_once" in f for f in frames) or any(s in f for f in frames for s in STARTUP):
            continue
        parts[part_of(frames)] += int(count)
        leaves[re.sub(r":\d+\)$", ")", frames[-1])] += int(count)
    total = sum(parts.values())
    busy = total - parts["idle (waiting in the selector)"]
    lines = [f"{path.name}: {total} samples while serving, {busy} busy", "",
             "| part | share of busy samples |", "| --- | --- |"]
    lines += [f"| {part} | {count / busy:.1%} |" for part, count in parts.most_common() if not part.startswith("idle")]
    lines += ["", f"Top {top} functions by own time (share of busy samples):", ""]
    lines += [f"- {count / busy:.1%} {leaf}" for leaf, count in leaves.most_common(top + 1)
              if "select" not in leaf.split(" ")[0]][:top]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarize(args.profile, args.top))
