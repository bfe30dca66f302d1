"""The runpod SDK's job loop, as the worker runs it: a fetched job starts as it is queued, not at the
loop's next look (every 0.1 s in the SDK's own), and the SDK's drain still holds when it stops."""

import asyncio

from runpod.serverless.modules import rp_scale

from worker_vllm.runpod_queue import run_jobs_as_they_arrive


def scaler(started: list, release: asyncio.Event) -> rp_scale.JobScaler:
    """The SDK's own JobScaler, with a handler that notes each job and waits for `release`."""
    jobs = rp_scale.JobScaler({"handler": lambda job: None})
    jobs.current_concurrency = 4
    jobs.jobs_queue = asyncio.Queue(maxsize=4)

    async def handle(_session, _config, job):
        started.append(job["id"])
        await release.wait()

    jobs.jobs_handler = handle
    return jobs


async def turns(count: int) -> None:
    for _ in range(count):  # the loop runs what is ready, with no time passing for timeouts
        await asyncio.sleep(0)


def test_a_queued_job_starts_within_a_few_turns_of_the_loop_not_at_its_next_look():
    async def run():
        started, release = [], asyncio.Event()
        jobs = scaler(started, release)
        loop = asyncio.create_task(run_jobs_as_they_arrive(jobs, None))
        await turns(5)
        jobs.jobs_queue.put_nowait({"id": "a"})
        await turns(5)
        assert started == ["a"]  # the SDK's loop would still be in its 0.1 s sleep
        jobs.jobs_queue.put_nowait({"id": "b"})  # one job running: the next also starts at once
        await turns(5)
        assert started == ["a", "b"]
        release.set()
        jobs.kill_worker()
        await asyncio.wait_for(loop, 5)  # it sees the stop and drains

    asyncio.run(run())


def test_a_new_queue_from_the_sdks_set_scale_is_watched_too():
    async def run():
        started, release = [], asyncio.Event()
        jobs = scaler(started, release)
        loop = asyncio.create_task(run_jobs_as_they_arrive(jobs, None))
        await turns(5)
        jobs.jobs_queue = asyncio.Queue(maxsize=4)  # as set_scale does when the concurrency changes
        jobs.jobs_queue.put_nowait({"id": "a"})
        await asyncio.sleep(0.3)  # at the latest at the loop's next look
        jobs.jobs_queue.put_nowait({"id": "b"})
        await turns(5)
        assert started == ["a", "b"]
        release.set()
        jobs.kill_worker()
        await asyncio.wait_for(loop, 5)

    asyncio.run(run())


def test_jobs_in_flight_finish_before_the_loop_ends():
    async def run():
        started, release = [], asyncio.Event()
        jobs = scaler(started, release)
        loop = asyncio.create_task(run_jobs_as_they_arrive(jobs, None))
        jobs.jobs_queue.put_nowait({"id": "a"})
        await turns(5)
        jobs.kill_worker()
        await asyncio.sleep(0.3)
        assert not loop.done()  # the job still runs: the loop waits for it, as the SDK's does
        release.set()
        await asyncio.wait_for(loop, 5)
        assert started == ["a"] and not jobs.jobs_tasks

    asyncio.run(run())
