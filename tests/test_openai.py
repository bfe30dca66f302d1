"""The official OpenAI client against the local endpoint (src/serve.py) on the real engine."""

import json

import openai
import pytest

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(endpoint):
    with openai.OpenAI(base_url=f"{endpoint}/openai/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny-random-llama"]


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


def test_model_may_be_omitted(endpoint):
    import requests

    response = requests.post(f"{endpoint}/openai/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3}, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == "tiny-random-llama"


def test_completions(client):
    reply = client.completions.create(model="tiny-random-llama", prompt="Once upon a time", max_tokens=6,
                                      extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 6 and reply.choices[0].text


def test_tool_call_required(client):
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, tools=[WEATHER_TOOL],
                                           tool_choice="required", max_tokens=200)
    calls = reply.choices[0].message.tool_calls
    assert calls and reply.choices[0].finish_reason == "tool_calls"
    for call in calls:
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)


def test_tool_call_named_with_a_strict_schema(client):
    tool = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, tools=[tool], max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"],
              "additionalProperties": False}
    reply = client.chat.completions.create(model="tiny-random-llama", messages=CHAT, max_tokens=200,
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
