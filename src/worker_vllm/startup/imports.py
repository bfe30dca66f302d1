"""vLLM's import, with Python's garbage collector off.

Importing vLLM, torch and transformers makes about a million objects, nearly all of which live as
long as the worker. The collector walks every one of them again each time the heap has grown by a
quarter: on 2 CPU cores those full collections were 1.1-1.4 s of a 6.2 s import (docs/benchmarks.md
for an H200). With the collector off, what the import made is frozen (kept out of later
collections) when it ends, as the worker freezes its heap before vLLM forks anyway
(Startup.before_engine); the import's own garbage, about 13 MB, stays with it.
"""

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def uncollected() -> Iterator[None]:
    """The collector off inside; then the heap frozen, and the collector as it was before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
