"""The runpod SDK's job loop, as the worker runs it: a fetched job starts as it is queued, not at the
loop's next look (every 0.1 s in the SDK's own), and the SDK's drain still holds when it stops."""

import asyncio
import hashlib
import inspect

import pytest
from runpod.serverless.modules import rp_scale, worker_state

from worker_vllm.runpod_queue import run_jobs_as_they_arrive

SDK_LOOP_SHA256 = "74cd623de98ef8b4e6d9ddd4d2c13a4dc87124d4314d4ea129b8baf7eaeb9632"  # runpod 1.10.0's run_jobs


@pytest.fixture(autouse=True)
def jobs_state_file(tmp_path, monkeypatch):
    """The SDK keeps its jobs in progress in a file, by default in the folder it was imported in."""
    monkeypatch.setattr(worker_state.JobsProgress, "_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(worker_state.JobsProgress, "_STATE_FILE", str(tmp_path / "jobs.pkl"))


class Loop:
    """The SDK's own JobScaler running the worker's loop, with a handler that notes each job and
    waits for `release`."""

    def __init__(self):
        self.started: list[str] = []
        self.release = asyncio.Event()
        self.jobs = rp_scale.JobScaler({"handler": lambda job: None})
        self.jobs.current_concurrency = 4
        self.jobs.jobs_queue = asyncio.Queue(maxsize=4)
        self.jobs.jobs_handler = self.handle
        self.task = asyncio.create_task(run_jobs_as_they_arrive(self.jobs, None))

    async def handle(self, _session, _config, job):
        self.started.append(job["id"])
        await self.release.wait()

    def queue(self, job_id: str) -> None:
        self.jobs.jobs_queue.put_nowait({"id": job_id})

    async def stop(self) -> None:
        self.release.set()
        self.jobs.kill_worker()
        await asyncio.wait_for(self.task, 5)  # it sees the stop and drains


async def turns(count: int = 5) -> None:
    for _ in range(count):  # the loop runs what is ready, with no time passing for timeouts
        await asyncio.sleep(0)


def test_a_queued_job_starts_within_a_few_turns_of_the_loop_not_at_its_next_look():
    async def run():
        loop = Loop()
        await turns()
        loop.queue("a")
        await turns()
        assert loop.started == ["a"]  # the SDK's loop would still be in its 0.1 s sleep
        loop.queue("b")  # one job running: the next one starts at once too
        await turns()
        assert loop.started == ["a", "b"]
        await loop.stop()

    asyncio.run(run())


def test_a_new_queue_from_the_sdks_set_scale_is_watched_too():
    async def run():
        loop = Loop()
        await turns()
        loop.jobs.jobs_queue = asyncio.Queue(maxsize=4)  # as set_scale does when the concurrency changes
        loop.queue("a")
        await asyncio.sleep(0.3)  # at the latest at the loop's next look
        loop.queue("b")
        await turns()
        assert loop.started == ["a", "b"]
        await loop.stop()

    asyncio.run(run())


def test_jobs_in_flight_finish_before_the_loop_ends():
    async def run():
        loop = Loop()
        loop.queue("a")
        await turns()
        loop.jobs.kill_worker()
        await asyncio.sleep(0.3)
        assert not loop.task.done()  # the job still runs: the loop waits for it, as the SDK's does
        await loop.stop()
        assert loop.started == ["a"] and not loop.jobs.jobs_tasks

    asyncio.run(run())


def test_the_sdks_job_loop_is_the_one_the_worker_replaces():
    source = inspect.getsource(rp_scale.JobScaler.run_jobs)
    assert hashlib.sha256(source.encode()).hexdigest() == SDK_LOOP_SHA256, (
        "the runpod SDK's JobScaler.run_jobs changed: read it against runpod_queue.run_jobs_as_they_arrive, "
        "carry over what changed (or drop the replacement if the SDK now starts jobs as they arrive), "
        "then update SDK_LOOP_SHA256")
