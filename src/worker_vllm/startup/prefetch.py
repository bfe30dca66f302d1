"""Reads the model's weight files into memory while the worker imports vLLM and starts its engine.

Importing vLLM takes 10-30 s of CPU and leaves the disk idle, and the engine's process then spends
seconds on CUDA before its loader reads a byte. Meanwhile a thread reads the weights that are
already on this machine (a local folder or GGUF file, a baked model, or a Hub model in the
volume's cache), so that vLLM's loader finds them in the page cache. The worker stops it once the
engine is up.

The thread may run while vLLM forks its engine process: it holds no lock there, only a file that
it reads with no buffer (the child gets the open descriptor and never uses it).
"""

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from worker_vllm import config

log = logging.getLogger("worker")
CHUNK = 16 << 20


def weight_files(folder: Path) -> list[Path]:
    """The files vLLM loads weights from: the top-level safetensors, else PyTorch .bin files."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def local_folder(model: str, revision: str | None = None, cache_dir: str | None = None) -> Path | None:
    """The model's folder on this machine: the path itself, or its snapshot in the Hub cache."""
    if os.path.isdir(model):  # False, not an error, for a name no path can have (too long)
        return Path(model)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json", revision=revision, cache_dir=cache_dir)
    except ValueError:  # not a repo id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


class Prefetch:
    """Reads `files` in a thread, in order, up to `budget` bytes."""

    def __init__(self, files: list[Path], budget: int):
        self.files, self.budget, self.bytes_read = files, budget, 0
        self.total = sum(path.stat().st_size for path in files)
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="weight-prefetch", daemon=True)
        self._thread.start()

    def _read(self):
        buffer = bytearray(CHUNK)  # readinto releases the GIL while the disk works
        try:
            for path in self.files:
                with open(path, "rb", buffering=0) as f:
                    while self.bytes_read < self.budget and not self._stop.is_set() and (n := f.readinto(buffer)):
                        self.bytes_read += n
        except OSError as e:  # vLLM will say what is wrong with the file, if anything
            log.warning("prefetch: stopped reading weights: %s", e)
        finally:
            self._seconds = time.monotonic() - self._began

    def stop(self) -> None:
        """Stop reading, if it has not finished, and log what was read."""
        self._stop.set()
        self._thread.join()
        log.info("prefetch: %.2f of %.2f GiB of weights read into memory in %.1f s",
                 self.bytes_read / 2**30, self.total / 2**30, self._seconds)


def start(env: Mapping[str, str]) -> Prefetch | None:
    """Start reading the weights of env's MODEL_NAME, if they are on this machine and will be loaded.

    Reads at most half the memory that is free, so the first files are still cached when vLLM loads them."""
    model = config.model_name(env)
    if not model or env.get("LOAD_FORMAT", "auto") == "dummy":
        return None
    if os.path.isfile(model):  # a model in one file: a local GGUF
        files = [Path(model)]
    else:
        folder = local_folder(model, env.get("MODEL_REVISION") or None)
        files = weight_files(folder) if folder else []
    return Prefetch(files, psutil.virtual_memory().available // 2) if files else None
