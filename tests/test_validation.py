"""Bad input, through the real handler and engine: each job fails with a message a person can act
on (the field, the value, what is allowed), and the worker keeps serving."""

import logging

import pytest

from worker_vllm.paths import limits

CHAT = [{"role": "user", "content": "hi"}]
NESTED_900: dict = {}
for _ in range(900):
    NESTED_900 = {"x": NESTED_900}


def openai(route="/v1/chat/completions", **body):
    return {"openai_route": route, "openai_input": {"messages": CHAT, "max_tokens": 2, **body}}


NATIVE_CASES = [
    ("not an object", "hello", '"prompt" or "messages"'),
    ("no prompt", {}, '"prompt" or "messages"'),
    ("prompt not a string", {"prompt": 5}, "prompt: Input should be a valid string (got 5)"),
    ("prompt a list", {"prompt": ["a"]}, "prompt: Input should be a valid string"),
    ("messages a string", {"messages": "hi"}, "messages: Input should be a valid list"),
    ("empty messages", {"messages": []}, "messages: List should have at least 1 item"),
    ("message not an object", {"messages": ["hi"]}, "messages.0: Input should be a valid dictionary"),
    ("message without role", {"messages": [{"content": "hi"}]}, "messages.0.role: Field required"),
    ("role that does not exist", {"messages": [{"role": "wizard", "content": "hi"}]},
     "messages.0.role: Input should be 'system', 'user', 'assistant', 'tool' or 'developer' (got 'wizard')"),
    ("content a number", {"messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
    ("prompt and messages", {"prompt": "a", "messages": CHAT}, "give exactly one of 'prompt'"),
    ("sampling_params a list", {"prompt": "a", "sampling_params": [1]},
     "sampling_params: Input should be a valid dictionary (got [1])"),
    ("sampling_params a string", {"prompt": "a", "sampling_params": "greedy"}, "sampling_params: Input should be a valid dictionary"),
    ("negative max_tokens", {"prompt": "a", "sampling_params": {"max_tokens": -5}}, "max_tokens must be at least 1, got -5"),
    ("huge max_tokens", {"prompt": "a", "sampling_params": {"max_tokens": 10**9}},
     "max_tokens=1000000000 cannot be greater than max_model_len=2048"),
    ("max_tokens a word", {"prompt": "a", "sampling_params": {"max_tokens": "ten"}},
     "sampling_params.max_tokens: Expected `int | null`, got `str`"),
    ("negative temperature", {"prompt": "a", "sampling_params": {"temperature": -1}}, "temperature must be non-negative, got -1"),
    ("temperature a word", {"prompt": "a", "sampling_params": {"temperature": "hot"}}, "sampling_params.temperature: Expected `float`"),
    ("top_p above 1", {"prompt": "a", "sampling_params": {"top_p": 2}}, "top_p must be in (0, 1]"),
    ("n = 0", {"prompt": "a", "sampling_params": {"n": 0}}, "n must be at least 1, got 0"),
    ("seed a word", {"prompt": "a", "sampling_params": {"seed": "abc"}}, "sampling_params.seed: Expected `int | null`"),
    ("unknown sampling param", {"prompt": "a", "sampling_params": {"temprature": 0.5}},
     "unknown field 'temprature'; did you mean 'temperature'?"),
    ("1,000 stop strings", {"prompt": "a", "sampling_params": {"stop": ["x"] * 1000}},
     f"1000 stop sequences; at most {limits.MAX_STOP_SEQUENCES} are allowed"),
    ('stream "true"', {"prompt": "a", "stream": "true"}, "stream: Input should be a valid boolean (got 'true')"),
    ('apply_chat_template "yes"', {"prompt": "a", "apply_chat_template": "yes"}, "apply_chat_template: Input should be a valid boolean"),
    ("max_batch_size 0", {"prompt": "a", "max_batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
    ("growth factor below 1", {"prompt": "a", "batch_size_growth_factor": 0.5},
     "batch_size_growth_factor: Input should be greater than or equal to 1"),
    ("negative request_timeout", {"prompt": "a", "request_timeout": -1}, "request_timeout: Input should be greater than 0"),
    ("chat_template_kwargs a string", {"messages": CHAT, "chat_template_kwargs": "x"},
     "chat_template_kwargs: Input should be a valid dictionary"),
    ("prompt longer than max_model_len", {"prompt": "word " * 3000, "sampling_params": {"max_tokens": 2}},
     "maximum context length is 2048 tokens"),
    ("lone surrogate in prompt", {"prompt": "ok \ud800 ok"}, "input.prompt: holds '\\ud800' at position 3, a lone UTF-16 surrogate"),
    ("lone surrogate in a message", {"messages": [{"role": "user", "content": "\udfff"}]},
     "input.messages.0.content: holds '\\udfff' at position 0"),
    ("10 MB prompt", {"prompt": "x" * 10_000_000}, "input: more than 4000000 characters of text (MAX_INPUT_CHARS)"),
    ("a million tiny strings", {"prompt": "a", "extra": ["ab"] * 3_000_000}, "more than 100000 strings, lists and objects"),
    ("625k message parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"}] * 625_000}]},
     "input: more than 100000 strings, lists and objects; join the text of message parts"),
    ("growth factor Infinity", {"prompt": "a", "stream": True, "batch_size_growth_factor": float("inf")},
     "batch_size_growth_factor: Input should be a finite number"),
    ("request_timeout NaN", {"prompt": "a", "request_timeout": float("nan")}, "request_timeout: Input should be a finite number"),
    ("seed of 2**70", {"prompt": "a", "sampling_params": {"seed": 2**70}},
     "sampling_params.seed: 1180591620717411303424 is not a 64-bit integer"),
    ("extra_args 900 deep", {"prompt": "a", "sampling_params": {"extra_args": NESTED_900}},
     "input.sampling_params.extra_args.x.x"),
    ("n over MAX_N", {"prompt": "a", "sampling_params": {"n": 16384}},
     "sampling_params.n: 16384 sequences asked for; at most 32 are allowed (MAX_N)"),
    ("logit_bias key not a token id", {"prompt": "a", "sampling_params": {"logit_bias": {"the": 5}}}, "logit_bias"),
]

