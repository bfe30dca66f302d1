"""Jobs in flight: early stops (timeout, shutdown) and the one log line each job leaves."""

import asyncio
import json
import logging
import time
from collections.abc import Callable

log = logging.getLogger("worker.jobs")


class Job:
    """One job being served. A request path registers how to stop its generation early;
    `abort` stops it and records why, so the path can end the job with that reason."""

    def __init__(self, job_id: str, route: str):
        self.id, self.route = job_id, route
        self.abort_reason: str | None = None
        self.timed_out = False
        self._stop: Callable[[], object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        self._first_item: float | None = None
        self.status = "ok"
        self.usage: tuple[int | None, int | None] = (None, None)

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
            asyncio.ensure_future(result)

    def set_timeout(self, seconds: float | None) -> None:
        if seconds:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._time_out, seconds)

    def _time_out(self, seconds: float) -> None:
        self.timed_out = self.abort_reason is None
        self.abort(f"timed out after {seconds:g} s (REQUEST_TIMEOUT or request_timeout)")

    def saw(self, item) -> None:
        """Note an item the job yielded: the first one's time, errors, token usage."""
        if self._first_item is None:
            self._first_item = time.monotonic()
        if isinstance(item, dict):
            if item.get("error"):
                self.status = "error"
            usage = item.get("usage") or {}
            if "input" in usage:
                self.usage = (usage["input"], usage["output"])
            elif "prompt_tokens" in usage:
                self.usage = (usage["prompt_tokens"], usage.get("completion_tokens"))
        elif isinstance(item, str) and '"usage":{' in item:
            for event in reversed(item.split("\n\n")):
                if '"usage":{' in event:
                    usage = json.loads(event[len("data: "):])["usage"]
                    self.usage = (usage["prompt_tokens"], usage.get("completion_tokens"))
                    break

    def finish(self, status: str | None = None) -> None:
        if self._timer:
            self._timer.cancel()
        now = time.monotonic()
        ttft = f"{self._first_item - self._started:.3f}s" if self._first_item else "-"
        prompt, output = (v if v is not None else "-" for v in self.usage)
        log.info("job %s route=%s prompt_tokens=%s output_tokens=%s ttft=%s duration=%.3fs status=%s",
                 self.id, self.route, prompt, output, ttft, now - self._started, status or self.status)


class InFlight:
    """The jobs this worker is serving now."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job

    def remove(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    def abort_all(self, reason: str) -> None:
        for job in list(self.jobs.values()):
            job.abort(reason)
