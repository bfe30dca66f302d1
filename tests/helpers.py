"""What several tests share: paths, the environment of a worker started outside Runpod, the
real `--test_input` command, and an event loop in a thread for the session engine."""

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from worker_vllm import config

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "src" / "handler.py"


def local_env(overrides: Mapping[str, str] = {}, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment as a worker started off Runpod sees it: no Runpod markers, no
    MODEL_NAME (the embedded model) unless `overrides` names one."""
    dropped = {"MODEL_NAME", *config.RUNPOD_MARKERS, *unset}
    return {k: v for k, v in os.environ.items() if k not in dropped} | dict(overrides)


def run_test_input(job: str, cwd: Path, env: Mapping[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python src/handler.py --test_input JOB`, a whole worker process with its own engine."""
    return subprocess.run([sys.executable, str(HANDLER), "--test_input", job], cwd=cwd, env=dict(env),
                          capture_output=True, text=True, timeout=timeout)


class EngineLoop:
    """An event loop in a thread. vLLM's AsyncLLM binds to the loop of its first request, so every
    test talks to the session engine through this one: `run(coro)` and `collect(async_iterator)`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def collect(self, items, timeout: float = 120) -> list:
        async def gather():
            return [item async for item in items]

        return self.run(gather(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
