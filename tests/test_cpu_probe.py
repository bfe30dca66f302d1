"""The runpod SDK's CPU probe runs during start-up, and the SDK's import reuses its answer."""

import json
import subprocess
import sys

from helpers import ROOT

PROBE_THEN_IMPORT_SDK = """
import json, cpuinfo
from worker_vllm.startup import cpu_probe
cpu_probe.start().join()
from runpod.serverless.utils import rp_debugger
calls = cpuinfo.get_cpu_info.cache_info()
print(json.dumps({"probes": calls.misses, "reused": calls.hits, "sdk_cpu": rp_debugger.PROCESSOR,
                  "probed_cpu": cpuinfo.get_cpu_info().get("brand_raw")}))
"""


def test_the_sdk_import_reuses_the_probe_that_ran_during_start_up():
    done = subprocess.run([sys.executable, "-c", PROBE_THEN_IMPORT_SDK], cwd=ROOT / "src", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["probes"], result["reused"]) == (1, 1)
    assert result["sdk_cpu"] == result["probed_cpu"]
