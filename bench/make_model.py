"""A model folder for benchmarks: a config from bench/, and a word-level tokenizer with one word per
token id ("t0" ... "tN"), so that a prompt of N random words is exactly N tokens. Weights are not
needed: the engine runs with load_format=dummy."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def make(dest: Path, config: Path = HERE / "llama-3.1-8b-config.json") -> Path:
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


def prompt(length: int, seed: int, vocab: int = 128000) -> str:
    """`length` words that are `length` tokens, different for each seed."""
    state = seed * 2654435761 % 2**32 or 1
    words = []
    for _ in range(length):
        state = (1103515245 * state + 12345) % 2**31
        words.append(f"t{10 + state % (vocab - 100)}")  # clear of the special tokens at the ends
    return " ".join(words)


if __name__ == "__main__":
    print(make(Path(sys.argv[1]), *map(Path, sys.argv[2:3])))
