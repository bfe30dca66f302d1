"""One real vLLM engine (CPU, embedded tiny model) for the whole test session, and the markers
that group the tests by what they need: nothing, the session engine (`engine`), or worker
processes of their own (`process`, set by those modules)."""

import json
import os
import uuid
from pathlib import Path

import pytest

from helpers import EngineLoop
from worker_vllm.jobs import InFlight
from worker_vllm.startup import caches, tiny_model

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# On CPU, the tiny model in float32 in every engine the tests start, the session's and those of
# worker processes: in bf16, vLLM 0.32 runs its AMX attention kernel on CPUs that have AMX, and
# that kernel dies with SIGILL in a process that never asked Linux for AMX (a 1-token prompt does it).
# The GPU is looked up in the driver's files: torch.cuda.is_available() before vLLM is imported
# starts CUDA in this process, and vLLM's forked engine process then cannot use it.
if caches.gpu_name() == "cpu":
    os.environ.setdefault("DTYPE", "float32")
os.environ.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
for marker in ("RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB"):
    os.environ.pop(marker, None)

ENGINE_FIXTURES = {"worker", "engine_loop", "run_job", "handler", "endpoint"}


def pytest_collection_modifyitems(items):
    for item in items:
        if ENGINE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.engine)


# The embedded model's own chat template, plus a thinking mode a request can switch on: without
# {"thinking": true} it renders exactly as the model's template does.
THINKING_TEMPLATE = tiny_model.CHAT_TEMPLATE + "{% if add_generation_prompt and thinking %}{{ '<think>\n' }}{% endif %}"
LORA_NAME = "tiny-lora"

# The session engine's settings, as a user would set them in the endpoint's environment.
# Features that need an engine flag are switched on here, so one engine serves every test.
SESSION_ENV = {
    "ENFORCE_EAGER": "true",
    "MAX_MODEL_LEN": "2048",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny-random-llama",
    "ENABLE_AUTO_TOOL_CHOICE": "true",
    "TOOL_CALL_PARSER": "hermes",
    # Reasons only when a request asks (chat_template_kwargs {"thinking": true}), like DeepSeek V3.
    "REASONING_PARSER": "deepseek_v3",
    "CUSTOM_CHAT_TEMPLATE": THINKING_TEMPLATE,
    "ENABLE_FORCE_INCLUDE_USAGE": "true",
    "ENABLE_LORA": "true",
    "MAX_LORA_RANK": "8",
}


@pytest.fixture(scope="session")
def engine_loop():
    loop = EngineLoop()
    yield loop
    loop.stop()


def write_tiny_lora(path: Path, rank: int = 8) -> Path:
    """A LoRA adapter for the tiny model (q_proj and v_proj of each layer), small random weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model.ensure())
    hidden, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for proj, out in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=generator) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, rank, generator=generator) * 0.1
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(tiny_model.ensure())}))
    return path


@pytest.fixture(scope="session")
def lora_env(tmp_path_factory) -> dict:
    """LORA_MODULES for the session engine: one static adapter built at session start."""
    adapter = write_tiny_lora(tmp_path_factory.mktemp("lora") / LORA_NAME)
    return {"LORA_MODULES": json.dumps([{"name": LORA_NAME, "path": str(adapter)}])}


@pytest.fixture(scope="session")
def worker(engine_loop, lora_env):
    """The started worker, serving the embedded tiny model."""
    from worker_vllm import worker as worker_module

    env = {k: v for k, v in os.environ.items() if k != "MODEL_NAME"} | SESSION_ENV | lora_env
    started = worker_module.start(env)
    engine_loop.run(started.engine.ready())
    yield started
    started.engine.shutdown()


@pytest.fixture(scope="session")
def handler(worker):
    """The runpod SDK's handler on the session's worker."""
    from worker_vllm.router import make_handler

    return make_handler(worker, InFlight())


@pytest.fixture
def run_job(handler, engine_loop):
    """Run one job through the real handler; returns the list of yielded items."""

    def run(job_input: dict, job_id: str | None = None) -> list:
        job = {"id": job_id or f"test-{uuid.uuid4().hex[:12]}", "input": job_input}
        return engine_loop.collect(handler(job))

    return run


@pytest.fixture(scope="session")
def endpoint(worker, handler, engine_loop):
    """The local endpoint's app (src/serve.py) on 127.0.0.1 (a free port), on the session engine;
    yields its base URL."""
    from aiohttp import web

    from worker_vllm.local import endpoint as local_endpoint

    async def start():
        runner = web.AppRunner(local_endpoint.create_app(handler, worker.concurrency, runsync_timeout=60))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = engine_loop.run(start())
    yield f"http://127.0.0.1:{port}/v2/local"
    engine_loop.run(runner.cleanup())
