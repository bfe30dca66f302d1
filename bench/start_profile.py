"""Where a start's time went, from a py-spy raw profile of every process and thread, waiting
included (`bench/cold_start.py --py-spy`, which records with --subprocesses --threads --idle).

A start is mostly one thread at a time: the worker's main thread imports, then vLLM's engine
process loads the model. So each thread's samples are seconds of its life, and within one thread
the seconds under a frame say how long that step took.

  python bench/start_profile.py PROFILE.txt                     # seconds per process and thread
  python bench/start_profile.py PROFILE.txt --process PID --under EngineCore.__init__ --depth 2
  python bench/start_profile.py PROFILE.txt --process PID --under compile_or_warm_up_model --leaves
"""

import argparse
import collections
import re
from pathlib import Path

RATE = 100  # samples per second, as cold_start.py records
PROCESS = re.compile(r'process (\d+):"(.*?)";(?=process |thread )')  # a command line may hold ";"
THREAD = re.compile(r"thread \((\d+)\)(?:: ([^;]*))?(?:;|$)")


def samples(path: Path):
    """(process: pid and command line, thread name, frames outermost first, count) per line."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        processes = list(PROCESS.finditer(stack))
        if not processes or not (thread := THREAD.match(stack, processes[-1].end())):
            continue
        process = processes[-1]  # the innermost: a child's stack is nested under its parent's
        frames = stack[thread.end():].split(";") if thread.end() < len(stack) else []
        yield f"{process[1]} {process[2][:80]}", thread[2] or thread[1], frames, int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--process", help="a process whose pid or command line has this (without it: the list)")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--under", help="only the samples under a frame whose name has this")
    parser.add_argument("--depth", type=int, default=1, help="frames shown below --under")
    parser.add_argument("--leaves", action="store_true", help="by innermost frame and its caller instead")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    seconds: collections.Counter[str] = collections.Counter()
    for process, thread, frames, count in samples(args.profile):
        if not args.process:
            seconds[f"{process} | {thread}"] += count
            continue
        pid, _, command = process.partition(" ")
        chosen = args.process == pid if args.process.isdigit() else args.process in command
        if not chosen or args.thread not in thread:
            continue
        if args.under:
            starts = [i for i, frame in enumerate(frames) if args.under in frame]
            if not starts:
                continue
            frames = frames[starts[0]:]
        shown = frames[:-3:-1] if args.leaves else frames[:args.depth + (1 if args.under else 0)]
        seconds[(" < " if args.leaves else " > ").join(shown)] += count
    print(f"{sum(seconds.values()) / RATE:.2f} s in all")
    for key, count in seconds.most_common(args.top):
        print(f"{count / RATE:7.2f} s  {key}")


if __name__ == "__main__":
    main()
