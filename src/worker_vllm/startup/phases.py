"""Where start-up time goes, in one log line per cold start.

vLLM's engine runs in child processes, which log their own phases (weight download and load,
torch.compile, CUDA graphs, the engine's init). `record_engine_phases` runs in every process
(the children import the main module again, or inherit it) and notes those log records in the
file the worker names in WORKER_STARTUP_PHASES_FILE; `summary` reads them back in the worker.
"""

import json
import logging
import os
import re
import time
from pathlib import Path

FILE_ENV = "WORKER_STARTUP_PHASES_FILE"
FAILURE = "failure"  # a note of an exception, next to the phases
# vLLM 0.32's log messages, by phase. A message vLLM no longer logs leaves its phase out.
ENGINE_PHASES = [
    ("weight download", re.compile(r"Time spent downloading weights for .*: ([\d.]+) seconds")),
    ("model build", re.compile(r"Initializing model took ([\d.]+) seconds")),
    ("weight load", re.compile(r"Loading weights took ([\d.]+) seconds")),
    ("model load", re.compile(r"Model loading took [\d.]+ GiB (?:memory )?and ([\d.]+) seconds")),  # GPU
    ("torch.compile", re.compile(r"torch\.compile took ([\d.]+) s in total")),
    ("CUDA graphs", re.compile(r"Graph capturing finished in ([\d.]+) secs")),
    ("engine init", re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s")),
]
# The first records of vLLM 0.32's engine process and of its model worker's weight load, noted
# with their time. Before them, the engine process started Python and imported vLLM, and the model
# worker set up its device (CUDA, NCCL): seconds that no record names (12 of the engine's 14 s on
# CPU, about 2 s on an H200). The CPU runner and the GPU's v2 runner say it differently.
PROCESS_STARTS = [
    ("engine process start", re.compile(r"Initializing a V1 LLM engine")),
    ("worker start", re.compile(r"Starting to load model|Loading model from scratch")),
]
STARTED = "started"  # a note of when a process of PROCESS_STARTS got going


def seconds_since_process_start() -> float:
    """From this process's start, as the kernel noted it (clock ticks since boot), to now.

    Not psutil's create_time, which adds a boot time rounded to whole seconds."""
    started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


def record_engine_phases() -> None:
    """Note vLLM's phase log records in this process, from now on (a no-op without the file); and
    the exceptions vLLM logs at ERROR, since an engine process that fails to start logs its cause
    and exits, and the worker's own exception only says that it did."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "records_phases", False):
        return

    def recording(*args, **kwargs):
        record = make_record(*args, **kwargs)
        path = os.environ.get(FILE_ENV)  # removed by the worker once it is ready
        if path and record.name.startswith("vllm") and record.levelno >= logging.INFO and os.path.isfile(path):
            if note := _note(record):
                with open(path, "a") as f:
                    f.write(json.dumps(note) + "\n")
        return record

    recording.records_phases = True  # type: ignore[attr-defined]
    # A record factory, not a handler: vLLM's logging config replaces the handlers of its loggers.
    logging.setLogRecordFactory(recording)


def _note(record: logging.LogRecord) -> list | None:
    if record.levelno == logging.INFO:
        message = record.getMessage()
        for phase, pattern in ENGINE_PHASES:
            if match := pattern.search(message):
                return [phase, float(match.group(1))]
        for phase, pattern in PROCESS_STARTS:
            if pattern.search(message):
                return [STARTED, {"phase": phase, "at": record.created}]
    elif record.levelno >= logging.ERROR and record.exc_info and (exc := record.exc_info[1]) is not None:
        return [FAILURE, {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0] if str(exc).strip()
                          else type(exc).__name__}]
    return None


def _notes(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def engine_failures(path: Path) -> list[dict]:
    """The exceptions vLLM's processes logged while the engine started: {"type", "message"}."""
    return [detail for kind, detail in _notes(path) if kind == FAILURE]


def engine_phases(path: Path, engine_began: float | None = None) -> dict[str, float]:
    """Seconds per engine phase from the file; with several GPU workers, the slowest. With
    `engine_began` (time.time() as the engine's start began), the processes' starts come first."""
    phases: dict[str, float] = {}
    started: dict[str, float] = {}
    for phase, value in _notes(path):
        if phase == STARTED:
            started[value["phase"]] = max(value["at"], started.get(value["phase"], 0.0))
        elif phase != FAILURE:
            phases[phase] = max(value, phases.get(phase, 0.0))
    if engine_began is not None:
        starts, previous = {}, engine_began
        for phase, _ in PROCESS_STARTS:  # each from the one before it
            if phase in started:
                starts[phase], previous = max(started[phase] - previous, 0.0), started[phase]
        phases = starts | phases
    # On a GPU vLLM's model load holds the build and the weights, then their processing; some loaders
    # log no weights line, and then the rest is the weights.
    phases = _split(phases, "model load", ("model build", "weight load"),
                    "weight processing" if "weight load" in phases else "weight load")
    return _split(phases, "engine init", ("torch.compile", "CUDA graphs"), "KV cache profiling and warm-up")


def _split(phases: dict[str, float], whole: str, parts: tuple[str, ...], rest: str) -> dict[str, float]:
    """`phases` with `whole`, which holds `parts`, replaced in place by what is left of it, named `rest`."""
    if whole not in phases:
        return phases
    left = max(phases[whole] - sum(phases.get(part, 0.0) for part in parts), 0.0)
    return {(rest if phase == whole else phase): (left if phase == whole else seconds)
            for phase, seconds in phases.items()}


def summary(imports: float, config: float, engine: float, phases: dict[str, float], checks: float = 0.0) -> str:
    """The start-up line; `checks`: what the engine waited for the runpod SDK's checks (startup.fitness)."""
    inside = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items())
    waited = f", runpod SDK checks {checks:.1f} s" if checks >= 0.05 else ""
    ready = imports + config + checks + engine
    return (f"startup: process and imports {imports:.1f} s, config {config:.1f} s{waited}, engine {engine:.1f} s"
            + (f" ({inside})" if inside else "") + f"; ready {ready:.1f} s after process start")
