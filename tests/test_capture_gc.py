"""The heap stays frozen through vLLM's CUDA graph capture (engine.freeze_gc_for_capture).

The capture runs only on a GPU: bench/gpu_run.sh start_compare measures it there
(docs/benchmarks.md). Here: the context's rules, and that vLLM's model runners get it.
"""

import gc
import subprocess
import sys

from vllm import envs

from worker_vllm import engine


def test_no_collection_runs_during_the_capture_and_the_heap_stays_frozen():
    garbage = [[]]
    garbage[0].append(garbage)  # a cycle: only a collection frees it
    del garbage
    with engine.freeze_gc_for_capture():
        assert not gc.isenabled()
        frozen = gc.get_freeze_count()
        assert frozen > 0
    assert gc.isenabled()
    # Some frozen objects are freed as their references go; vLLM's own context unfreezes all: 0.
    assert gc.get_freeze_count() > frozen // 2


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with engine.freeze_gc_for_capture():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_vllms_opt_out_lets_collections_run_during_the_capture(monkeypatch):
    monkeypatch.setattr(envs, "VLLM_ENABLE_CUDAGRAPH_GC", True, raising=False)
    with engine.freeze_gc_for_capture():
        assert gc.isenabled()


def test_vllms_model_runners_imported_after_the_worker_starts_its_engine_get_it():
    """As in vLLM's engine process: the worker's own imports, the engine's start (which puts the
    context in place), then the runners' modules, which import the context by name."""
    code = """
import sys
from worker_vllm import engine, worker
runners = ("vllm.v1.worker.gpu.model_runner", "vllm.v1.worker.gpu_model_runner")
print([name for name in runners if name in sys.modules])
engine.keep_heap_frozen_through_capture()
from vllm.v1.worker.gpu import model_runner as v2
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
print(v2.freeze_gc_for_cudagraph_capture is engine.freeze_gc_for_capture,
      GPUModelRunner._freeze_gc is engine.freeze_gc_for_capture)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                            cwd="src")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["[]", "True True"]
