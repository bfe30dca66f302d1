"""FAST_BOOT's weight loader: InstantTensor, for safetensors weights already on this machine.

vLLM's default loader copies the weights from the page cache into the GPU one tensor at a time:
2.1-3.2 s for 15 GiB on an H200. InstantTensor (vLLM's `instanttensor` load format; the image has
it, as vLLM requires it) reads the files in many pieces at once into a GPU buffer it reuses, copying
as it reads: 0.4-0.7 s (docs/benchmarks.md). The worker tells it to read through the page cache,
where the prefetch puts the weights (config.PREFETCH_VLLM_ENV).
"""

from collections.abc import Mapping
from pathlib import Path

from worker_vllm import config
from worker_vllm.startup import plugins

INSTANTTENSOR = "instanttensor"


def load_format(env: Mapping[str, str], weights: list[Path], *, fast_boot: bool, gpu: bool) -> str | None:
    """`instanttensor` where it loads what vLLM's default loader would: with FAST_BOOT on an NVIDIA
    GPU, LOAD_FORMAT unset or `auto` (vLLM's choice, and the Hub listing's default), the `weights` on
    this machine all safetensors, none of them in Mistral's consolidated format (which vLLM's default
    picks over the others), and neither bitsandbytes nor GGUF (their plugins load those). None
    otherwise: vLLM's default."""
    if not (fast_boot and gpu and weights) or env.get("LOAD_FORMAT", "auto") not in config.VLLMS_LOADER:
        return None
    if plugins.uses_bitsandbytes(env) or plugins.uses_gguf(env):
        return None
    if any(path.suffix != ".safetensors" or path.name.startswith("consolidated") for path in weights):
        return None
    return INSTANTTENSOR
