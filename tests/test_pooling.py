"""A pooling model (the tiny Llama converted to an embedding model): the worker serves vLLM's
pooling routes, which vLLM registers for that task only."""

import json

import pytest

from helpers import local_env, run_test_input

pytestmark = pytest.mark.process  # a worker process with an engine of its own


def test_embeddings_through_the_openai_path(tmp_path):
    """Also the worker's default stream interval of 4, which vLLM 0.32 cannot apply to pooling
    requests: the first embedding request killed the engine before the adapter set it to 1."""
    env = local_env({"CONVERT": "embed", "ENFORCE_EAGER": "true"})
    job = {"input": {"openai_route": "/v1/embeddings", "openai_input": {"input": ["hello", "world"]}}}
    proc = run_test_input(json.dumps(job), tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert [e["index"] for e in answer["data"]] == [0, 1] and len(answer["data"][0]["embedding"]) == 128
    assert "route=/v1/embeddings prompt_tokens=" in proc.stdout + proc.stderr
