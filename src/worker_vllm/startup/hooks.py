"""What every process of the worker runs first, vLLM's engine processes included.

vLLM starts its engine core (and tensor-parallel workers) in spawned processes that import the
main script again, so `src/handler.py` calls `install` at import: their log lines are masked too,
and the engine phases they log reach the start-up line. With RECORD_TRITON_KERNELS set, each
records the Triton kernels it compiles (builder/triton_cache.py's list).
"""

from worker_vllm import redact
from worker_vllm.startup import phases, triton_kernels


def install() -> None:
    redact.install()  # before vLLM and runpod create their log handlers
    phases.record_engine_phases()
    triton_kernels.record_from_env()
