"""A model baked into the image by builder/download_model.py.

The worker serves it from its local copy, so no Hub call is made for it, under its repo id, so
clients keep sending model="org/name". Other Hub downloads (a draft model, a LoRA) still work.
"""

import json
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MANIFEST = "/models/manifest.json"


def apply(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the baked model filled in; unchanged if there is none, or MODEL_NAME names another."""
    manifest_path = Path(env.get("BAKED_MODEL_MANIFEST") or DEFAULT_MANIFEST)
    env = dict(env)
    if not manifest_path.is_file():
        return env
    baked = json.loads(manifest_path.read_text())
    if env.get("MODEL_NAME") not in (None, "", baked["model"]):
        return env
    env["MODEL_NAME"] = baked["path"]
    env.pop("MODEL_REVISION", None)  # the local copy is that revision
    env.setdefault("OPENAI_SERVED_MODEL_NAME_OVERRIDE", baked["model"])
    if baked.get("tokenizer_path") and env.get("TOKENIZER_NAME") in (None, "", baked["tokenizer"]):
        env["TOKENIZER_NAME"] = baked["tokenizer_path"]
    if baked.get("quantization"):
        env.setdefault("QUANTIZATION", baked["quantization"])
    return env
