"""Runs the runpod SDK's start-up checks while vLLM imports, instead of after the engine is ready.

On Runpod, `runpod.serverless.start` checks the machine before it takes a job: memory, disk
space, a connection to a public DNS server and, on a GPU, nvidia-smi, the SDK's `gpu_test`
binary, the CUDA version, a CUDA context on every GPU and a matrix multiply. Run there, they
come between "engine ready" and the first job, and leave the worker's process holding a CUDA
context on every GPU for good. Here a child process runs the SDK's own checks, with the same
settings, while vLLM imports. The worker waits for it before vLLM's engine starts, so no check
shares the GPUs with vLLM's start; it exits 1 if one failed, as the SDK would, only before the
model loads; and the SDK's own run finds them marked done.
"""

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("worker")

# What makes the SDK's own run skip them: its system checks and its GPU check.
DONE = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
# Far longer than the checks take: the SDK's own timeouts add up to about a minute, but one of its
# nvidia-smi calls has none, and nvidia-smi can hang on a GPU in a bad state.
TIMEOUT = 300.0
# `import runpod` asks py-cpuinfo for the CPU's name, timing the CPU for a second; the checks
# never use the answer.
CHECKS = ("import asyncio, cpuinfo; cpuinfo.get_cpu_info = lambda: {'brand_raw': ''}; "
          "from runpod.serverless.modules.rp_fitness import run_fitness_checks; "
          "asyncio.run(run_fitness_checks())")


class Checks:
    """The SDK's checks, running in a child process whose lines this process writes out."""

    def __init__(self, env: Mapping[str, str], command: str = CHECKS):
        began = time.monotonic()
        self._process = process = subprocess.Popen([sys.executable, "-c", command], env=dict(env), text=True,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._ended: list[tuple[int, float]] = []  # the exit code, and the seconds the checks took

        def watch() -> None:
            assert process.stdout
            for line in process.stdout:  # through this process's stdout, which masks secrets (redact.py)
                sys.stdout.write(line)
            self._ended.append((process.wait(), time.monotonic() - began))

        self._watch = threading.Thread(target=watch, name="sdk-checks", daemon=True)
        self._watch.start()

    def wait(self, timeout: float = TIMEOUT) -> float:
        """Wait for the checks; the seconds waited. SystemExit, with the SDK's reason above it in
        the log, if one failed, or if they have not finished `timeout` seconds into the wait."""
        waiting = time.monotonic()
        self._watch.join(timeout)
        waited = time.monotonic() - waiting
        if not self._ended:
            self._process.kill()
            raise SystemExit(f"startup failed: the runpod SDK's start-up checks did not finish in {waited:.0f} s"
                             "; the lines above say how far they got (nvidia-smi can hang on a GPU in a bad state)")
        code, took = self._ended[0]
        if code != 0:
            raise SystemExit(f"startup failed: the runpod SDK's start-up checks failed (exit code {code}); "
                             "the lines above say which check and why")
        log.info("the runpod SDK's start-up checks passed in %.1f s, while vLLM imported; the engine waited "
                 "%.1f s for them", took, waited)
        return waited


def start(env: Mapping[str, str]) -> Checks | None:
    """The SDK's checks, started in `env`; None where they are skipped. Once they are started, the
    worker's environment gets DONE, so that the SDK's own run skips them."""
    if all(env.get(name, "").lower() == "true" for name in DONE):
        return None
    return Checks(env)
