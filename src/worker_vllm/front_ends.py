"""Several front-end processes on one vLLM engine core (API_SERVER_COUNT > 1).

With a small, fast model, one Python process cannot keep up with the engine: vLLM's OpenAI serving
layer and its output processing take a core. vLLM's answer is `vllm serve --api-server-count`;
this is the same for a queue worker. The worker's process takes Runpod's jobs and runs each one
itself or hands it to the least busy of the other front ends, which run it as the worker's process
would (router.make_handler) and send its items back over a Unix socket. The socket lies in a
folder only this user can enter (mkdtemp), since its messages are pickled.
"""

import asyncio
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import struct
import tempfile
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker_vllm.jobs import InFlight, Job
from worker_vllm.paths.base import Item
from worker_vllm.router import Handler, make_handler

if TYPE_CHECKING:
    from worker_vllm.config import Settings
    from worker_vllm.engine import StartFrontEnds
    from worker_vllm.worker import Worker

log = logging.getLogger("worker")
HEADER = struct.Struct("!I")  # each message: its length, then the pickled message
CONNECT_RETRY = 0.1  # seconds between a front end's attempts to reach the worker's process
PR_SET_PDEATHSIG = 1  # Linux prctl: a signal for this process when its parent exits


async def send(writer: asyncio.StreamWriter, message: tuple) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(HEADER.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple | None:
    """The next message, or None once the other side has closed the socket."""
    try:
        size, = HEADER.unpack(await reader.readexactly(HEADER.size))
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class Remote:
    """One other front-end process, seen from the worker's process."""

    def __init__(self, index: int, writer: asyncio.StreamWriter):
        self.index, self.writer = index, writer
        self.outputs: dict[int, asyncio.Queue[Item | None]] = {}  # each job's items, ended by None
        self._keys = itertools.count()

    async def run(self, job: dict[str, Any], current: Job) -> AsyncIterator[Item]:
        key = next(self._keys)
        self.outputs[key] = outputs = asyncio.Queue[Item | None]()
        ended = False
        current.on_abort(lambda: send(self.writer, ("abort", key, current.abort_reason)))
        try:
            await send(self.writer, ("job", key, job))
            while (item := await outputs.get()) is not None:
                yield item
            ended = True
        finally:
            self.outputs.pop(key, None)
            if not ended and not self.writer.is_closing():  # the runpod SDK stopped reading
                with contextlib.suppress(ConnectionError):
                    await send(self.writer, ("cancel", key, None))

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Hands each item to its job until the process closes the socket; then ends its jobs."""
        while (message := await receive(reader)) is not None:
            _kind, key, item = message
            if (outputs := self.outputs.get(key)) is not None:
                outputs.put_nowait(item)
        self.fail(f"front-end process {self.index} exited while it served this job")

    def fail(self, reason: str) -> None:
        """End each job this process runs with an error item that gives `reason`."""
        for outputs in self.outputs.values():
            outputs.put_nowait({"error": reason})
            outputs.put_nowait(None)


class Pool:
    """The worker's process and the other front ends that have connected to it."""

    def __init__(self, count: int):
        self.count = count
        self._folder = Path(tempfile.mkdtemp(prefix="worker-front-ends-"))
        self.address = str(self._folder / "socket")
        self.remotes: list[Remote] = []
        self._listening: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def starter(self, settings: "Settings") -> "StartFrontEnds":
        """Engine's `start_front_ends`: one spawned process per client config, which connects here."""
        context = multiprocessing.get_context("spawn")

        def start_front_ends(clients: list[dict[str, Any]]) -> list[BaseProcess]:
            processes: list[BaseProcess] = []
            for client in clients:
                process = context.Process(target=run_front_end, name=f"FrontEnd_{client['client_index']}",
                                          args=(settings, client, self.address, os.getpid()), daemon=True)
                process.start()
                processes.append(process)
            return processes

        return start_front_ends

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the other front ends' connections on `loop` (the runpod SDK's)."""
        self._loop = loop
        self._listening = loop.create_task(asyncio.start_unix_server(self._accept, self.address))
        self._listening.add_done_callback(_log_failure)

    def fail_all(self, reason: str) -> None:
        """End every job the other front ends run with `reason`. Thread-safe: for the engine's
        watchdog, since their processes cannot see the engine core die."""
        def fail():
            for remote in self.remotes:
                remote.fail(reason)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fail)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await receive(reader)
        if hello is None:
            return
        remote = Remote(hello[1], writer)
        self.remotes.append(remote)
        log.info("front-end process %d of %d is taking jobs", remote.index, self.count - 1)
        try:
            await remote.read(reader)
        except asyncio.CancelledError:  # the loop ends: asyncio's stream callback would log the cancel
            pass
        finally:
            self.remotes.remove(remote)
            writer.close()

    def balance(self, handler: Handler, in_flight: InFlight) -> Handler:
        """`handler`, or for some jobs another front end: each job goes where the fewest run."""
        local = 0

        async def balanced(job: dict[str, Any]) -> AsyncIterator[Item]:
            nonlocal local
            remote = min(self.remotes, key=lambda r: len(r.outputs), default=None)
            if remote is None or local < len(remote.outputs):
                local += 1
                try:
                    async for item in handler(job):
                        yield item
                finally:
                    local -= 1
                return
            # Noted here too: a SIGTERM's drain (lifecycle.graceful_sigterm) aborts it like the others.
            current = Job(job["id"], "relayed")
            in_flight.add(current)
            try:
                async for item in remote.run(job, current):
                    yield item
            finally:
                in_flight.remove(current)

        return balanced

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the other front-end processes cannot reach this one: %s", error)


def run_front_end(settings: "Settings", client: dict[str, Any], pool_address: str, parent: int) -> None:
    """A front-end process: its own client of the engine core and vLLM's OpenAI app, running the
    jobs the worker's process hands it until that process closes the socket."""
    from worker_vllm import main
    from worker_vllm.engine import Engine
    from worker_vllm.startup import hooks
    from worker_vllm.worker import Worker

    # Killed with the worker's process, however that ends: it may be killed itself (out of memory),
    # and then nothing else would stop this one while it waits for an engine that is gone.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        return
    hooks.install()  # where the main script did not (bench.py): masking, engine phases
    main.configure_logging(f"front end {client['client_index']}")
    worker = Worker(Engine(settings.engine_args, client=client), settings)
    try:
        asyncio.run(_take_jobs(worker, client["client_index"], pool_address))
    finally:
        worker.engine.shutdown()


