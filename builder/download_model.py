"""Downloads what vLLM loads of one Hugging Face model, and writes a manifest the worker reads.

Dockerfile.baked runs it at build time. It fetches the config and tokenizer files and one weight
format (safetensors when the repo has them), never the duplicate checkpoints under original/.
A GGUF model (org/repo:Q4_K_M, or org/repo/file.gguf) brings only its GGUF file, or that type's
shards. HF_TOKEN comes from the build secret /run/secrets/HF_TOKEN, or the environment.
"""

import argparse
import json
import os
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

CONFIG_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
WEIGHT_FORMATS = ["*.safetensors", "*.bin", "*.pt", "*.pth"]  # in order of preference
TOKENIZER_FILES = ["tokenizer*", "*.model", "*.tiktoken", "vocab*", "merges.txt", "special_tokens_map.json",
                   "chat_template*", "*.jinja", "config.json"]
SKIP = ["original/*"]
SECRET = Path("/run/secrets/HF_TOKEN")


def hf_token() -> str | None:
    return (SECRET.read_text().strip() if SECRET.exists() else os.environ.get("HF_TOKEN")) or None


def weight_pattern(files: list[str]) -> str:
    """The first weight format the repo has, outside original/."""
    for pattern in WEIGHT_FORMATS:
        if any(fnmatch(f, pattern) and not fnmatch(f, SKIP[0]) for f in files):
            return pattern
    raise SystemExit(f"no weights vLLM can load ({', '.join(WEIGHT_FORMATS)}) among: {', '.join(files)}")


def gguf_files(model: str) -> tuple[str, list[str]] | None:
    """For a GGUF reference, its repo and the patterns of the file(s) to bake; None for a repo id."""
    if model.endswith(".gguf"):
        if model.count("/") < 2:
            raise SystemExit(f"--model {model}: a GGUF file on the Hub is org/repo/file.gguf")
        org, name, file = model.split("/", 2)
        return f"{org}/{name}", [file]
    repo, colon, quant_type = model.partition(":")
    if not colon:
        return None
    # The GGUF plugin's own patterns for a repo's file of one type, sharded or not.
    return repo, [f"{folder}*-{quant_type}{shard}.gguf" for folder in ("", "*/") for shard in ("", "-*")]


def first_gguf(folder: Path, patterns: list[str]) -> Path:
    """The file the worker serves: as the GGUF plugin picks one, unsharded first, then the first shard."""
    found = sorted({str(f.relative_to(folder)) for pattern in patterns for f in folder.glob(pattern)},
                   key=lambda name: (name.count("-"), name))
    if not found:
        raise SystemExit(f"no GGUF file in {folder} matches {', '.join(patterns)}")
    return folder / found[0]


def fetch(repo: str, revision: str, dest: Path, patterns: list[str], token: str | None,
          sha: str | None = None) -> tuple[Path, str]:
    """Download the files of `repo` that match `patterns` into dest/<repo>; the folder and commit
    (`sha`: the commit `revision` resolved to, when the caller asked the Hub already)."""
    sha = sha or HfApi().model_info(repo, revision=revision, token=token).sha
    path = snapshot_download(repo, revision=sha, local_dir=dest / repo, allow_patterns=patterns,
                             ignore_patterns=SKIP, token=token)
    return Path(path), sha


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face repo id, or a GGUF reference")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--tokenizer", default="", help="a tokenizer repo, if not the model's")
    parser.add_argument("--quantization", default="")
    parser.add_argument("--dest", type=Path, default=Path("/models"))
    args = parser.parse_args(argv)

    token = hf_token()
    gguf = gguf_files(args.model)
    if gguf:
        repo, patterns = gguf
        path, sha = fetch(repo, args.revision, args.dest, CONFIG_FILES + patterns, token)
        served_path = str(first_gguf(path, patterns))
    else:
        info = HfApi().model_info(args.model, revision=args.revision, token=token)
        files = [s.rfilename for s in info.siblings]
        path, sha = fetch(args.model, args.revision, args.dest, CONFIG_FILES + [weight_pattern(files)], token, info.sha)
        served_path = str(path)
    manifest = {"model": args.model, "revision": sha, "path": served_path,
                "quantization": args.quantization or None, "tokenizer": args.tokenizer or None, "tokenizer_path": None}
    if args.tokenizer:
        manifest["tokenizer_path"] = str(fetch(args.tokenizer, "main", args.dest, TOKENIZER_FILES, token)[0])
    (args.dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))
    return manifest


if __name__ == "__main__":
    main()
