"""The worker: its settings and vLLM's engine, started from the prepared environment."""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker_vllm import config, engine
from worker_vllm.config import Settings
from worker_vllm.startup import phases, tiny_model
from worker_vllm.startup.environment import Startup

if TYPE_CHECKING:
    from worker_vllm.front_ends import Pool

log = logging.getLogger("worker")


@dataclass
class Worker:
    engine: engine.Engine
    settings: Settings
    front_ends: "Pool | None" = None  # the other front-end processes, with API_SERVER_COUNT > 1

    @property
    def concurrency(self) -> int:
        """Jobs taken at once: MAX_CONCURRENCY, else what the engine schedules together."""
        return self.settings.worker.max_concurrency or self.engine.max_num_seqs


def start(env: Mapping[str, str], startup: Startup | None = None, front_ends: bool = False) -> Worker:
    """Read settings from `env` and start the engine. Raises config.ConfigError for a bad setting.

    With `startup` (what startup.environment.prepare began), ends its work once the engine is up and
    logs where start-up time went, down to the engine's phases. `front_ends`: this worker serves
    Runpod's queue, where API_SERVER_COUNT > 1 starts more front-end processes (front_ends.py)."""
    imports = phases.seconds_since_process_start()
    began = time.monotonic()
    settings, warnings = config.from_env(env, engine.arg_parser(), gpu_count=engine.gpu_count(),
                                         tiny_model=lambda: str(tiny_model.ensure()),
                                         load_format=startup.load_format if startup else None)
    for warning in warnings:
        log.warning(warning)
    if settings.embedded_model:
        log.warning("MODEL_NAME is not set: serving the embedded tiny random model (for local runs)")
    configured = time.monotonic()
    checks = startup.before_engine(engine.prepare_serving) if startup else 0.0
    pool = None
    if (count := settings.engine_args.api_server_count or 1) > 1:
        if front_ends:
            from worker_vllm.front_ends import Pool  # it runs jobs, through the router: not at import

            pool = Pool(count)
        else:
            log.info("one front-end process: API_SERVER_COUNT=%d applies to queue endpoints", count)
            settings.engine_args.api_server_count = None
    engine_began = time.time()  # wall clock: vLLM's processes stamp their log records with it
    try:
        start_front_ends = pool.starter(settings) if pool else None
        started = Worker(engine.Engine(settings.engine_args, start_front_ends=start_front_ends), settings, pool)
    finally:
        found = startup.engine_started(engine_began) if startup else {}
    done = time.monotonic()
    log.info(phases.summary(imports, configured - began, done - configured - checks, found, checks))
    return started
