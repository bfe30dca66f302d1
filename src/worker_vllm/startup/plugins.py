"""Which vLLM plugins load: vLLM 0.32 moved bitsandbytes out of its core into vllm-bnb-plugin,
which the image installs, and vLLM loads every installed plugin in each of its processes.

Registering that plugin imports vLLM's model loaders up front: 0.6 to 1.2 s of a start on CPU.
So it loads only for a model that uses it (QUANTIZATION or LOAD_FORMAT bitsandbytes, or a local
model whose config.json was quantized with it); VLLM_PLUGINS, where set, decides instead.
"""

import json
from collections.abc import Collection, Mapping
from importlib import metadata
from pathlib import Path

BITSANDBYTES = "bitsandbytes"  # vllm-bnb-plugin's entry point name


def installed() -> set[str]:
    """The names of the installed vLLM plugins, of every kind (VLLM_PLUGINS lists them all)."""
    points = metadata.entry_points()
    return {point.name for group in points.groups if group.startswith("vllm.") for point in points.select(group=group)}


def vllm_env(env: Mapping[str, str], plugins: Collection[str]) -> dict[str, str]:
    """VLLM_PLUGINS without the bitsandbytes plugin, unless the model needs it; {} when it loads."""
    if BITSANDBYTES not in plugins or "VLLM_PLUGINS" in env or uses_bitsandbytes(env):
        return {}
    return {"VLLM_PLUGINS": ",".join(sorted(set(plugins) - {BITSANDBYTES}))}


def uses_bitsandbytes(env: Mapping[str, str]) -> bool:
    if BITSANDBYTES in (env.get("QUANTIZATION", "").lower(), env.get("LOAD_FORMAT", "").lower()):
        return True
    try:  # a local model: a path, the baked model or the volume's cached snapshot
        quantization = json.loads((Path(env.get("MODEL_NAME", "")) / "config.json").read_text())["quantization_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(quantization, dict) and quantization.get("quant_method") == BITSANDBYTES
