"""The native path through the real engine: streaming batches, full text, chat template, usage."""

import pytest
from transformers import AutoTokenizer

PROMPT = "The weather today is"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def tokenizer(worker):
    return AutoTokenizer.from_pretrained(worker.engine.args.model)


def fixed(max_tokens: int, **extra) -> dict:
    """Sampling params that always generate exactly max_tokens tokens."""
    return {"max_tokens": max_tokens, "ignore_eos": True, **extra}


def token_counts(items) -> list[int]:
    return [len(item["choices"][0]["tokens"]) for item in items]


def test_stream_batches_grow_1_3_9_and_usage_is_exact(run_job, tokenizer):
    items = run_job({"prompt": PROMPT, "sampling_params": fixed(20), "stream": True})
    # vLLM hands over the first token, then every 4 (the worker's STREAM_INTERVAL): 1, 4, 4, 4, 4, 3
    # tokens, which fill batches of at least 1, 3, 9 tokens, and the rest.
    assert [item["usage"]["output"] for item in items] == [1, 5, 17, 20]
    assert items[0]["usage"]["input"] == len(tokenizer(PROMPT).input_ids)
    assert [item["choices"][0]["finish_reason"] for item in items] == [None, None, None, "length"]
    assert all(len(item["choices"]) == 1 for item in items)


def test_batch_knobs_per_job(run_job):
    items = run_job({"prompt": PROMPT, "sampling_params": fixed(10), "stream": True,
                     "min_batch_size": 2, "max_batch_size": 4, "batch_size_growth_factor": 2})
    assert [item["usage"]["output"] for item in items] == [5, 9, 10]  # of outputs of 1, 4, 4, 1 tokens


def test_first_token_arrives_alone(run_job):
    items = run_job({"prompt": PROMPT, "sampling_params": fixed(5), "stream": True})
    assert items[0]["usage"]["output"] == 1


def test_non_stream_yields_one_object_with_the_full_text(run_job, tokenizer):
    stream = run_job({"prompt": PROMPT, "sampling_params": fixed(12, seed=3, temperature=0.8), "stream": True})
    (item,) = run_job({"prompt": PROMPT, "sampling_params": fixed(12, seed=3, temperature=0.8)})
    assert item["choices"][0]["text"] == "".join(t for i in stream for t in i["choices"][0]["tokens"])
    assert item["choices"][0]["finish_reason"] == "length"
    assert item["usage"] == {"input": len(tokenizer(PROMPT).input_ids), "output": 12}


def test_usage_counts_every_choice_with_n(run_job):
    items = run_job({"prompt": PROMPT, "sampling_params": fixed(6, n=3, temperature=1.0), "stream": True})
    assert items[-1]["usage"]["output"] == 18
    finished = {c["index"]: c["finish_reason"] for item in items for c in item["choices"] if c["finish_reason"]}
    assert finished == {0: "length", 1: "length", 2: "length"}
    (item,) = run_job({"prompt": PROMPT, "sampling_params": fixed(6, n=3, temperature=1.0)})
    assert [c["index"] for c in item["choices"]] == [0, 1, 2]
    assert item["usage"]["output"] == 18


def test_messages_use_the_models_chat_template(run_job, tokenizer):
    (item,) = run_job({"messages": MESSAGES, "sampling_params": fixed(4)})
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert item["usage"]["input"] == len(expected)


def test_apply_chat_template_wraps_a_prompt_as_a_user_message(run_job, tokenizer):
    (item,) = run_job({"prompt": PROMPT, "apply_chat_template": True, "sampling_params": fixed(4)})
    expected = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                             add_generation_prompt=True, tokenize=True)["input_ids"]
    assert item["usage"]["input"] == len(expected)


def test_max_tokens_defaults_to_512_not_16(run_job):
    (item,) = run_job({"prompt": PROMPT, "sampling_params": {"ignore_eos": True}})
    assert item["usage"]["output"] == 512


@pytest.mark.parametrize("job_input, fragment", [
    ({"prompt": PROMPT, "sampling_params": {"temperature": -1}}, "temperature"),
    ({"prompt": PROMPT, "sampling_params": {"max_tokens": 0}}, "max_tokens"),
    ({"prompt": PROMPT, "sampling_params": {"no_such_param": 1}}, "no_such_param"),
    ({"prompt": PROMPT, "messages": MESSAGES}, "exactly one of 'prompt'"),
    ({"prompt": PROMPT, "stream": "true"}, "stream: Input should be a valid boolean"),
    ({"prompt": "word " * 5000, "sampling_params": {"max_tokens": 4}}, "maximum context length"),
])
def test_bad_input_fails_the_job_with_a_message(run_job, job_input, fragment):
    (item,) = run_job(job_input)
    assert fragment in item["error"]


def test_logit_bias_takes_token_ids_as_json_object_keys(run_job, tokenizer):
    """JSON keys are strings: {"42": 100} is token 42, as in OpenAI's API."""
    token = tokenizer.encode(" dog", add_special_tokens=False)[0]
    (item,) = run_job({"prompt": "hello", "sampling_params": {"max_tokens": 4, "temperature": 0,
                                                               "logit_bias": {str(token): 100}}})
    assert item["choices"][0]["text"] == tokenizer.decode([token] * 4)
