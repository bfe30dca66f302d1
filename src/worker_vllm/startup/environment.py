"""The environment the worker and vLLM start from, prepared once, before vLLM is imported.

vLLM, huggingface_hub, Triton and vLLM's engine processes read their settings from the process
environment, so what the worker adds (the baked model, cache places, FAST_BOOT's vLLM variables,
the start-up phases file) is written to it here, in one place, and nowhere else.
"""

import gc
import os
import tempfile
import threading
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker_vllm import config
from worker_vllm.startup import (
    baked,
    cached_model,
    caches,
    cpu_probe,
    download,
    during_engine_start,
    fitness,
    loader,
    phases,
    plugins,
    prefetch,
)


@dataclass
class Startup:
    """What `prepare` started and the engine's start ends."""

    env: dict[str, str]  # the environment with the worker's additions: what the settings are read from
    phases_file: Path
    caches: str  # where the kernel caches go, for the log
    prefetching: prefetch.Prefetch | None = None
    probing: threading.Thread | None = None
    checking: fitness.Checks | None = None
    downloading: download.Progress | None = None
    failures: list[dict] = field(default_factory=list)  # what vLLM's processes logged as they failed
    front_end: tuple[str, ...] = ()  # the modules that serve jobs once the engine is up
    load_format: str | None = None  # the loader picked for the weights found here (startup/loader.py)

    def before_engine(self, prepare_serving: Callable[[Sequence[str]], None] | None = None) -> float:
        """Call once vLLM is imported: the CPU probe's process must be done before vLLM forks, and
        the runpod SDK's checks before the engine uses the GPUs (SystemExit if one failed); the
        seconds waited for the checks. `prepare_serving(front_end)` runs while the engine starts
        (startup.during_engine_start).

        Last, the heap so far (vLLM, torch and the rest, imported) is frozen: kept out of garbage
        collection. vLLM's engine process, forked from this one, inherits it frozen, and the full
        collections of its start until the CUDA graphs (around the weight load and the memory
        profiling, eight in vLLM 0.32) skip it instead of each walking it again."""
        if self.probing:
            self.probing.join()
        waited = self.checking.wait() if self.checking else 0.0
        if prepare_serving:
            during_engine_start.after_next_fork(lambda: prepare_serving(self.front_end), "prepared the serving layer")
        gc.freeze()
        return waited

    def engine_started(self, began: float | None = None) -> dict[str, float]:
        """Stop the prefetch; the seconds each engine phase took, as vLLM's processes logged them
        (`began`: time.time() as the engine's start began)."""
        if self.prefetching:
            self.prefetching.stop()
        if self.downloading:
            self.downloading.stop()
        found = phases.engine_phases(self.phases_file, began)
        self.failures = phases.engine_failures(self.phases_file)
        self.phases_file.unlink(missing_ok=True)  # the processes' recorders stop writing
        return found


def prepare(environ: MutableMapping[str, str], *, probe_cpu: bool = False, sdk_checks: bool = False,
            front_end: Sequence[str] = ()) -> Startup:
    """Fill in the baked model and the cache places, write the additions to `environ`, and start
    reading the weights (and, if `probe_cpu`, the runpod SDK's CPU probe; if `sdk_checks`, its
    start-up checks) while vLLM imports. `front_end`: the modules that will serve jobs, imported
    while the engine starts."""
    env = baked.apply(environ)
    try:
        own = config.worker_settings(env)
    except config.ConfigError:
        own = None  # the settings check reports it, with the rest of the settings
    volume = (own or config.WorkerSettings()).volume
    env = cached_model.apply(env, volume / "huggingface-cache" / "hub")
    places = caches.cache_env(env, volume)
    fd, phases_file = tempfile.mkstemp(prefix="worker-startup-")
    os.close(fd)
    additions = places | (config.vllm_env(env, own) if own else {}) | plugins.vllm_env(env, plugins.installed()) | {
        phases.FILE_ENV: phases_file,
        # The SDK logs every job's input and output at its default level, DEBUG; an empty value crashes it.
        "RUNPOD_LOG_LEVEL": env.get("RUNPOD_LOG_LEVEL") or "INFO",
    }
    checking = fitness.start(dict(environ) | additions) if sdk_checks else None
    if checking:
        additions |= fitness.DONE  # for the SDK's own run, once the engine is up
    environ.update(additions)
    env |= additions
    caches.seed(env, caches.gpu_arch)
    weights = prefetch.local_weights(env)  # after the update: huggingface_hub reads HF_HOME as it is imported
    reading = prefetch.start(weights) if own and own.prefetch_weights else None
    load_format = loader.load_format(env, weights, fast_boot=bool(own and own.fast_boot),
                                     gpu=caches.gpu_name() != "cpu")
    return Startup(env, Path(phases_file), caches.describe(env, places, volume), reading,
                   cpu_probe.start() if probe_cpu else None, checking,
                   None if reading else download.start(env), front_end=tuple(front_end), load_format=load_format)
