"""The official OpenAI client against the local endpoint (src/serve.py) on the real engine, with
the features the session engine switches on by environment (tests/conftest.py SESSION_ENV)."""

import json

import openai
import pytest
import requests

from conftest import LORA_NAME
from worker_vllm.startup import tiny_model

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
# "strict": vLLM holds the arguments to the schema; without it, the random model may write any JSON.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,30}$"}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(endpoint):
    with openai.OpenAI(base_url=f"{endpoint}/openai/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_models_are_the_served_name_and_the_lora_adapter(client):
    # Served under OPENAI_SERVED_MODEL_NAME_OVERRIDE, not the file path of the model.
    assert [m.id for m in client.models.list().data] == ["tiny-random-llama", LORA_NAME]


def test_chat(client):
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=8,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices


def test_stream_sends_the_first_token_alone_then_four_or_more_at_a_time(client):
    # The worker's STREAM_INTERVAL default; a request may ask for more (vLLM's stream_interval). vLLM merges
    # the outputs a reader has not taken yet, so on a fast engine (a GPU) a chunk may hold two intervals.
    def tokens_per_chunk(**extra):
        stream = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=14, stream=True,
                                                logprobs=True, extra_body={"ignore_eos": True, **extra})
        return [len(c.choices[0].logprobs.content) for c in stream if c.choices and c.choices[0].logprobs]

    for interval, extra in ((4, {}), (6, {"stream_interval": 6})):
        chunks = tokens_per_chunk(**extra)
        assert chunks[0] == 1 and len(chunks) > 1 and sum(chunks) == 14, chunks
        assert all(n >= interval for n in chunks[1:-1]), chunks  # the last one holds what is left


def test_usage_is_forced_into_every_stream(client):
    # ENABLE_FORCE_INCLUDE_USAGE: the client did not ask for usage, and gets it.
    chunks = list(client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=4,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 4


def test_model_may_be_omitted(endpoint):
    response = requests.post(f"{endpoint}/openai/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3}, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == "tiny-random-llama"


def test_completions(client):
    reply = client.completions.create(model="tiny-random-llama", prompt="Once upon a time", max_tokens=6,
                                      extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 6 and reply.choices[0].text


def test_completion_streams_come_four_tokens_at_a_time_too(client):
    stream = client.completions.create(model="tiny-random-llama", prompt="Once upon a time", max_tokens=9, stream=True,
                                       logprobs=1, extra_body={"ignore_eos": True})
    chunks = [len(c.choices[0].logprobs.tokens) for c in stream if c.choices and c.choices[0].logprobs]
    assert chunks[0] == 1 and sum(chunks) == 9 and all(n >= 4 for n in chunks[1:-1]), chunks


def test_tool_call_required(client):
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, tools=[WEATHER_TOOL],
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=200, seed=11)
    # One call, then the turn ends: the random model would otherwise call again until max_tokens.
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_tool_call_named_with_a_strict_schema(client):
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, tools=[WEATHER_TOOL],
                                           max_tokens=200, seed=11,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_tool_call_streams_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model="tiny-random-llama", messages=CHAT, tools=[WEATHER_TOOL], max_tokens=200, seed=11, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert isinstance(json.loads(arguments)["city"], str)


def test_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"],
              "additionalProperties": False}
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=200, seed=5,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(reply.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def test_logprobs_n_and_seed(client):
    def ask():
        return client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=5, n=2,
                                              seed=1234, temperature=1.0, logprobs=True, top_logprobs=2,
                                              extra_body={"ignore_eos": True})

    first, second = ask(), ask()
    assert len(first.choices) == 2
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    tokens = first.choices[0].logprobs.content
    assert len(tokens) == 5 and len(tokens[0].top_logprobs) == 2


def test_stop(client):
    reply = client.completions.create(model="tiny-random-llama", prompt="The", max_tokens=200, temperature=1.0,
                                      seed=3, stop=[" ", "e", "a", "o"])
    assert reply.choices[0].finish_reason == "stop"
    assert not any(s in reply.choices[0].text for s in [" ", "e", "a", "o"])


def test_bad_parameter_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-random-llama", messages=CHAT, temperature=-1)
    assert "temperature" in str(err.value)


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert "gpt-4o" in str(err.value)


def test_stream_error_before_the_first_event_is_an_http_error(client):
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model="tiny-random-llama", messages=CHAT, stream=True, n=0))


