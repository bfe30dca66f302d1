"""Jobs in flight: early stops (timeout, shutdown) and the one log line each job leaves."""

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("worker.jobs")


class Job:
    """One job being served. Its request path registers how to stop generation early (`on_abort`)
    and reports the tokens it counted (`report_usage`); `abort` stops it and records why, so the
    path can end the job with that reason."""

    def __init__(self, job_id: str, route: str):
        self.id, self.route = job_id, route
        self.abort_reason: str | None = None
        self.timed_out = False
        self._stop: Callable[[], object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopping: set[asyncio.Future] = set()  # kept, or the loop may drop them before they run
        self._started = time.monotonic()
        self._first_item: float | None = None
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None

    def on_abort(self, stop: Callable[[], object]) -> None:
        self._stop = stop
        if self.abort_reason:
            self._run_stop()

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
            self._run_stop()

    def _run_stop(self) -> None:
        result = self._stop() if self._stop else None
        if asyncio.iscoroutine(result):
            stopping = asyncio.ensure_future(result)
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    def set_timeout(self, requested: float | None, limit: float | None) -> None:
        """Abort after the job's own `requested` seconds or the operator's `limit` (REQUEST_TIMEOUT),
        whichever is shorter: a job may shorten the limit, never lift it."""
        seconds = min((s for s in (requested, limit) if s), default=None)
        if seconds:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._time_out, seconds)

    def _time_out(self, seconds: float) -> None:
        self.timed_out = self.abort_reason is None
        self.abort(f"timed out after {seconds:g} s (REQUEST_TIMEOUT or request_timeout)")

    def report_usage(self, prompt_tokens: int | None, output_tokens: int | None) -> None:
        """The counts so far; None keeps a count an earlier report gave (Anthropic streams report
        the prompt at the start and the output at the end)."""
        self.prompt_tokens = self.prompt_tokens if prompt_tokens is None else prompt_tokens
        self.output_tokens = self.output_tokens if output_tokens is None else output_tokens

    def yielded(self) -> None:
        """Note that the job yielded an item (the first one's time is the job's TTFT)."""
        if self._first_item is None:
            self._first_item = time.monotonic()

    def finish(self, status: str) -> None:
        if self._timer:
            self._timer.cancel()
        now = time.monotonic()
        ttft = f"{self._first_item - self._started:.3f}s" if self._first_item else "-"
        prompt, output = ("-" if v is None else v for v in (self.prompt_tokens, self.output_tokens))
        log.info("job %s route=%s prompt_tokens=%s output_tokens=%s ttft=%s duration=%.3fs status=%s",
                 self.id, self.route, prompt, output, ttft, now - self._started, status)


class InFlight:
    """The jobs this worker is serving now."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._aborted_early: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        if (reason := self._aborted_early.pop(job.id, None)) is not None:
            job.abort(reason)

    def remove(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    def abort(self, job_id: str, reason: str) -> None:
        """Abort a job now, or as it is added: an abort can reach another front end before the job's
        handler has noted the job there."""
        if (job := self.jobs.get(job_id)) is not None:
            job.abort(reason)
        else:
            self._aborted_early[job_id] = reason

    def abort_all(self, reason: str) -> None:
        for job in list(self.jobs.values()):
            job.abort(reason)
