"""A tiny random-weight Llama with a locally trained tokenizer: the worker's embedded default model.

It needs no download, builds in seconds, and is deterministic: the same code gives the same
files. vLLM serves it on CPU (head_dim 64, since the CPU attention kernel rejects 16).
"""

import json
import os
import shutil
from pathlib import Path

NAME = "tiny-random-llama"
VERSION = "1"  # bump when the files this module writes change

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>\n' + call['function'] | tojson + '\n</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
                  "<think>", "</think>"]

_WORDS = (
    "the a an of to in is was for on that with as by at from it be are this or which have "
    "model worker serverless runpod token stream batch request response engine server client "
    "hello world answer question please thanks yes no one two three four five six seven eight "
    "nine ten red green blue cat dog house tree river mountain city country music book paper "
    "write read think say tell know time day year week hour minute second first last next "
    "weather sunny rain cloud cold warm json name value number string true false null tool "
    "function call result error ok café naïve 東京 こんにちは 你好 emoji 🙂 🚀 ü ö ß é"
).split()


def _corpus(lines: int = 2000):
    """Deterministic pseudo-sentences over a small vocabulary, with some non-ASCII text."""
    state = 12345
    for _ in range(lines):
        words = []
        for _ in range(12):
            state = (1103515245 * state + 12345) % 2**31
            words.append(_WORDS[state % len(_WORDS)])
        yield " ".join(words) + ". {\"name\": \"" + words[0] + "\", \"value\": " + str(state % 100) + "}"


def build(path: Path) -> Path:
    """Write the model (config, safetensors, tokenizer, chat template) to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>", chat_template=CHAT_TEMPLATE,
                                   additional_special_tokens=SPECIAL_TOKENS[2:])
    fast.save_pretrained(path)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.do_sample = False
    model.save_pretrained(path, safe_serialization=True)
    (path / "tiny_model.json").write_text(json.dumps({"name": NAME, "version": VERSION}))
    return path


def default_path() -> Path:
    """Where the embedded model lives: $TINY_MODEL_DIR, else the user's cache folder."""
    if os.environ.get("TINY_MODEL_DIR"):
        return Path(os.environ["TINY_MODEL_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "runpod-worker-vllm" / f"{NAME}-v{VERSION}"


def ensure(path: Path | None = None) -> Path:
    """Build the model once; later calls return the cached folder."""
    path = path or default_path()
    marker = path / "tiny_model.json"
    if not marker.exists():
        tmp = build(path.with_name(f"{path.name}.tmp{os.getpid()}"))
        shutil.rmtree(path, ignore_errors=True)  # a half-built folder from an interrupted run
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


if __name__ == "__main__":
    print(ensure())
