"""Which vLLM plugins load: vLLM 0.32 moved bitsandbytes and GGUF out of its core into plugins,
which the image installs, and vLLM loads every installed plugin in each of its processes.

Registering one imports vLLM's model loaders up front, and the GGUF plugin its kernels: 0.6 to
1.2 s of a start on CPU for bitsandbytes, 0.8 to 1.7 s for GGUF. So each loads only for a model
that uses it; VLLM_PLUGINS, where set, decides instead.
"""

import json
import os
import re
from collections.abc import Collection, Mapping
from importlib import metadata
from pathlib import Path

from worker_vllm import config

BITSANDBYTES = "bitsandbytes"  # vllm-bnb-plugin's entry point name
GGUF = "gguf"  # vllm-gguf-plugin's
# repo_id:quant_type (unsloth/Qwen3-8B-GGUF:Q4_K_M), as the GGUF plugin's gguf_utils.is_remote_gguf
# matches it; a Hub repo id has no ":", so nothing else answers to such a name.
HUB_GGUF = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*:[A-Za-z0-9_+-]+")


def installed() -> set[str]:
    """The names of the installed vLLM plugins, of every kind (VLLM_PLUGINS lists them all)."""
    points = metadata.entry_points()
    return {point.name for group in points.groups if group.startswith("vllm.") for point in points.select(group=group)}


def vllm_env(env: Mapping[str, str], plugins: Collection[str]) -> dict[str, str]:
    """VLLM_PLUGINS without the optional plugins the model does not use; {} when every one loads."""
    if "VLLM_PLUGINS" in env:  # the user's list decides: no model files to read
        return {}
    optional = {BITSANDBYTES: uses_bitsandbytes, GGUF: uses_gguf}
    unused = {name for name, uses in optional.items() if name in plugins and not uses(env)}
    if not unused:
        return {}
    return {"VLLM_PLUGINS": ",".join(sorted(set(plugins) - unused))}


def named(env: Mapping[str, str], plugin: str) -> bool:
    """Whether QUANTIZATION or LOAD_FORMAT asks for the plugin's method (each plugin's is its name)."""
    return plugin in (env.get("QUANTIZATION", "").lower(), env.get("LOAD_FORMAT", "").lower())


def uses_bitsandbytes(env: Mapping[str, str]) -> bool:
    if named(env, BITSANDBYTES):
        return True
    try:  # a local model: a path, the baked model or the volume's cached snapshot
        config_file = Path(config.model_name(env) or "") / "config.json"
        quantization = json.loads(config_file.read_text())["quantization_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(quantization, dict) and quantization.get("quant_method") == BITSANDBYTES


def uses_gguf(env: Mapping[str, str]) -> bool:
    """GGUF named, or a model the plugin takes for GGUF: a name ending in .gguf (a file, or
    repo_id/file.gguf on the Hub), repo_id:quant_type, local_dir:quant_type, or a file that starts
    with GGUF's magic bytes."""
    if named(env, GGUF):
        return True
    model = config.model_name(env) or ""
    if model.endswith(".gguf") or HUB_GGUF.fullmatch(model):
        return True
    folder, colon, _ = model.rpartition(":")
    if colon and os.path.isdir(folder):
        return True
    try:
        with open(model, "rb") as file:
            return file.read(4) == b"GGUF"
    except OSError:  # a folder, a Hub repo id, a name no path can have
        return False
