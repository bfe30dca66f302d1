"""A model folder for benchmarks: a config from bench/, and a word-level tokenizer with one word per
token id ("t0" ... "tN"), so that a prompt of N random words is exactly N tokens. Speed needs no
weights (the engine runs with load_format=dummy); `--weights` also writes all-zero safetensors
shards, for measuring weight loading.

  python bench/make_model.py DIR [--config FILE] [--weights]
"""

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_CONFIG = HERE / "llama-3.1-8b-config.json"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def make(dest: Path, config: Path = DEFAULT_CONFIG) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    settings = json.loads(config.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(settings, indent=2))
    vocab = {f"t{i}": i for i in range(settings["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=f"t{settings['bos_token_id']}",
                                   eos_token=f"t{settings['eos_token_id']}", chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(dest)
    return dest


def write_weights(dest: Path, shard_bytes: int = 4 << 30, random: bool = False) -> list[Path]:
    """Zero bf16 weights for every parameter of the config's model, in shards of about `shard_bytes`;
    `random`: small random ones instead (quantizing zeros divides by a zero scale)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(dest), dtype=torch.bfloat16)
    shards, shard, size = [], {}, 0
    for name, param in list(model.state_dict().items()) + [(None, None)]:
        if shard and (name is None or size + param.numel() * 2 > shard_bytes):
            shards.append(dest / f"model-{len(shards) + 1:05d}.safetensors")
            save_file(shard, shards[-1], metadata={"format": "pt"})
            shard, size = {}, 0
        if name is not None:
            shard[name] = (torch.randn(param.shape) * 0.02).to(torch.bfloat16) if random else \
                torch.zeros(param.shape, dtype=torch.bfloat16)
            size += param.numel() * 2
    return shards


def write_gguf(folder: Path, dest: Path, qtype: str = "Q8_0") -> Path:
    """The folder's safetensors weights (a Llama) as one GGUF file, laid out as vllm-gguf-plugin
    reads it: each tensor named by gguf's name map for llama, matrices quantized to `qtype` with
    gguf.quants (on the CPU), the rest float32. Q and K are not permuted as llama.cpp's converter
    does. The file holds no config or tokenizer: the plugin takes both from the folder the file
    sits in, else from TOKENIZER_NAME."""
    import gguf
    from safetensors.torch import load_file

    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    quant = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(dest, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    for shard in sorted(folder.glob("*.safetensors")):
        for name, tensor in load_file(shard).items():
            base, _, suffix = name.rpartition(".")  # model.layers.0.self_attn.q_proj, weight
            gguf_name, data = f"{names.get_name(base)}.{suffix}", tensor.float().numpy()
            if data.ndim == 2:
                writer.add_tensor(gguf_name, gguf.quants.quantize(data, quant), raw_dtype=quant)
            else:
                writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def prompt(length: int, seed: int, vocab: int = 128000) -> str:
    """`length` words that are `length` tokens, different for each seed."""
    state = seed * 2654435761 % 2**32 or 1
    words = []
    for _ in range(length):
        state = (1103515245 * state + 12345) % 2**31
        words.append(f"t{10 + state % (vocab - 100)}")  # clear of the special tokens at the ends
    return " ".join(words)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a model config (bench/*-config.json)")
    parser.add_argument("--weights", action="store_true", help="also write all-zero bf16 safetensors shards")
    args = parser.parse_args()
    folder = make(args.dest, args.config)
    if args.weights:
        print(*write_weights(folder), sep="\n")
    print(folder)
