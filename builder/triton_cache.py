"""Compiles the Triton kernels a start of vLLM builds (builder/triton_kernels.jsonl) for the NVIDIA
architectures Runpod rents, into Triton's cache, at image build: no GPU needed. An empty start
then finds them instead of spending half a minute building them (src/worker_vllm/startup/triton_kernels.py).

  python builder/triton_cache.py [--kernels FILE] [--archs 80 86 89 90 100 120]

The cache goes where Triton puts it (TRITON_CACHE_DIR, else ~/.triton/cache); the worker copies
this GPU's part of it to a network volume's cache at the volume's first start. Only binaries are
kept (TRITON_STORE_BINARY_ONLY), which Triton's cache key ignores. A kernel that cannot be built
here is named and left for the start to build; the exit status is 1 only when none could be.

To record the list again (after a vLLM upgrade, when tests/test_triton_kernels.py says so), on a
GPU: `bash bench/gpu_run.sh triton_record`, then copy its triton_kernels.jsonl here.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"  # /src in the image
KERNELS = Path(__file__).resolve().parent / "triton_kernels.jsonl"
# Ampere (A100; A40, A6000, RTX 3090), Ada (L4, L40S, RTX 4090), Hopper (H100, H200), Blackwell (B200; RTX 5090).
ARCHS = [80, 86, 89, 90, 100, 120]


def build(arch: int, kernels: Path) -> tuple[int, int, list[str], float]:
    """One architecture, in a process of its own (the active Triton driver is per process)."""
    sys.path.insert(0, str(SRC))
    from worker_vllm.startup import triton_kernels

    began = time.monotonic()
    specs = triton_kernels.read(kernels.read_text().splitlines())
    failed = triton_kernels.compile_for(arch, specs)
    return arch, len(specs), failed, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=Path, default=KERNELS)
    parser.add_argument("--archs", type=int, nargs="+", default=ARCHS)
    args = parser.parse_args()
    # vLLM defines its kernels only where Triton is usable: with no GPU, that takes an empty
    # CUDA_VISIBLE_DEVICES (vllm/triton_utils). The compile itself never touches a GPU.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TRITON_STORE_BINARY_ONLY", "1")
    built = 0
    with ProcessPoolExecutor(max_workers=min(len(args.archs), os.cpu_count() or 1)) as pool:
        for arch, total, failed, seconds in pool.map(build, args.archs, [args.kernels] * len(args.archs)):
            print(f"triton_cache: sm_{arch}: {total - len(failed)} of {total} kernels in {seconds:.1f} s", flush=True)
            for line in failed:
                print(f"triton_cache: sm_{arch}: not built: {line}", flush=True)
            built += total - len(failed)
    return 0 if built else 1  # a kernel missing here is built at start; none built means this Python cannot


if __name__ == "__main__":
    sys.exit(main())
