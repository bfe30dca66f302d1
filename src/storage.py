"""Where downloads and caches go: the network volume when one is mounted, so the endpoint's next
worker finds the weights and the compiled kernels there; else the container's own disk."""

from collections.abc import Mapping
from pathlib import Path

VOLUME = Path("/runpod-volume")


def cache_env(env: Mapping[str, str], volume: Path = VOLUME) -> dict[str, str]:
    """Cache locations to add to `env` (names `env` sets itself are kept)."""
    if not volume.is_dir():
        return {}
    places = {
        "HF_HOME": volume / "huggingface-cache",
        "VLLM_CACHE_ROOT": volume / "cache" / "vllm",  # torch.compile artifacts
        "TRITON_CACHE_DIR": volume / "cache" / "triton",
        "FLASHINFER_WORKSPACE_BASE": volume / "cache" / "flashinfer",
    }
    return {name: str(path) for name, path in places.items() if not env.get(name)}
