"""The Triton kernels the image ships: a start records what it compiles, the image build compiles
that list for GPUs it does not have, and Triton's JIT finds the result instead of compiling.

The JIT runs here for real, with no GPU: its active driver only answers "which device and
architecture" (triton_kernels.CompileOnly). On a GPU, `bash bench/gpu_run.sh triton_compare` shows
vLLM's own start finding the kernels (docs/benchmarks.md). The last test compiles the recorded
list with the pinned vLLM and Triton, so an upgrade that changes a kernel says to record it again.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import triton
import triton.language as tl

from worker_vllm.startup import triton_kernels

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "builder" / "triton_kernels.jsonl"
PYTHONPATH = ":".join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))


@triton.jit
def scale(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * factor, mask=offsets < n)


RENAMED = {"function": "test_triton_kernels:renamed", "signature": {}, "constant_keys": [], "constant_vals": [],
           "attrs_keys": [], "attrs_vals": [], "options": {}, "key": ""}

# A process with this file's kernel: launch it for compiling as a start would (Triton's warmup
# compiles and does not run), on the architecture named, then print each compile's cache outcome.
LAUNCH = """
import sys, torch
from triton import knobs
from triton.runtime.driver import driver
from worker_vllm.startup import triton_kernels
import test_triton_kernels as here

outcomes = []
knobs.compilation.listener = lambda *, cache_hit, **kwargs: outcomes.append("hit" if cache_hit else "built")
triton_kernels.record_from_env()
driver.set_active(triton_kernels.CompileOnly(int(sys.argv[1])))
here.scale.warmup(torch.float32, torch.float32, 4096, 0.5, BLOCK=256, num_warps=2, grid=(1,))
here.scale.warmup(torch.float16, torch.float16, 1, 2, BLOCK=64, grid=(1,))
print(" ".join(outcomes))
"""


def launch(arch: int, cache: Path, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", LAUNCH, str(arch)], capture_output=True, text=True, timeout=120,
        env=os.environ | {"TRITON_CACHE_DIR": str(cache), "PYTHONPATH": PYTHONPATH} | env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def build(kernels: Path, cache: Path, archs: list[int]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "builder" / "triton_cache.py"), "--kernels", str(kernels),
         "--archs", *map(str, archs)], capture_output=True, text=True, timeout=300,
        env=os.environ | {"TRITON_CACHE_DIR": str(cache), "PYTHONPATH": PYTHONPATH})


def test_recorded_kernels_built_for_other_gpus_are_found_by_the_jit(tmp_path):
    recorded = tmp_path / "kernels.jsonl"
    assert launch(90, tmp_path / "start", RECORD_TRITON_KERNELS=str(recorded)) == ["built", "built"]
    specs = triton_kernels.read(recorded.read_text().splitlines())
    assert [spec["function"] for spec in specs] == ["test_triton_kernels:scale"] * 2
    assert specs[0]["options"] == {"num_warps": 2}  # what the launch chose; the target's defaults are left out

    with recorded.open("a") as file:  # and one that vLLM renamed since: named, and left for the start to build
        file.write(json.dumps(RENAMED) + "\n")
    built = build(recorded, tmp_path / "image", [80, 90, 120])
    assert built.returncode == 0, built.stdout + built.stderr
    assert "sm_120: 2 of 3 kernels" in built.stdout
    assert "sm_120: not built: test_triton_kernels:renamed: AttributeError" in built.stdout
    entries = sorted(path.name for path in (tmp_path / "image").iterdir())
    assert len(entries) == 6  # two kernels, three architectures

    assert launch(90, tmp_path / "image") == ["hit", "hit"]
    assert launch(80, tmp_path / "image") == ["hit", "hit"]
    assert launch(89, tmp_path / "image") == ["built", "built"]  # an architecture not built for
    assert len(list((tmp_path / "image").iterdir())) == 8


def test_the_same_compile_recorded_twice_is_built_once():
    line = json.dumps({"function": "m:k", "signature": {"x": "*fp32"}, "constant_keys": [], "constant_vals": [],
                       "attrs_keys": [[0]], "attrs_vals": [[["tt.divisibility", 16]]], "options": {},
                       "recorded_on": 90, "key": "from one process"})
    other_process = line.replace("from one process", "from another")
    assert len(triton_kernels.read([line, other_process, ""])) == 1


def test_when_no_kernel_can_be_built_the_image_build_fails(tmp_path):
    kernels = tmp_path / "kernels.jsonl"
    kernels.write_text(json.dumps(RENAMED) + "\n")
    built = build(kernels, tmp_path / "image", [90])
    assert "sm_90: not built: test_triton_kernels:renamed: AttributeError" in built.stdout
    assert built.returncode == 1  # nothing at all could be built: this Python is not the image's


# vLLM's CPU build defines its Triton kernels only when Triton has a CPU backend; with one in
# name while vLLM's modules import, they are the same @triton.jit kernels as in the image.
COMPILE_RECORDED = """
import importlib, json, sys
import triton.backends
from worker_vllm.startup import triton_kernels
specs = triton_kernels.read(open(sys.argv[1]))
triton.backends.backends["cpu"] = triton.backends.backends["nvidia"]
for spec in specs:
    importlib.import_module(spec["function"].partition(":")[0])
del triton.backends.backends["cpu"]
print(json.dumps({"recorded": len(specs), "failed": triton_kernels.compile_for(90, specs)}))
"""


def test_the_recorded_list_compiles_with_the_pinned_vllm_and_triton(tmp_path):
    """What the image build does with builder/triton_kernels.jsonl, for one architecture: a vLLM
    upgrade that changes a kernel fails here, and the list is then recorded again."""
    done = subprocess.run([sys.executable, "-c", COMPILE_RECORDED, str(KERNELS)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"TRITON_CACHE_DIR": str(tmp_path), "PYTHONPATH": PYTHONPATH,
                                                         "TRITON_STORE_BINARY_ONLY": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == [] and result["recorded"] > 20
    assert len(list(tmp_path.iterdir())) == result["recorded"]
