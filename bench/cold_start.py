"""Cold start of the worker as Runpod starts it (`python src/handler.py`, one job): seconds from
process start to ready and to the first token, first with empty caches, then with the caches the
first start left. The phases come from the worker's start-up line and vLLM's own log lines.

The caches live where the worker puts them on Runpod: on the network volume, /runpod-volume
(created and emptied here: run it on a machine of your own). The empty start is
builder/warm_cache.py, which fills the volume as a user would; the warm start is a plain worker
start that finds what it left.

  python bench/cold_start.py --model DIR --out DIR [--label NAME] [--runs empty warm]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOLUME = Path("/runpod-volume")
PHASES = {  # vLLM 0.32's log lines, and the worker's start-up line
    "imports_s": r"startup: process and imports ([\d.]+) s",
    "weight_load_s": r"Loading weights took ([\d.]+) seconds",
    "model_load_s": r"Model loading took [\d.]+ GiB (?:memory )?and ([\d.]+) seconds",
    "torch_compile_s": r"torch\.compile took ([\d.]+) s in total",
    "cuda_graphs_s": r"Graph capturing finished in ([\d.]+) secs",
    "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "available_kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "worker_engine_s": r"startup: .* engine ([\d.]+) s[ ;]",
    "ready_after_process_start_s": r"ready ([\d.]+) s after process start",
}
JIT = re.compile(r"(?i)flashinfer\.jit|\[flashinfer\].*(compil|build)|\bninja\b")


def start_once(model: Path, run: str, log_path: Path) -> dict:
    """One start of the worker on `model`; what it measured."""
    env = os.environ | {"MODEL_NAME": str(model), "LOAD_FORMAT": "dummy", "MAX_MODEL_LEN": "4096"}
    job = json.dumps({"input": {"prompt": "t11 t12 t13", "sampling_params": {"max_tokens": 8}}})
    command = ([HERE.parent / "builder" / "warm_cache.py", VOLUME] if run == "empty"
               else [HERE.parent / "src" / "handler.py", "--test_input", job])
    result, jit_lines = {}, []
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, *map(str, command)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd="/tmp")
    with open(log_path, "w") as log:
        for line in proc.stdout:
            log.write(line)
            for name, pattern in PHASES.items():
                if name not in result and (match := re.search(pattern, line)):
                    result[name] = float(match.group(1))
            if "worker_line" not in result and "startup: process and imports" in line:
                result["worker_line"] = line.split("startup: ", 1)[1].strip()
            if JIT.search(line):
                jit_lines.append(line.strip()[:200])
            if "first_token_after_launch_s" not in result and line.startswith('{"choices"'):
                result["first_token_after_launch_s"] = round(time.monotonic() - began, 2)
    result["exit_code"] = proc.wait()
    result["kernel_jit_log_lines"] = jit_lines[:20]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="default")
    parser.add_argument("--runs", nargs="+", default=["empty", "warm"])
    args = parser.parse_args()
    if "empty" in args.runs:
        shutil.rmtree(VOLUME, ignore_errors=True)
    VOLUME.mkdir(exist_ok=True)
    results = {name: os.environ.get(name) for name in ("VLLM_USE_FLASHINFER_SAMPLER", "FAST_BOOT")}
    for run in args.runs:  # the first run fills the caches the next ones find
        results[run] = start_once(args.model, run, args.out / f"cold_start_{args.label}_{run}.log")
        print(run, json.dumps(results[run]), flush=True)
        (args.out / f"cold_start_{args.label}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
