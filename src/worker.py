"""Start-up: settings from the environment, then the engine. The handler routes jobs to it."""

import logging
import os
import time
from dataclasses import dataclass

import psutil

import baked
import config
import engine
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


def start(env=os.environ) -> Worker:
    """Read settings and start the engine. Raises config.ConfigError for a bad setting.

    Logs where start-up time went; vLLM's own lines above it break the engine phase down
    (weight load, torch.compile, CUDA graphs, KV cache profiling)."""
    imports = time.time() - psutil.Process().create_time()
    began = time.monotonic()
    settings, warnings = config.from_env(baked.apply(env), engine.arg_parser(), gpu_count=engine.gpu_count(),
                                         tiny_model=lambda: str(tiny_model.ensure()))
    for warning in warnings:
        log.warning(warning)
    if settings.embedded_model:
        log.warning("MODEL_NAME is not set: serving the embedded tiny random model (for local runs)")
    configured = time.monotonic()
    started = Worker(engine.Engine(settings.engine_args), settings)
    done = time.monotonic()
    log.info("startup: process and imports %.1f s, config %.1f s, engine %.1f s; ready %.1f s after process start",
             imports, configured - began, done - configured, imports + done - began)
    return started
