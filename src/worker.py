"""Start-up: settings from the environment, then the engine. The handler routes jobs to it."""

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import baked
import config
import engine
import prefetch
import startup
import tiny_model
from config import Settings

log = logging.getLogger("worker")


@dataclass
class Worker:
    engine: engine.Engine
    settings: Settings

    @property
    def concurrency(self) -> int:
        """Jobs taken at once: MAX_CONCURRENCY, else what the engine schedules together."""
        return self.settings.worker.max_concurrency or self.engine.max_num_seqs


def start(env=os.environ, prefetching: prefetch.Prefetch | None = None) -> Worker:
    """Read settings and start the engine. Raises config.ConfigError for a bad setting.

    Stops `prefetching` once the engine is up. Logs where start-up time went, down to the
    engine's phases (see startup.py)."""
    imports = startup.seconds_since_process_start()
    began = time.monotonic()
    settings, warnings = config.from_env(baked.apply(env), engine.arg_parser(), gpu_count=engine.gpu_count(),
                                         tiny_model=lambda: str(tiny_model.ensure()))
    for warning in warnings:
        log.warning(warning)
    if settings.embedded_model:
        log.warning("MODEL_NAME is not set: serving the embedded tiny random model (for local runs)")
    configured = time.monotonic()
    os.environ.update(settings.vllm_env)
    startup.record_engine_phases()
    fd, phases_file = tempfile.mkstemp(prefix="worker-startup-")
    os.close(fd)
    os.environ[startup.FILE_ENV] = phases_file  # the engine's processes inherit it
    try:
        started = Worker(engine.Engine(settings.engine_args), settings)
        phases = startup.engine_phases(Path(phases_file))
    finally:
        del os.environ[startup.FILE_ENV]
        os.unlink(phases_file)
        if prefetching:
            prefetching.stop()
    done = time.monotonic()
    log.info(startup.summary(imports, configured - began, done - configured, phases))
    return started
