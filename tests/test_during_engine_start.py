"""What the first job would wait for is done while vLLM's engine process starts: after the fork."""

import logging
import os
import subprocess
import sys
import threading

from helpers import ROOT
from worker_vllm.startup import during_engine_start


def test_runs_once_the_process_forks_and_not_before():
    ran = []
    done = during_engine_start.after_next_fork(lambda: ran.append(os.getpid()), "work")
    assert not done.wait(0.2) and not ran
    child = os.fork()
    if child == 0:  # vLLM's engine process, in its stead: it runs nothing, nor when it forks in turn
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)
        os.waitpid(grandchild, 0)
        threading.Event().wait(0.3)
        os._exit(1 if ran or any(t.name == "during-engine-start" for t in threading.enumerate()) else 0)
    assert done.wait(10) and ran == [os.getpid()]
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    second = os.fork()  # the work runs once
    if second == 0:
        os._exit(0)
    os.waitpid(second, 0)
    threading.Event().wait(0.3)
    assert ran == [os.getpid()]


def test_work_that_raises_is_left_to_the_first_job(caplog):
    caplog.set_level(logging.DEBUG, logger="worker")

    def work():
        raise RuntimeError("broken")

    done = during_engine_start.after_next_fork(work, "work")
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert done.wait(10)
    assert "work failed while the engine started" in caplog.text and "broken" in caplog.text
    assert "work in " not in caplog.text  # not reported as done


def test_the_serving_layer_is_left_out_of_the_engines_start_and_prepared_apart():
    """vLLM's OpenAI app and the runpod SDK are not imported before the engine starts;
    prepare_serving imports them and freezes the heap so far."""
    check = ("import gc, sys, worker_vllm.worker as w; "
             "late = ['vllm.entrypoints.launchers.app', 'vllm.entrypoints.launchers.api_server.app_state', 'runpod']; "
             "print([m for m in late if m in sys.modules]); "
             "w.engine.prepare_serving(['runpod']); "
             "print([m for m in late if m not in sys.modules], gc.get_freeze_count() > 10_000)")
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120,
                           env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.split("\n")[:2] == ["[]", "[] True"]
