"""A Python environment with what the worker's image has, made from this machine's, for cold
starts as the image would make them.

The benchmark machine's Python differs from the image's in two ways that cost seconds at every
start. It has more packages: scikit-learn, pandas, SciPy or accelerate, which transformers imports
whenever they are installed. And it has no bytecode for torch, and writes none
(PYTHONDONTWRITEBYTECODE), where pip compiles every module it installs into the image.

This makes a virtual environment whose site-packages links to this machine's packages that
requirements.txt needs, with their dependencies, and to nothing else (the folders on PYTHONPATH,
the staged vLLM, stay), and compiles all of it into DIR/pycache, which only that environment reads.

  python bench/image_env.py DIR [--requirements requirements.txt]   # then put DIR/venv/bin first on PATH
"""

import argparse
import os
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip's copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def needed(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions these requirements need, with their dependencies (and extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(line) for line in requirements]
    seen = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # the image has it; this machine does not, and the start shows if it matters
        found[canonicalize_name(requirement.name)] = dist
        for line in dist.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": extra})
                                                for extra in requirement.extras | {""}):
                todo.append(dependency)
    return found


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names this distribution installed at the top of its site-packages."""
    names = {Path(str(file)).parts[0] for file in dist.files or [] if not str(file).startswith("..")}
    return {name for name in names if name != "__pycache__"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--requirements", type=Path,
                        default=Path(__file__).resolve().parent.parent / "requirements.txt")
    args = parser.parse_args()
    lines = [line.split("#")[0].strip() for line in args.requirements.read_text().splitlines()]
    dists = needed([line for line in lines if line])
    machine = {Path(path).resolve() for path in site.getsitepackages()}
    farm = args.dir / "site"
    farm.mkdir(parents=True, exist_ok=True)
    linked = set()
    for dist in dists.values():
        root = Path(dist.locate_file("")).resolve()
        if root in machine:
            for name in top_level_entries(dist):
                if (root / name).exists() and not (farm / name).exists():
                    (farm / name).symlink_to(root / name)
                    linked.add(name)
    hidden = sorted({canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()
                     if Path(d.locate_file("")).resolve() in machine} - set(dists))
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--clear", str(args.dir / "venv")], check=True)
    venv_site = next((args.dir / "venv" / "lib").glob("python*/site-packages"))
    pycache = (args.dir / "pycache").resolve()
    (venv_site / "image.pth").write_text(
        f"import site, sys; site.addsitedir({str(farm.resolve())!r}); sys.pycache_prefix = {str(pycache)!r}\n")
    print(f"image_env: {len(dists)} distributions needed, {len(linked)} entries linked; "
          f"left out of this machine's: {' '.join(hidden) or '-'}", flush=True)
    roots = [str(farm), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    subprocess.run([str(args.dir / "venv" / "bin" / "python"), "-c", COMPILE, *roots], check=True)
    print(f"image_env: bytecode in {pycache}; python at {args.dir / 'venv' / 'bin'}")


# Run by the environment's Python, so that the bytecode lands where its imports look.
COMPILE = """
import compileall, functools, os, sys
from concurrent.futures import ProcessPoolExecutor
files = [os.path.join(d, f) for root in sys.argv[1:] for d, _, names in os.walk(root, followlinks=True)
         for f in names if f.endswith(".py")]
with ProcessPoolExecutor() as pool:
    compiled = sum(pool.map(functools.partial(compileall.compile_file, quiet=2), files, chunksize=256))
print(f"image_env: {compiled} of {len(files)} modules compiled")
"""


if __name__ == "__main__":
    main()
