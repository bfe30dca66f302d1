"""Runs one job locally, the way `python src/handler.py --test_input '{...}'` promises.

runpod 1.10's own local mode never iterates a generator handler: it prints the generator object
and exits 0. This runs the job, prints each yielded item as one JSON line as it arrives, and
exits 1 with the error if the job fails.
"""

import argparse
import json
import sys
from pathlib import Path


def test_job(argv: list[str], cwd: Path) -> dict | None:
    """The job from --test_input, else from ./test_input.json; None if neither is given."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--test_input")
    args, _ = parser.parse_known_args(argv)
    if args.test_input is not None:
        text, source = args.test_input, "--test_input"
    elif (cwd / "test_input.json").exists():
        text, source = (cwd / "test_input.json").read_text(), "test_input.json"
    else:
        return None
    try:
        job = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{source} is not valid JSON: {e}") from None
    if not isinstance(job, dict) or not isinstance(job.get("input"), dict):
        raise SystemExit(f'{source} must be a JSON object with an "input" object: {{"input": {{...}}}}')
    return {"id": job.get("id", "local-test"), "input": job["input"]}


async def run(handler, job: dict) -> int:
    """Run `job` through `handler`; 0 if it succeeded, 1 if it failed."""
    async for item in handler(job):
        if isinstance(item, dict) and item.get("error"):
            print(f"job failed: {item['error']}", file=sys.stderr, flush=True)
            return 1
        # An SSE item is text that already ends in a blank line; anything else is one JSON line.
        sys.stdout.write(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0
