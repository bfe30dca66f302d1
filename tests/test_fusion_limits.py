"""vLLM's all-reduce fusion limits, handed to vLLM so that TP > 1 does not start CUDA before its fork.

The fork itself needs two GPUs: bench/cuda_init.py checks it there (docs/benchmarks.md).
"""

import sys

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms.interface import DeviceCapability

from worker_vllm import engine

HOPPER = DeviceCapability(9, 0)


def test_the_limits_are_vllms_own_read_without_importing_their_module():
    module = engine.FUSION_SIZES[0]
    imported = module in sys.modules
    limits = engine.fusion_size_limits()
    assert limits[HOPPER.to_int()][2] > 0  # MB for TP=2 on an H100/H200
    assert all(isinstance(size, int | float) for by_tp in limits.values() for size in by_tp.values())
    assert (module in sys.modules) == imported  # its import is what starts CUDA


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(engine.current_platform, "get_device_capability", lambda device_id=0: HOPPER)


def test_vllm_gets_the_limit_for_this_gpu_and_tensor_parallel_size(hopper):
    args = AsyncEngineArgs(model="m", tensor_parallel_size=2)
    engine.set_fusion_size_limit(args)
    assert args.compilation_config.pass_config.fi_allreduce_fusion_max_size_mb == engine.fusion_size_limits()[90][2]


@pytest.mark.parametrize("args", [AsyncEngineArgs(model="m", tensor_parallel_size=1),  # no all-reduce
                                  AsyncEngineArgs(model="m", tensor_parallel_size=3)])  # no limit in vLLM's table
def test_nothing_is_set_where_vllm_would_not_look_a_limit_up(hopper, args):
    engine.set_fusion_size_limit(args)
    assert args.compilation_config.pass_config.fi_allreduce_fusion_max_size_mb is None


def test_a_limit_the_settings_give_stays(hopper):
    args = AsyncEngineArgs(model="m", tensor_parallel_size=2)
    args.compilation_config.pass_config.fi_allreduce_fusion_max_size_mb = 8
    engine.set_fusion_size_limit(args)
    assert args.compilation_config.pass_config.fi_allreduce_fusion_max_size_mb == 8


def test_without_a_gpu_nothing_is_set():
    args = AsyncEngineArgs(model="m", tensor_parallel_size=2)
    engine.set_fusion_size_limit(args)  # the CPU platform has no capability
    assert args.compilation_config.pass_config.fi_allreduce_fusion_max_size_mb is None
