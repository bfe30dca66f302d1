"""A baked image's model: builder/download_model.py against a Hub-shaped server on 127.0.0.1, then
the worker started from its manifest, offline, serving the model under its repo id."""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
from aiohttp import web

from helpers import ROOT, local_env, run_test_input
from worker_vllm.startup import baked, plugins, tiny_model

REPO, SHA = "acme/tiny-chat", "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """The Hub routes snapshot_download uses: model info, the file tree, and file resolve."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.served = files, []
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def info(self, request):
        return web.json_response({"id": REPO, "modelId": REPO, "sha": SHA, "private": False, "gated": False,
                                  "siblings": [{"rfilename": name} for name in self.files]})

    async def tree(self, request):
        return web.json_response([{"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                                  for name, body in self.files.items()])

    async def resolve(self, request):
        name = request.match_info["path"]
        if name not in self.files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        body = self.files[name]
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(len(body))})
        self.served.append(name)
        return web.Response(body=body, headers=headers)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def bake(tmp, files: dict[str, bytes], model: str) -> list[str]:
    """builder/download_model.py against a FakeHub holding `files`, into tmp/models; the files served."""
    hub = FakeHub(files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_bakedSecret0042"}
    proc = subprocess.run([sys.executable, str(ROOT / "builder" / "download_model.py"), "--model", model,
                           "--dest", str(tmp / "models")], env=env, capture_output=True, text=True, timeout=120)
    hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hf_bakedSecret0042" not in proc.stdout + proc.stderr
    return hub.served


@pytest.fixture(scope="module")
def baked_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baked")
    model = tiny_model.build(tmp / "source")
    files = {f.name: f.read_bytes() for f in model.iterdir()}
    # What a careless download also takes: duplicate checkpoints in other formats.
    files |= {"pytorch_model.bin": b"duplicate", "original/consolidated.pth": b"duplicate"}
    return tmp / "models", bake(tmp, files, REPO)


def test_downloads_only_what_vllm_loads(baked_models):
    models, served = baked_models
    wanted = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "chat_template.jinja", "tiny_model.json"}
    assert sorted(served) == sorted(wanted)
    assert sorted(f.name for f in (models / REPO).iterdir() if not f.name.startswith(".")) == sorted(wanted)


def test_manifest(baked_models):
    manifest = json.loads((baked_models[0] / "manifest.json").read_text())
    assert manifest == {"model": REPO, "revision": SHA, "path": str(baked_models[0] / REPO),
                        "quantization": None, "tokenizer": None, "tokenizer_path": None}


def test_manifest_sets_the_local_path_and_the_repo_id(baked_models):
    manifest = str(baked_models[0] / "manifest.json")
    env = baked.apply({"BAKED_MODEL_MANIFEST": manifest, "MODEL_REVISION": "main"})
    assert env["MODEL_NAME"] == str(baked_models[0] / REPO) and "MODEL_REVISION" not in env
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == REPO
    assert baked.apply({"BAKED_MODEL_MANIFEST": manifest, "MODEL_NAME": REPO})["MODEL_NAME"] == str(baked_models[0] / REPO)
    assert baked.apply({"BAKED_MODEL_MANIFEST": manifest, "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "mine"})[
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "mine"
    other = {"BAKED_MODEL_MANIFEST": manifest, "MODEL_NAME": "org/other"}
    assert baked.apply(other) == other


@pytest.mark.parametrize("model, served", [
    (f"{REPO}-GGUF:Q8_0", ["tiny-chat-Q8_0.gguf"]),
    (f"{REPO}-GGUF:Q4_K_M", ["Q4_K_M/tiny-chat-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/tiny-chat-Q4_K_M-00002-of-00002.gguf"]),
    (f"{REPO}-GGUF/tiny-chat-Q8_0.gguf", ["tiny-chat-Q8_0.gguf"]),
])
def test_a_gguf_model_bakes_only_its_files_and_is_served_as_gguf(tmp_path, model, served):
    files = {"tiny-chat-Q8_0.gguf": b"GGUF8", "README.md": b"#", "tiny-chat-Q2_K.gguf": b"GGUF2",
             "Q4_K_M/tiny-chat-Q4_K_M-00001-of-00002.gguf": b"GGUF4", "Q4_K_M/tiny-chat-Q4_K_M-00002-of-00002.gguf": b"GGUF4"}
    assert sorted(bake(tmp_path, files, model)) == served
    path = f"{REPO}-GGUF/{served[0]}"  # the file itself, or the first shard, as the GGUF plugin picks
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["model"] == model and manifest["path"] == str(tmp_path / "models" / path)
    env = baked.apply({"BAKED_MODEL_MANIFEST": str(tmp_path / "models" / "manifest.json")})
    assert plugins.uses_gguf(env) and env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == model


@pytest.mark.process
def test_worker_serves_the_baked_model_offline_under_its_repo_id(baked_models, tmp_path):
    env = local_env({"BAKED_MODEL_MANIFEST": str(baked_models[0] / "manifest.json"), "HF_HUB_OFFLINE": "1",
                     "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "1024"})
    proc = run_test_input(json.dumps({"input": {"openai_route": "/v1/models"}}), tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"object": "list"')))
    assert [m["id"] for m in models["data"]] == [REPO]
