"""`python src/serve.py` as a user runs it, with engine features switched on by environment
variables: API key, served name, reasoning parser, static LoRA, custom chat template, forced usage."""

import json
import os
import socket
import subprocess
import sys
import time

import openai
import pytest
import requests
import torch
from safetensors.torch import save_file

import tiny_model
from fake_runpod import ROOT, wait_for

API_KEY = "sk-local-test-key-0123"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\nCUSTOM {{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "user", "content": "hello"}]


def tiny_lora(path, rank: int = 8):
    """A LoRA adapter for the tiny model (q_proj and v_proj), with small random weights."""
    path.mkdir()
    torch.manual_seed(1)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, 128) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(128, rank) * 0.1
    save_file(tensors, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(tiny_model.ensure())}))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB")} | {
        "MODEL_NAME": str(tiny_model.ensure()), "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "my-model",
        "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "1024", "REASONING_PARSER": "deepseek_r1",
        "ENABLE_LORA": "true", "MAX_LORA_RANK": "8",
        "LORA_MODULES": json.dumps([{"name": "tiny-lora", "path": str(tiny_lora(tmp / "lora"))}]),
        "CUSTOM_CHAT_TEMPLATE": TEMPLATE, "ENABLE_FORCE_INCLUDE_USAGE": "true"}
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "serve.py"), "--port", str(port), "--api-key", API_KEY],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v2/local"

    def up():
        try:
            return requests.get(f"{base}/health", timeout=2).status_code == 401
        except requests.ConnectionError:
            return proc.poll() is not None

    assert wait_for(up, 300) and proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
    yield base, tmp / "serve.log"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server[0]}/openai/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


def test_requests_without_the_api_key_are_refused(server):
    assert requests.post(f"{server[0]}/run", json={"input": {"prompt": "x"}}, timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(f"{server[0]}/health", headers=headers, timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server[0]}/openai/v1", api_key="wrong", max_retries=0).models.list()


def test_served_name_and_lora_adapter_are_listed(client):
    assert [m.id for m in client.models.list().data] == ["my-model", "tiny-lora"]


def test_lora_adapter_serves(client):
    reply = client.chat.completions.create(model="tiny-lora", messages=CHAT, max_tokens=5,
                                           extra_body={"ignore_eos": True})
    assert reply.model == "tiny-lora" and reply.usage.completion_tokens == 5


def test_reasoning_parser_splits_reasoning_from_content(client):
    # The random model never closes its thinking, so deepseek_r1 reads all of it as reasoning.
    reply = client.chat.completions.create(model="my-model", messages=CHAT, max_tokens=8,
                                           extra_body={"ignore_eos": True})
    message = reply.choices[0].message
    assert message.reasoning and not message.content


def test_custom_chat_template_renders_messages(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    job = {"input": {"openai_route": "/tokenize", "openai_input": {"messages": CHAT}}}
    tokens = requests.post(f"{server[0]}/runsync", json=job, headers=headers, timeout=60).json()["output"][0]["tokens"]
    job["input"]["openai_input"] = {"tokens": tokens}
    job["input"]["openai_route"] = "/detokenize"
    text = requests.post(f"{server[0]}/runsync", json=job, headers=headers, timeout=60).json()["output"][0]["prompt"]
    assert "CUSTOM hello" in text


def test_forced_usage_in_every_stream(client):
    chunks = list(client.chat.completions.create(model="my-model", messages=CHAT, max_tokens=4, stream=True,
                                                 extra_body={"ignore_eos": True}))
    assert any(c.usage and c.usage.completion_tokens == 4 for c in chunks)


def test_api_key_stays_out_of_the_log(server, client):
    client.models.list()
    time.sleep(0.2)
    assert API_KEY not in server[1].read_text()