async def _take_jobs(worker: "Worker", index: int, pool_address: str) -> None:
    await worker.engine.ready()
    for attempt in itertools.count(1):
        try:
            reader, writer = await asyncio.open_unix_connection(pool_address)
            break
        except OSError as e:  # the worker's process is not listening yet
            if attempt % round(60 / CONNECT_RETRY) == 0:
                log.warning("still cannot reach the worker's process at %s: %s", pool_address, e)
            await asyncio.sleep(CONNECT_RETRY)
    in_flight = InFlight()
    handler = make_handler(worker, in_flight)
    running: dict[int, tuple[asyncio.Task, str]] = {}  # each job's task and id, by its key

    async def run(key: int, job: dict[str, Any]) -> None:
        try:
            async for item in handler(job):
                await send(writer, ("item", key, item))
        finally:
            running.pop(key, None)
            with contextlib.suppress(ConnectionError):
                await send(writer, ("end", key, None))

    await send(writer, ("hello", index, None))
    while (message := await receive(reader)) is not None:
        kind, key, payload = message
        if kind == "job":
            running[key] = asyncio.create_task(run(key, payload)), payload["id"]
        elif (job := running.get(key)) is None:
            continue  # an abort or a cancel for a job that has ended
        elif kind == "abort":
            in_flight.abort(job[1], payload)
        elif kind == "cancel":
            job[0].cancel()
    for task, _job_id in running.values():
        task.cancel()
