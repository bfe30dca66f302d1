"""Does each quantization the README promises serve? One `python src/handler.py --test_input` job
per method, on a model made here (no download), as the deploy issue asks for before the README's
quantization claims can rest on a run.

  bitsandbytes, fp8   quantized as the weights load (QUANTIZATION), from random bf16 shards;
  awq, gptq           4-bit checkpoints: the config names the method, and vLLM's dummy weights
                      fill its packed tensors (the kernels run; the text means nothing);
  gguf                the random bf16 shards written as a Q8_0 GGUF file next to the config and
                      tokenizer, served by the file's name alone (vllm-gguf-plugin).

  python bench/quant_check.py --out DIR [--config bench/llama-3.2-1b-config.json]
                              [--methods bitsandbytes fp8 awq gptq gguf] [--dtype bfloat16]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import make_model  # bench/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = {  # quantization_config of a 4-bit checkpoint, as AutoAWQ and AutoGPTQ write it
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
}
GGUF_TYPE = "Q8_0"  # one of the types gguf.quants quantizes, and the plugin's CUDA kernels run
JOB = {"input": {"prompt": "t11 t12 t13", "sampling_params": {"max_tokens": 8, "ignore_eos": True}}}


def model_for(method: str, config: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """The model folder for `method`, and the settings that ask for it."""
    folder = root / method
    if not folder.is_dir():
        make_model.make(folder, config)
        if method in CHECKPOINTS:
            settings = json.loads((folder / "config.json").read_text())
            settings["quantization_config"] = CHECKPOINTS[method]
            (folder / "config.json").write_text(json.dumps(settings, indent=2))
        else:
            make_model.write_weights(folder, random=True)  # quantized as they load, so they must exist
        if method == "gguf":
            make_model.write_gguf(folder, folder / f"model-{GGUF_TYPE}.gguf", GGUF_TYPE)
    if method in CHECKPOINTS:
        return folder, {"LOAD_FORMAT": "dummy"}
    if method == "gguf":  # the plugin takes the file for GGUF and the config and tokenizer from its folder
        return folder / f"model-{GGUF_TYPE}.gguf", {"LOAD_FORMAT": "auto"}
    return folder, {"QUANTIZATION": method, "LOAD_FORMAT": "auto"}


def check(method: str, config: Path, root: Path, dtype: str, log: Path) -> dict:
    folder, settings = model_for(method, config, root)
    env = os.environ | settings | {"MODEL_NAME": str(folder), "MAX_MODEL_LEN": "2048", "DTYPE": dtype}
    done = subprocess.run([sys.executable, str(ROOT / "src" / "handler.py"), "--test_input", json.dumps(JOB)],
                          env=env, capture_output=True, text=True, timeout=900, cwd="/tmp")
    log.write_text(done.stdout + done.stderr)
    lines = (done.stdout + done.stderr).splitlines()
    result = {"settings": settings, "exit_code": done.returncode,
              "startup": next((line.split("startup: ", 1)[1] for line in lines if "startup: process" in line), None),
              "output": next((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), None)}
    if done.returncode:
        result["failure"] = next((line for line in lines if line.startswith(("startup failed:", "job failed:"))),
                                 lines[-1:])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "llama-3.2-1b-config.json")
    parser.add_argument("--methods", nargs="+", default=["bitsandbytes", "fp8", "awq", "gptq", "gguf"])
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in args.methods:
        results[method] = check(method, args.config, Path("/tmp/quant-models"), args.dtype,
                                args.out / f"quant_{method}.log")
        print(method, json.dumps(results[method]), flush=True)
        (args.out / "quant.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
