"""Keeps secrets out of logs and error text.

A secret is the value of any environment variable whose name contains TOKEN, KEY, SECRET or
PASSWORD, plus values registered at run time (such as serve.py's --api-key). `install` wraps
sys.stdout and sys.stderr, so it must run before vLLM or runpod create their log handlers.
"""

import os
import sys

SECRET_NAME_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
MASK = "***"
_secrets: list[str] = []  # longest first: a secret that holds another is masked whole


def is_secret_name(name: str) -> bool:
    # TOKENIZER and TOKENS (MAX_NUM_BATCHED_TOKENS) name no secret.
    name = name.upper().replace("TOKENIZER", "").replace("TOKENS", "")
    return any(part in name for part in SECRET_NAME_PARTS)


def add_secret(value: str | None) -> None:
    # Very short values ("1", "true") would mask ordinary text and protect nothing.
    if value and len(value) >= 6:
        if value not in _secrets:
            _secrets.append(value)
            _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every known secret replaced by ***."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


class _RedactingStream:
    """A text stream that masks secrets in everything written through it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install(env=os.environ) -> None:
    """Register the secrets in `env` and mask them in everything printed or logged from now on."""
    for name, value in env.items():
        if is_secret_name(name):
            add_secret(value)
    if not isinstance(sys.stdout, _RedactingStream):
        sys.stdout = _RedactingStream(sys.stdout)
        sys.stderr = _RedactingStream(sys.stderr)
