"""How long a queued job waits for its handler: from the job API handing it out to its first
streamed item, for jobs sent one at a time to an idle worker under the runpod SDK's production
loop (a fake job API on 127.0.0.1, the embedded tiny model on CPU, 2 tokens per job).

Each round starts each worker once (alternating) and sends it JOBS jobs; it reports the median and
range of each round's median, and every gap.

  python bench/job_pickup.py --worker OLD/src/handler.py --worker src/handler.py [--rounds 3] [--jobs 30]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from worker_vllm.local.fake_runpod import FakeRunpod, start_worker, wait_for


def job(number: int) -> dict:
    return {"id": f"job-{number}", "input": {"prompt": "hello", "stream": True,
                                             "sampling_params": {"max_tokens": 2, "ignore_eos": True}}}


def gaps_ms(worker: Path, jobs: int) -> list[float]:
    """Start `worker`, send it `jobs` jobs one at a time, each once it is idle; the gaps in ms."""
    fake = FakeRunpod([job(0)])  # the first job only warms the worker up
    with tempfile.TemporaryDirectory() as folder:
        proc, log = start_worker(fake, Path(folder), {"VLLM_CPU_KVCACHE_SPACE": "1"}, worker.resolve())
        try:
            if not wait_for(lambda: "job-0" in fake.done or proc.poll() is not None, 300) or proc.poll() is not None:
                raise SystemExit(f"{worker} served no job:\n{log.read_text()[-3000:]}")
            gaps = []
            for number in range(1, jobs + 1):
                time.sleep(0.37)  # idle between requests, at a time unrelated to the SDK's loop
                fake.queue.append(job(number))
                name = f"job-{number}"
                if not wait_for(lambda name=name: name in fake.done, 30):
                    raise SystemExit(f"{worker} did not finish {name}")
                gaps.append(round(1000 * (fake.first_streamed_at[name] - fake.taken_at[name]), 1))
            return gaps
        finally:
            proc.terminate()
            proc.wait(60)
            fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    gaps: dict[str, list[list[float]]] = {str(worker): [] for worker in args.worker}
    for _ in range(args.rounds):
        for worker in args.worker:
            gaps[str(worker)].append(gaps_ms(worker, args.jobs))
    results = {}
    for worker, rounds in gaps.items():
        medians = [statistics.median(one) for one in rounds]
        every = sorted(gap for one in rounds for gap in one)
        results[worker] = {"median_of_round_medians_ms": statistics.median(medians),
                           "round_medians_ms": medians, "min_ms": every[0], "max_ms": every[-1], "gaps_ms": rounds}
        print(f"{worker}: median {statistics.median(medians):.0f} ms (rounds {min(medians):.0f}-{max(medians):.0f}), "
              f"every gap {every[0]:.0f}-{every[-1]:.0f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
