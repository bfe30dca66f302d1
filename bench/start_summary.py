"""Folds the starts bench/cold_start.py wrote in one folder into start_compare.json and one archive
of their logs (the GPU machine returns only a few files), and prints, per kind of start, the
seconds to the first token: median and range over its rounds.

  python bench/start_summary.py OUT   # OUT: cold_start_LABEL_N.json and .log files
"""

import json
import re
import statistics
import sys
import tarfile
from pathlib import Path


def main(out: Path) -> None:
    starts = {path.stem.removeprefix("cold_start_"): json.loads(path.read_text())
              for path in sorted(out.glob("cold_start_*.json"))}
    kinds: dict[str, list[float]] = {}
    for label, runs in starts.items():
        for run in runs.values():
            if isinstance(run, dict) and run.get("first_token_after_launch_s") is not None:
                kinds.setdefault(re.sub(r"_\d+$", "", label), []).append(run["first_token_after_launch_s"])
                print(label, run["first_token_after_launch_s"], run.get("worker_line"))
    summary = {kind: {"median_s": statistics.median(seconds), "range_s": [min(seconds), max(seconds)],
                      "starts": len(seconds)} for kind, seconds in kinds.items()}
    for kind, figures in summary.items():
        print(f"{kind}: first token {figures['median_s']} s [{figures['range_s'][0]}-{figures['range_s'][1]}], "
              f"{figures['starts']} starts")
    (out / "start_compare.json").write_text(json.dumps({"summary": summary, "starts": starts}, indent=2))
    logs = sorted(out.glob("cold_start_*"))
    with tarfile.open(out / "start_compare_logs.tgz", "w:gz") as archive:
        for path in logs:
            archive.add(path, arcname=path.name)
    for path in logs:
        path.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
