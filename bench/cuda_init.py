"""Who starts CUDA in the worker's process: the stack of torch's first CUDA initialisation.

vLLM forks its engine process from the worker's only while CUDA has not started there; once it
has, vLLM spawns it, and its model workers, which then import vLLM again. This replaces torch's
CUDA initialisation with one that prints its caller's stack and exits (status 3), then runs
`src/handler.py` on one local job. An exit 0 means nothing started CUDA in the worker's process
(vLLM's processes, forked from it, start CUDA as they should and are not traced).

It also lists each package the worker's process tried to import, and did not find, before it
started its first child process (vLLM's engine process, forked or spawned), with the line that
asked. The image installs packages the GPU bundle lacks (the CUTLASS DSL, TileLang,
fastsafetensors, ...): one of those imported by then could start CUDA in the image where it
cannot here.

  FAST_BOOT=true TENSOR_PARALLEL_SIZE=2 python3 bench/cuda_init.py   # on the GPU machine
"""

import multiprocessing.process
import os
import runpy
import sys
import traceback
from importlib.abc import MetaPathFinder
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
JOB = '{"input": {"prompt": "hi", "sampling_params": {"max_tokens": 4}}}'


class MissingPackages(MetaPathFinder):
    """Last on sys.meta_path: asked only for what no other finder found."""

    def __init__(self):
        self.asked: dict[str, str] = {}
        self.reported = False

    def find_spec(self, name, path=None, target=None):
        if "." not in name and name not in self.asked:
            caller = next((f for f in reversed(traceback.extract_stack()[:-1])
                           if "importlib" not in f.filename and not f.filename.startswith("<")), None)
            self.asked[name] = f"{caller.filename}:{caller.lineno}" if caller else "?"
        return None

    def report(self) -> None:
        """Once: as the first child process starts, or where CUDA starts first."""
        if self.reported:
            return
        self.reported = True
        sys.meta_path.remove(self)
        print(f"missing packages asked for before the first child process: {len(self.asked)}")
        for name, where in sorted(self.asked.items()):
            print(f"  {name}  <- {where}")
        sys.stdout.flush()


MISSING = MissingPackages()
WORKER = os.getpid()
CUDA_INIT = torch._C._cuda_init


def traced() -> None:
    if os.getpid() != WORKER:  # vLLM's processes forked from this one start CUDA as they should
        return CUDA_INIT()
    MISSING.report()
    traceback.print_stack(file=sys.stdout)
    sys.stdout.flush()
    os._exit(3)


if __name__ == "__main__":
    torch._C._cuda_init = traced  # what torch.cuda._lazy_init calls, whichever module asks
    sys.meta_path.append(MISSING)
    start = multiprocessing.process.BaseProcess.start

    def reported_start(process) -> None:
        MISSING.report()
        start(process)

    multiprocessing.process.BaseProcess.start = reported_start  # type: ignore[method-assign]
    sys.path.insert(0, str(ROOT / "src"))
    sys.argv = [str(ROOT / "src" / "handler.py"), "--test_input", JOB]
    runpy.run_path(sys.argv[0], run_name="__main__")
