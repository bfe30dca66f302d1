"""How fast the worker's weight prefetch reads a model's files from this machine's disk, by thread count.

Each read starts with the files out of the page cache; the thread counts take turns within a round, in
a rotated order, as a disk's speed drifts. Prints one line per read, then the median and range of
GB/s per thread count, and writes them to OUT/disk_read.json.

  python bench/disk_read.py MODEL_DIR --out OUT [--threads 1 2 4 8] [--rounds 3]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from cold_start import evict  # noqa: E402
from worker_vllm.startup import prefetch  # noqa: E402


def read_once(files: list[Path], threads: int) -> float:
    """Seconds to read `files` into the page cache with `threads` threads."""
    began = time.monotonic()
    reading = prefetch.Prefetch(files, budget=1 << 62, threads=threads)
    reading.wait()
    seconds = time.monotonic() - began
    if reading.bytes_read != reading.total:
        raise SystemExit(f"read {reading.bytes_read} of {reading.total} bytes")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = prefetch.weight_files(args.model)
    total = sum(path.stat().st_size for path in files)
    reads: dict[int, list[float]] = {n: [] for n in args.threads}
    for round_ in range(args.rounds):
        order = args.threads[round_ % len(args.threads):] + args.threads[:round_ % len(args.threads)]
        for threads in order:
            evict(args.model)
            seconds = read_once(files, threads)
            reads[threads].append(total / seconds / 1e9)
            print(f"round {round_ + 1}, {threads} threads: {total / 2**30:.1f} GiB in {seconds:.1f} s, "
                  f"{reads[threads][-1]:.2f} GB/s", flush=True)
    summary = {str(n): {"median_gb_s": round(statistics.median(r), 2), "gb_s": [round(x, 2) for x in r]}
               for n, r in reads.items()}
    for n, row in summary.items():
        print(f"{n} threads: {row['median_gb_s']} GB/s [{min(row['gb_s'])}-{max(row['gb_s'])}]")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "disk_read.json").write_text(json.dumps(
        {"files": len(files), "bytes": total, "piece_bytes": prefetch.PIECE,
         "rounds": args.rounds, "threads": summary}, indent=2))


if __name__ == "__main__":
    main()
