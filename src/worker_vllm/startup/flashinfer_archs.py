"""FLASHINFER_CUDA_ARCH_LIST from the GPUs, so that importing FlashInfer starts no CUDA in the
worker's process.

FlashInfer names its JIT folder after the GPUs' architectures, and asks torch for them as it is
imported, which starts CUDA. With tensor parallelism on Hopper or Blackwell, vLLM 0.32 imports it
in the worker's process while it builds its config (for its all-reduce fusion). With CUDA started
there, vLLM spawns its engine process, and that one its model workers, instead of forking them,
and each imports vLLM again: on two H200s the engine process took 35 s to start instead of 0.4 s,
and its workers 23 s instead of 3 (docs/benchmarks.md). Told the architectures, FlashInfer asks
nothing, and its folder and the kernels it builds are the same.
"""

from collections.abc import Callable, Mapping

ARCH_LIST = "FLASHINFER_CUDA_ARCH_LIST"


def vllm_env(env: Mapping[str, str], gpus: int, capabilities: Callable[[], list[str]]) -> dict[str, str]:
    """FLASHINFER_CUDA_ARCH_LIST ("9.0", or "8.0 9.0" for mixed GPUs) where more than one GPU could
    serve (`gpus`); {} where one does, where the variable is set, or where none answers."""
    if ARCH_LIST in env or gpus < 2:
        return {}
    found = sorted(set(capabilities()))
    return {ARCH_LIST: " ".join(found)} if found else {}