def test_responses(client):
    reply = client.responses.create(model="tiny-random-llama", input="hello", max_output_tokens=6)
    assert reply.status in ("completed", "incomplete") and reply.usage.output_tokens <= 6


def test_unsupported_route_lists_the_supported_ones(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.audio.speech.create(model="tiny-random-llama", voice="alloy", input="hi")
    assert "/v1/chat/completions" in str(err.value)


def test_embeddings_on_a_generative_model_is_a_404_that_says_why(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="tiny-random-llama", input="hello")
    assert "'/v1/embeddings' is not served for this model" in err.value.message


def test_admin_routes_are_off(endpoint):
    response = requests.post(f"{endpoint}/openai/v1/load_lora_adapter",
                             json={"lora_name": "x", "lora_path": "/tmp"}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["param"] == "openai_route"


def test_lora_adapter_changes_the_output(client):
    def first_token_logprobs(model):
        reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=1, temperature=0,
                                          logprobs=5)
        assert reply.model == model
        return reply.choices[0].logprobs.top_logprobs[0]

    assert first_token_logprobs(LORA_NAME) != first_token_logprobs("tiny-random-llama")


# The template opens <think>; banning </think> keeps the random model from closing it (a sampled
# </think> would turn the rest into content), so everything it writes is reasoning.
NEVER_CLOSE_THINK = {str(tiny_model.SPECIAL_TOKENS.index("</think>")): -100}


def test_reasoning_parser_splits_reasoning_from_content(client):
    def ask(**kwargs):
        reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=8,
                                               logit_bias=NEVER_CLOSE_THINK,
                                               extra_body={"ignore_eos": True, **kwargs})
        return reply.choices[0].message

    plain = ask()
    assert plain.content and getattr(plain, "reasoning", None) is None
    thinking = ask(chat_template_kwargs={"thinking": True})
    assert thinking.reasoning and not thinking.content


def test_reasoning_streams_as_reasoning_deltas(client):
    chunks = list(client.chat.completions.create(
        model="tiny-random-llama", messages=CHAT, max_tokens=6, stream=True, logit_bias=NEVER_CLOSE_THINK,
        extra_body={"ignore_eos": True, "chat_template_kwargs": {"thinking": True}}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas)
    assert not "".join(d.content or "" for d in deltas)


def test_custom_chat_template_renders_messages(run_job):
    def rendered(**kwargs) -> str:
        (tokens,) = run_job({"openai_route": "/tokenize", "openai_input": {"messages": CHAT, **kwargs}})
        (text,) = run_job({"openai_route": "/detokenize", "openai_input": {"tokens": tokens["tokens"]}})
        return text["prompt"]

    # Only CUSTOM_CHAT_TEMPLATE knows the "thinking" switch; the model's own template has none.
    assert rendered(chat_template_kwargs={"thinking": True}).endswith("<|im_start|>assistant\n<think>\n")
    assert rendered().endswith("<|im_start|>assistant\n")


def test_streamed_text_is_the_whole_text_with_multibyte_characters_intact(client):
    def ask(stream: bool) -> str:
        reply = client.completions.create(model="tiny-random-llama", prompt="café 你好", max_tokens=80, seed=7,
                                          temperature=1.0, stream=stream, extra_body={"ignore_eos": True})
        return "".join(c.choices[0].text for c in reply if c.choices) if stream else reply.choices[0].text

    whole = ask(stream=False)
    assert any(ord(ch) > 127 and ch != "\ufffd" for ch in whole), "pick a seed whose text has a multi-byte character"
    assert ask(stream=True) == whole
