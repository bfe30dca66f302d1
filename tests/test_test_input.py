"""`python src/handler.py --test_input ...` really runs the job, unlike runpod 1.10's local mode."""

import json

import pytest

from helpers import local_env, run_test_input
from worker_vllm.local import test_input


def test_test_input_flag_wins_over_the_file(tmp_path):
    (tmp_path / "test_input.json").write_text('{"input": {"prompt": "from file"}}')
    job = test_input.test_job(["--test_input", '{"input": {"prompt": "from flag"}}'], tmp_path)
    assert job["input"] == {"prompt": "from flag"}
    assert test_input.test_job([], tmp_path)["input"] == {"prompt": "from file"}
    assert test_input.test_job([], tmp_path / "nowhere") is None


@pytest.mark.parametrize("text, fragment", [("{not json", "not valid JSON"), ('{"prompt": "x"}', '"input" object')])
def test_bad_test_input_says_what_is_expected(tmp_path, text, fragment):
    with pytest.raises(SystemExit, match=fragment):
        test_input.test_job(["--test_input", text], tmp_path)


def test_prints_each_item_as_it_arrives_and_exits_0(handler, engine_loop, capsys):
    job = {"id": "local", "input": {"prompt": "hi", "stream": True,
                                    "sampling_params": {"max_tokens": 5, "ignore_eos": True}}}
    assert engine_loop.run(test_input.run(handler, job)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["usage"]["output"] for line in lines] == [1, 5]  # outputs of 1 and 4 tokens


def test_a_failed_job_exits_1_with_the_error(handler, engine_loop, capsys):
    job = {"id": "local", "input": {"prompt": "hi", "sampling_params": {"temperature": -1}}}
    assert engine_loop.run(test_input.run(handler, job)) == 1
    assert "temperature" in capsys.readouterr().err


@pytest.mark.process
def test_the_real_command_exits_1_when_the_job_fails(tmp_path):
    """The whole CLI, in a fresh process with its own engine: a failing job is exit code 1. With none
    of the tests' settings either: the embedded model's defaults start it on any CPU."""
    job = '{"input": {"prompt": "hi", "sampling_params": {"max_tokens": 4, "temperature": -1}}}'
    proc = run_test_input(job, tmp_path, local_env(unset=("VLLM_CPU_KVCACHE_SPACE", "DTYPE")))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "job failed: sampling_params: temperature must be non-negative" in proc.stderr
