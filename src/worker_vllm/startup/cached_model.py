"""A model Runpod caches on its hosts (an endpoint's "cached model").

Runpod mounts it under /runpod-volume/huggingface-cache/hub in Hugging Face's cache layout, and has
been seen to write the repo's folder in lower case (models--qwen--qwen3-8b), where huggingface_hub
looks for models--Qwen--Qwen3-8B and, not finding it, downloads the whole model again. The worker
finds the folder whatever its case and serves the snapshot from its path, so no Hub call is made
for it, under the repo id, so clients keep sending model="org/name".
"""

from collections.abc import Mapping
from pathlib import Path

from worker_vllm import config


def apply(env: Mapping[str, str], hub_cache: Path) -> dict[str, str]:
    """`env` with MODEL_NAME set to the cached snapshot of its repo, if `hub_cache` holds one."""
    env = dict(env)
    repo = env.get("MODEL_NAME") or ""
    if not config.hub_repo_not_here(repo):
        return env
    snapshot = find(hub_cache, repo, env.get("MODEL_REVISION") or "main")
    if snapshot is None:
        return env
    env["MODEL_NAME"] = str(snapshot)
    env.pop("MODEL_REVISION", None)  # the snapshot is that revision
    env.setdefault("OPENAI_SERVED_MODEL_NAME_OVERRIDE", repo)
    return env


def find(hub_cache: Path, repo: str, revision: str) -> Path | None:
    """The snapshot folder of `repo` at `revision` (a branch, tag or commit) in a Hugging Face hub
    cache, the repo's folder matched without regard to case; None if it is not there whole."""
    wanted = "models--" + repo.replace("/", "--").lower()
    try:
        folder = next((f for f in hub_cache.iterdir() if f.name.lower() == wanted), None)
    except OSError:  # no cache there
        return None
    if folder is None:
        return None
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None
