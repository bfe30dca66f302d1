"""Who starts CUDA in the worker's process: the stack of torch's first CUDA initialisation.

vLLM forks its engine process from the worker's only while CUDA has not started there; once it
has, vLLM spawns it, and its model workers, which then import vLLM again. This replaces torch's
CUDA initialisation with one that prints its caller's stack and exits (status 3), then runs
`src/handler.py` on one local job. An exit 0 means nothing started CUDA before the engine's start.

  FAST_BOOT=true TENSOR_PARALLEL_SIZE=2 python3 bench/cuda_init.py   # on the GPU machine
"""

import os
import runpy
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
JOB = '{"input": {"prompt": "hi", "sampling_params": {"max_tokens": 4}}}'


def traced() -> None:
    traceback.print_stack(file=sys.stdout)
    sys.stdout.flush()
    os._exit(3)


if __name__ == "__main__":
    torch._C._cuda_init = traced  # what torch.cuda._lazy_init calls, whichever module asks
    sys.path.insert(0, str(ROOT / "src"))
    sys.argv = [str(ROOT / "src" / "handler.py"), "--test_input", JOB]
    runpy.run_path(sys.argv[0], run_name="__main__")
