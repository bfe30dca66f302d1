"""vLLM's import runs with the garbage collector off (startup.imports); what it made is frozen.

How much sooner the worker starts is measured in bench/ (docs/benchmarks.md), not here.
"""

import gc
import json
import subprocess
import sys

from helpers import ROOT
from worker_vllm.startup import imports


def test_the_worker_imports_vllm_with_no_collection_then_the_collector_is_on_and_the_import_frozen():
    """As main.start_or_exit does it, in a new process: the import is vLLM's, torch's and transformers'."""
    code = """
import gc, json
from worker_vllm.startup import imports
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
with imports.uncollected():
    off = not gc.isenabled()
    from worker_vllm import worker
print(json.dumps({"off": off, "collections": collections, "on": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                            cwd=ROOT / "src")
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["off"] and seen["collections"] == [] and seen["on"]
    assert seen["frozen"] > 300_000  # vLLM's import makes about 600,000 objects that the collector tracks


def test_a_disabled_collector_stays_disabled_and_the_heap_is_frozen_even_if_the_import_fails():
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        try:
            with imports.uncollected():
                raise ImportError("no module named vllm")
        except ImportError:
            pass
        assert not gc.isenabled()
        assert gc.get_freeze_count() > frozen
    finally:
        gc.enable()
