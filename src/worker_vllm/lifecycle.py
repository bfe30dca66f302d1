"""The worker's life on Runpod: exit when vLLM's engine dies, and shut down gently on SIGTERM."""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("worker")


def exit_when_engine_dies(engine, in_flight, on_death: Callable[[str], None] | None = None,
                          poll: float = 0.2, drain: float = 2.0) -> threading.Event:
    """Exit 1 once the engine is dead, so Runpod replaces this worker instead of sending it jobs
    that fail at once. Jobs in flight get `drain` seconds to report their error first; `on_death`
    gets the error for jobs that cannot see it themselves. Set the returned event before shutting
    the engine down on purpose."""
    stopping = threading.Event()

    def watch():
        while not engine.is_dead:
            if stopping.wait(poll):
                return
        log.error("vLLM engine died (%s); exiting so that Runpod starts a new worker", engine.dead_reason)
        if on_death:
            on_death(f"vLLM engine died: {engine.dead_reason}")
        deadline = time.monotonic() + drain
        while len(in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the SDK posts the failed jobs' results
        if stopping.is_set():  # the worker began to shut down on purpose meanwhile
            return
        engine.kill()  # a front end may have died, and the engine core with it alive
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()
    return stopping


def graceful_sigterm(loop, in_flight, grace: float) -> None:
    """Chain to the SIGTERM handler in place (the runpod SDK's stops taking jobs), then give the
    jobs in flight `grace` seconds before aborting them. Call from the main thread."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        log.info("SIGTERM: no new jobs; %d in flight get up to %g s to finish", len(in_flight), grace)
        if callable(previous):
            previous(signum, frame)
        if not loop.is_closed():  # closed: a repeated SIGTERM after the SDK's loop ended
            loop.call_soon_threadsafe(loop.call_later, grace, in_flight.abort_all, "the worker is shutting down")

    signal.signal(signal.SIGTERM, on_sigterm)
