"""Which Triton kernels a start built, in build order: the kernels behind the empty start's
"KV cache profiling and warm-up" seconds (cold-start issue), read from a Triton cache folder.

Triton writes each compiled kernel to <cache>/<hash>/ (its metadata <name>.json, the .cubin and
the intermediate forms); the gap between one kernel's files and the previous one's is about
its build time when the start builds them one after another.

  python bench/triton_kernels.py CACHE_DIR [--json OUT] [--source DIR] [--except DIR]

--source (a site-packages folder) names the module that defines each kernel; --except leaves out
the entries another cache has too (the image's, to see what a start built beside it). The last
line sums up, with the architectures and the modules Triton built with gcc (its launchers).
"""

import argparse
import json
import re
from collections import Counter
from collections.abc import Collection
from pathlib import Path


def defined_in(names: set[str], source: Path) -> dict[str, str]:
    """The module under `source` that defines each kernel function."""
    pattern = re.compile(r"^def (" + "|".join(map(re.escape, names)) + r")\b", re.MULTILINE)
    modules: dict[str, str] = {}
    for path in source.rglob("*.py"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for match in pattern.finditer(text):
            modules.setdefault(match.group(1), str(path.relative_to(source)))
    return modules


def kernels(cache: Path, leave_out: Collection[str] = ()) -> list[dict]:
    """One entry per compiled kernel, oldest first; none from the folders named in `leave_out`."""
    found = []
    for metadata in cache.glob("*/*.json"):
        if metadata.name.startswith("__grp__") or metadata.parent.name in leave_out:
            continue
        try:
            info = json.loads(metadata.read_text())
        except (OSError, ValueError):
            continue
        folder = metadata.parent
        found.append({
            "name": info.get("name", metadata.stem),
            "target": info.get("target"),
            "num_warps": info.get("num_warps"),
            "built": max(path.stat().st_mtime for path in folder.iterdir()),
            "bytes": sum(path.stat().st_size for path in folder.iterdir()),
            "cubin_bytes": sum(path.stat().st_size for path in folder.glob("*.cubin")),
        })
    found.sort(key=lambda kernel: kernel["built"])
    for previous, kernel in zip([None, *found], found, strict=False):  # each with the one before it
        kernel["gap_s"] = round(kernel["built"] - previous["built"], 2) if previous else None
    return found


def gcc_modules(cache: Path, leave_out: Collection[str] = ()) -> list[str]:
    """The C modules Triton compiled with gcc into the cache: cuda_utils, and before Triton 3.7 a
    launcher per kernel signature."""
    return [path.name for path in cache.glob("*/*.so") if path.parent.name not in leave_out]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--except", dest="leave_out", type=Path)
    args = parser.parse_args()
    leave_out = {path.name for path in args.leave_out.glob("*")} if args.leave_out else set()
    found = kernels(args.cache, leave_out)
    compiled = gcc_modules(args.cache, leave_out)
    modules = defined_in({kernel["name"] for kernel in found}, args.source) if args.source and found else {}
    for kernel in found:
        kernel["module"] = modules.get(kernel["name"])
        print(f"{kernel['gap_s'] or 0:7.2f} s  {kernel['bytes'] / 1024:7.0f} KiB  {kernel['name']}",
              kernel["module"] or "")
    by_name = Counter(kernel["name"] for kernel in found)
    total = sum(kernel["bytes"] for kernel in found)
    cubins = sum(kernel["cubin_bytes"] for kernel in found)
    span = found[-1]["built"] - found[0]["built"] if found else 0
    archs = Counter(f"sm_{kernel['target']['arch']}" for kernel in found if kernel["target"])
    by_arch = ", ".join(f"{arch}: {count}" for arch, count in sorted(archs.items()))
    print(f"{len(found)} kernels ({len(by_name)} distinct; {by_arch}), "
          f"{total / 2**20:.1f} MiB ({cubins / 2**20:.1f} MiB of cubins), built over {span:.1f} s; "
          f"{len(compiled)} gcc-built modules")
    if args.json:
        args.json.write_text(json.dumps({"kernels": found, "distinct": by_name, "bytes": total,
                                         "cubin_bytes": cubins, "span_s": span}, indent=2))


if __name__ == "__main__":
    main()
