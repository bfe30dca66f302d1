"""The worker: its settings and vLLM's engine, started from the prepared environment."""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from worker_vllm import config, engine
from worker_vllm.config import Settings
from worker_vllm.startup import phases, tiny_model
from worker_vllm.startup.environment import Startup

log = logging.getLogger("worker")


@dataclass
class Worker:
    engine: engine.Engine
    settings: Settings

    @property
    def concurrency(self) -> int:
        """Jobs taken at once: MAX_CONCURRENCY, else what the engine schedules together."""
        return self.settings.worker.max_concurrency or self.engine.max_num_seqs


def start(env: Mapping[str, str], startup: Startup | None = None) -> Worker:
    """Read settings from `env` and start the engine. Raises config.ConfigError for a bad setting.

    With `startup` (what startup.environment.prepare began), ends its work once the engine is up and
    logs where start-up time went, down to the engine's phases."""
    imports = phases.seconds_since_process_start()
    began = time.monotonic()
    settings, warnings = config.from_env(env, engine.arg_parser(), gpu_count=engine.gpu_count(),
                                         tiny_model=lambda: str(tiny_model.ensure()))
    for warning in warnings:
        log.warning(warning)
    if settings.embedded_model:
        log.warning("MODEL_NAME is not set: serving the embedded tiny random model (for local runs)")
    configured = time.monotonic()
    if startup:
        startup.before_engine(engine.prepare_serving)
    engine_began = time.time()  # wall clock: vLLM's processes stamp their log records with it
    try:
        started = Worker(engine.Engine(settings.engine_args), settings)
    finally:
        found = startup.engine_started(engine_began) if startup else {}
    done = time.monotonic()
    log.info(phases.summary(imports, configured - began, done - configured, found))
    return started
