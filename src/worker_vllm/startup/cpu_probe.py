"""Runs the runpod SDK's CPU probe while vLLM imports, instead of after the engine is ready.

`import runpod` asks py-cpuinfo for the CPU's name, and py-cpuinfo answers from a new Python
process that times the CPU for a second: 1.2 s of the SDK's 1.5 s import on an H100 machine,
paid between "engine ready" and the first job. `start` asks in a thread and keeps the answer, so
the SDK's own call returns it at once. Join the thread before vLLM forks its engine process.
"""

import functools
import threading

import cpuinfo  # the runpod SDK's dependency


def start() -> threading.Thread:
    cpuinfo.get_cpu_info = functools.cache(cpuinfo.get_cpu_info)
    thread = threading.Thread(target=cpuinfo.get_cpu_info, name="cpu-probe", daemon=True)
    thread.start()
    return thread
