"""vLLM's import, with Python's garbage collector off.

Importing vLLM, torch and transformers makes about a million objects, two thirds of which live as
long as the worker. The collector walks every one of them again each time the heap has grown by a
quarter: 8 full collections, 1.3-1.6 s of the import on an H200, and as much on 2 CPU cores
(docs/benchmarks.md). With the collector off, what the import made is frozen (kept out of later
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