OPENAI_CASES = [
    ("route with ..", {"openai_route": "/v1/../admin", "openai_input": {}}, 404, "openai_route '/v1/../admin' is not supported; use one of: /v1/chat/completions"),
    ("route with //", {"openai_route": "//v1/models"}, 404, "is not supported"),
    ("route with @", {"openai_route": "@127.0.0.1/v1/models"}, 404, "is not supported"),
    ("route a full URL", {"openai_route": "http://127.0.0.1:9/v1/chat/completions"}, 404, "is not supported"),
    ("admin route while off", {"openai_route": "/v1/load_lora_adapter", "openai_input": {}}, 404, "is not supported"),
    ("route not a string", {"openai_route": 5}, 400, "openai_route: Input should be a valid string"),
    ("openai_input a string", {"openai_route": "/v1/chat/completions", "openai_input": "hi"}, 400,
     "openai_input: Input should be a valid dictionary (got 'hi')"),
    ("openai_input a list", {"openai_route": "/v1/chat/completions", "openai_input": [1]}, 400,
     "openai_input: Input should be a valid dictionary"),
    ("chat without messages", {"openai_route": "/v1/chat/completions", "openai_input": {}}, 400, "messages"),
    ("negative temperature", openai(temperature=-1), 400, "temperature"),
    ("huge max_tokens", openai(max_tokens=10**9), 400, "cannot be greater than max_model_len=2048"),
    ("n = 0", openai(n=0), 400, "n"),
    ("1,000 stop strings", openai(stop=["x"] * 1000), 400, "openai_input.stop: 1000 stop sequences"),
    ("lone surrogate", openai(messages=[{"role": "user", "content": "\ud800"}]), 400,
     "input.openai_input.messages.0.content: holds '\\ud800'"),
    ("prompt longer than max_model_len", openai(route="/v1/completions", prompt="word " * 3000), 400,
     "maximum context length is 2048 tokens"),
    ("unknown model", openai(model="no-such-model"), 404, "The model `no-such-model` does not exist"),
    ("n over MAX_N", openai(n=16384), 400, "openai_input.n: 16384 sequences asked for; at most 32 are allowed"),
    ("growth factor Infinity", {**openai(stream=True), "batch_size_growth_factor": float("inf")}, 400,
     "batch_size_growth_factor: Input should be a finite number"),
    ("extra_args 900 deep", openai(extra_args=NESTED_900), 400, "nested more than 32 levels deep"),
    ("seed of 2**70", openai(seed=2**70), 400, "seed"),
]


@pytest.mark.parametrize("job_input, fragment", [c[1:] for c in NATIVE_CASES], ids=[c[0] for c in NATIVE_CASES])
def test_bad_native_input(run_job, job_input, fragment):
    (item,) = run_job(job_input)
    assert fragment in item["error"]
    assert "\n" not in item["error"] and "Traceback" not in item["error"]


@pytest.mark.parametrize("job_input, status, fragment", [c[1:] for c in OPENAI_CASES], ids=[c[0] for c in OPENAI_CASES])
def test_bad_openai_input(run_job, job_input, status, fragment):
    (item,) = run_job(job_input)
    assert set(item) == {"error"}
    assert item["error"]["code"] == status
    assert fragment in item["error"]["message"]


def test_the_table_is_large():
    assert len(NATIVE_CASES) + len(OPENAI_CASES) >= 40


def test_unknown_top_level_key_is_a_warning_not_an_error(run_job, caplog):
    with caplog.at_level(logging.WARNING, logger="worker.native"):
        (item,) = run_job({"prompt": "a", "sampling_params": {"max_tokens": 2, "ignore_eos": True}, "temprature": 0})
    assert item["usage"]["output"] == 2
    assert "ignored unknown input keys ['temprature']" in caplog.text


def test_unknown_openai_field_is_left_to_vllm(run_job):
    (item,) = run_job(openai(not_an_openai_field=1))
    assert item["object"] == "chat.completion"


def test_the_worker_keeps_serving_after_bad_input(run_job):
    for case in NATIVE_CASES[:5]:
        run_job(case[1])
    (item,) = run_job({"prompt": "a", "sampling_params": {"max_tokens": 3, "ignore_eos": True}})
    assert item["usage"]["output"] == 3
