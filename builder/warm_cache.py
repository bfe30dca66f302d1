"""Fills the kernel caches (torch.compile, Triton, FlashInfer, vLLM's startup plan) for one model
on this GPU, so that the endpoint's workers start warm.

  python builder/warm_cache.py /runpod-volume   # on a GPU pod with the endpoint's network volume
  python builder/warm_cache.py /models          # in a baked image on a GPU box, then commit the image

It starts the worker once, as Runpod does, and runs one short job. The model and engine settings
come from the same environment variables the endpoint has (MODEL_NAME, MAX_MODEL_LEN, FAST_BOOT,
...), because the caches fit only those. The worker keys the caches by model, vLLM version and GPU
(src/worker_vllm/startup/caches.py), so a worker on another GPU or vLLM never loads them.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"  # /src in the image
JOB = {"input": {"prompt": "Hello", "sampling_params": {"max_tokens": 8}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the network volume's mount point, or /models in a baked image")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from worker_vllm import config
    from worker_vllm.startup import baked, caches

    (args.root / "cache").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in config.RUNPOD_MARKERS}  # one local job, not the queue
    env |= caches.cache_env(baked.apply(env), volume=args.root)
    print(f"warm_cache: caches go to {Path(env['VLLM_CACHE_ROOT']).parent}", flush=True)
    command = [sys.executable, str(SRC / "handler.py"), "--test_input", json.dumps(JOB)]
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
