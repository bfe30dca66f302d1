"""Routing by input shape, through the real handler and engine."""

import gc
import json

from worker_vllm.paths import native, openai
from worker_vllm.router import path_for


def test_routes_by_input_shape():
    assert path_for({"prompt": "x"}) is native.run
    assert path_for({"messages": []}) is native.run
    assert path_for({"openai_route": "/v1/models", "openai_input": {}}) is openai.run
    assert path_for({"text": "x"}) is None
    assert path_for("a string") is None


def test_unknown_shape_fails_with_what_is_expected(run_job):
    (item,) = run_job({"text": "hello"})
    assert '"prompt" or "messages"' in item["error"] and '"openai_route"' in item["error"]


def test_openai_models(run_job):
    (item,) = run_job({"openai_route": "/v1/models"})
    assert item["data"][0]["id"] == "tiny-random-llama"  # then the LoRA adapters


def test_openai_chat_completion(run_job):
    (item,) = run_job({"openai_route": "/v1/chat/completions",
                       "openai_input": {"model": "tiny-random-llama", "max_tokens": 5, "ignore_eos": True,
                                        "messages": [{"role": "user", "content": "hi"}]}})
    assert item["object"] == "chat.completion"
    assert item["usage"]["completion_tokens"] == 5


def test_openai_completion_defaults_to_512_tokens_not_16(run_job):
    (item,) = run_job({"openai_route": "/v1/completions",
                       "openai_input": {"prompt": "Once upon", "ignore_eos": True}})
    assert item["object"] == "text_completion"
    assert item["usage"]["completion_tokens"] == 512


def test_openai_stream_items_are_whole_sse_events(run_job):
    items = run_job({"openai_route": "/v1/chat/completions",
                     "openai_input": {"max_tokens": 12, "ignore_eos": True, "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]}})
    assert all(isinstance(item, str) and item.startswith("data: ") and item.endswith("\n\n") for item in items)
    events = [e for item in items for e in item.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    # vLLM's outputs hold the first token, then 4 at a time (STREAM_INTERVAL): 1, 4, 4, 3 tokens,
    # one event each; the usage event (forced in the session) counts them all.
    assert sum(1 for c in chunks if c["choices"]) >= 4
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    # The role event rides with the first token, alone; later items group more events.
    assert items[0].count("data: ") == 2
    assert len(items) < len(events)


def test_openai_error_is_an_openai_error_object_and_valid_json(run_job):
    (item,) = run_job({"openai_route": "/v1/chat/completions",
                       "openai_input": {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}})
    assert item["error"]["code"] == 404 and item["error"]["type"] == "NotFoundError"
    # The runpod SDK stores str(error) as the job's error: it must be JSON, not a Python repr.
    assert json.loads(str(item["error"]))["code"] == 404


def test_the_start_up_heap_is_frozen_once_the_app_is_ready(worker):
    # As `vllm serve` does: full garbage collections then skip vLLM's start-up objects; they walked
    # them mid-stream before (bench/profile_summary.py: a quarter of the serving process's time).
    assert worker.engine.app is not None
    assert gc.get_freeze_count() > 100_000
