"""Work the first job would otherwise wait for, done while vLLM's engine process starts.

For the 10 s and more that vLLM's engine process takes to load the model, the main thread waits
with the GIL released. The work runs in a thread then, but only once this process has forked
(vLLM forks its engine process from this one): a thread that imports while the process forks can
leave the child a module lock that no thread will ever release. Where vLLM spawns its engine
process instead (its CPU platform; CUDA already started), nothing forks and nothing runs early:
the first job does the work, as without this.
"""

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("worker")


def after_next_fork(work: Callable[[], None], what: str) -> threading.Event:
    """Run `work` in a thread once this process next forks; the event is set when it is done. If it
    raises, the first job does what is left, and meets the error where it belongs."""
    done = threading.Event()
    armed = [True]  # os.register_at_fork cannot unregister: the hook fires once

    def run() -> None:
        began = time.monotonic()
        try:
            work()
            log.info("%s in %.1f s, while the engine started", what, time.monotonic() - began)
        except Exception:  # met again, with its traceback, where the job needs it
            log.debug("%s failed while the engine started", what, exc_info=True)
        finally:
            done.set()

    def forked() -> None:
        if armed:
            armed.clear()
            threading.Thread(target=run, name="during-engine-start", daemon=True).start()

    # The child (vLLM's engine process, which forks its model workers in turn) runs nothing.
    os.register_at_fork(after_in_parent=forked, after_in_child=armed.clear)
    return done
