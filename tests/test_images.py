"""The images without a Docker engine: hadolint, COPY sources, the shared build script, and the
Hub listing's variables against the ones the worker reads."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT
from worker_vllm import config, engine

DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.baked"]
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
HUB_ENV = {item["key"]: item["input"] for item in HUB["config"]["env"]}
# Read outside config.py: by huggingface_hub, the logging set-up and the runpod SDK.
READ_ELSEWHERE = {"HF_TOKEN", "LOG_LEVEL", "RUNPOD_LOG_LEVEL", "BAKED_MODEL_MANIFEST"}
# The values Runpod's API takes for allowedCudaVersions: a host's CUDA version is the newest its
# driver supports. Add new ones as Runpod lists them.
RUNPOD_CUDA_VERSIONS = ["11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0"]


def test_every_copy_source_exists():
    sources = [src for path in DOCKERFILES for line in path.read_text().splitlines()
               if line.startswith("COPY ") for src in line.split()[1:-1] if not src.startswith("--")]
    assert sources
    assert [s for s in sources if not (ROOT / s).exists()] == []


def test_the_dockerfile_runs_the_scripts_ci_runs():
    # tests/test_model_infos.py runs the second one, tests/test_triton_kernels.py the third.
    assert ("RUN bash /builder/check_source.sh /src \\\n    && python3 /builder/model_infos.py \\\n"
            "    && python3 /builder/triton_cache.py\n") in (ROOT / "Dockerfile").read_text()
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "builder" / "check_source.sh"), str(ROOT / "src")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_secret_in_args_or_env():
    for path in DOCKERFILES:
        for line in path.read_text().splitlines():
            if line.startswith(("ARG", "ENV")):
                assert "HF_TOKEN" not in line and "SECRET" not in line, line
    assert "--mount=type=secret,id=HF_TOKEN" in (ROOT / "Dockerfile.baked").read_text()


def test_weights_stay_outside_the_volume_mount():
    text = (ROOT / "Dockerfile.baked").read_text()
    assert "--dest /models" in text and "/runpod-volume" not in text.split("RUN", 1)[1]


def test_hub_variables_are_ones_the_worker_reads_with_the_same_defaults():
    parser = engine.arg_parser()
    names = config.env_names(parser)
    worker_fields = {f.alias: f for f in config.WorkerSettings.model_fields.values()}
    assert [k for k in HUB_ENV if k not in names and k not in worker_fields and k not in READ_ELSEWHERE] == []
    for key, spec in HUB_ENV.items():
        if "default" not in spec:
            continue
        if key in worker_fields:
            assert spec["default"] == worker_fields[key].default, key
        elif key in names:
            default = config.WORKER_DEFAULTS.get(names[key].dest, names[key].default)
            if default == argparse.SUPPRESS:  # vLLM sets nothing unless asked
                continue
            if spec["type"] == "number" and isinstance(default, str):  # a worker default, as the env var's text
                default = float(default)
            if spec["type"] == "boolean" and default is None:  # unset: vLLM reads it as off
                default = False
            assert spec["default"] == default, key


def test_documented_variables_are_in_the_hub_listing():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.M))
    assert len(documented) > 15
    assert sorted(documented - set(HUB_ENV)) == []


def test_hub_tests_are_jobs_the_handler_routes():
    from worker_vllm.router import path_for

    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]
    assert {path_for(t["input"]).__module__ for t in tests} == {"worker_vllm.paths.native", "worker_vllm.paths.openai"}


def test_the_readme_says_what_the_image_installs():
    """Downloads go through hf_xet: hf_transfer is neither installed nor switched on (huggingface_hub
    2.x ignores it and warns at every start), and the README says so."""
    requirements = (ROOT / "requirements.txt").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "hf-transfer" not in requirements and "HF_HUB_ENABLE_HF_TRANSFER" not in dockerfile
    assert "HF_XET_HIGH_PERFORMANCE=1" in dockerfile and "HF_XET_HIGH_PERFORMANCE=1" in readme
    assert "so the image does not install it" in readme
    # vllm==0.32.0's CUDA wheel requires fastsafetensors and instanttensor: the README must not deny them.
    assert "vllm==0.32.0" in requirements and "does not ship them" not in readme
    assert "requires `fastsafetensors` and `instanttensor`" in readme
    # The bitsandbytes and GGUF plugins and their libraries, at the versions the image installs.
    for package in ("vllm-bnb-plugin", "bitsandbytes", "vllm-gguf-plugin", "gguf"):
        version = re.search(rf"^{package}==(\S+)$", requirements, re.M)
        assert version and f"`{package}` {version.group(1)}" in readme, package


def test_the_hub_allows_every_cuda_version_the_base_image_runs_on():
    """A host runs the image when its driver supports the base image's CUDA or newer."""
    major, minor = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.", (ROOT / "Dockerfile").read_text(), re.M).groups()
    runs_on = [v for v in RUNPOD_CUDA_VERSIONS if tuple(map(int, v.split("."))) >= (int(major), int(minor))]
    assert HUB["config"]["allowedCudaVersions"] == runs_on
    assert f"built on CUDA {major}.{minor}" in (ROOT / "README.md").read_text()
