"""Reads the model's weight files into memory while the worker imports vLLM and starts its engine.

Importing vLLM takes 10-30 s of CPU and leaves the disk idle, and the engine's process then spends
seconds on CUDA before its loader reads a byte. Meanwhile threads read the weights that are
already on this machine (a local folder or GGUF file, a baked model, or a Hub model in the
volume's cache), so that vLLM's loader finds them in the page cache. The worker stops it once the
engine is up.

Each piece goes from the file to /dev/null with sendfile: the kernel fills the page cache without
copying a byte to Python or holding the GIL, so the imports keep their CPU. The threads may run
while vLLM forks its engine process: the child never uses their lock or their open files.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

from worker_vllm import config

log = logging.getLogger("worker")
PIECE = 64 << 20  # what one thread reads before it takes the next piece
CHUNK = 16 << 20  # what one call reads: how long stop() may wait for a thread
THREADS = 8


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


def pieces(files: list[Path], budget: int, size: int = PIECE) -> Iterator[tuple[Path, int, int]]:
    """(file, offset, length) pieces of `files` in the order vLLM loads them, `budget` bytes in all."""
    for path in files:
        file_size = path.stat().st_size
        for offset in range(0, file_size, size):
            length = min(size, file_size - offset, budget)
            if length <= 0:
                return
            yield path, offset, length
            budget -= length


class Prefetch:
    """Reads `files` up to `budget` bytes, in `threads` threads that take the next piece in turn.

    Several threads keep more reads in flight than one: 3% faster on an H200 machine's disk."""

    def __init__(self, files: list[Path], budget: int, threads: int = THREADS):
        self.files, self.bytes_read = files, 0
        self.total = sum(path.stat().st_size for path in files)
        self._pieces = pieces(files, budget)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._seconds = 0.0
        self._threads = [threading.Thread(target=self._read, name=f"weight-prefetch-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _next(self) -> tuple[Path, int, int] | None:
        with self._lock:
            return None if self._stop.is_set() else next(self._pieces, None)

    def _read(self):
        try:
            with open(os.devnull, "wb") as null:
                while piece := self._next():
                    path, offset, length = piece
                    with open(path, "rb", buffering=0) as f:  # into the page cache and on to /dev/null: no copy, no GIL
                        while length and not self._stop.is_set() and \
                                (n := os.sendfile(null.fileno(), f.fileno(), offset, min(length, CHUNK))):
                            offset, length = offset + n, length - n
                            with self._lock:
                                self.bytes_read += n
        except OSError as e:  # vLLM will say what is wrong with the file, if anything
            self._stop.set()
            log.warning("prefetch: stopped reading weights: %s", e)
        finally:
            with self._lock:
                self._seconds = time.monotonic() - self._began

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every piece is read (or `timeout` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop reading, if it has not finished, and log what was read."""
        self._stop.set()
        self.wait()
        log.info("prefetch: %.2f of %.2f GiB of weights read into memory in %.1f s",
                 self.bytes_read / 2**30, self.total / 2**30, self._seconds)


def local_weights(env: Mapping[str, str]) -> list[Path]:
    """The weight files of env's MODEL_NAME that are on this machine and will be loaded."""
    model = config.model_name(env)
    if not model or env.get("LOAD_FORMAT", "auto") == "dummy":
        return []
    if os.path.isfile(model):  # a model in one file: a local GGUF
        return [Path(model)]
    folder = local_folder(model, env.get("MODEL_REVISION") or None)
    return weight_files(folder) if folder else []


def start(files: list[Path]) -> Prefetch | None:
    """Start reading `files` (local_weights), if there are any.

    Reads at most half the memory that is free, so the first files are still cached when vLLM loads them."""
    return Prefetch(files, psutil.virtual_memory().available // 2) if files else None
