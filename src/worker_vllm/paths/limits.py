"""Checks on job input that vLLM does not make: text that is not Unicode, inputs too large to
tokenize in reasonable time, nesting too deep for vLLM's own checks, and stop lists that slow every
decoding step."""

import asyncio
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

MAX_STOP_SEQUENCES = 64
INT64 = (-(2**63), 2**63 - 1)  # what torch's generator takes as a seed (vLLM's OpenAI layer checks it too)
MAX_VALUES = 100_000  # strings, lists and objects: 625k two-letter message parts took vLLM 8 s to render
MAX_DEPTH = 32  # JSON nesting: vLLM's own walks of extra_args and the like recurse without a bound
Model = TypeVar("Model", bound=BaseModel)


async def validated(model: type[Model], job_input: dict[str, Any], max_chars: int) -> Model:
    """`job_input` checked (check_text) and validated as `model`, in a thread: Runpod takes inputs of
    up to 20 MB, and walking one on the event loop would stall every stream the worker serves."""
    def check() -> Model:
        check_text(job_input, max_chars)
        return model.model_validate(job_input)

    return await asyncio.to_thread(check)


def check_text(value: Any, limit: int, field: str = "input") -> None:
    """Raise ValueError if a string in `value` holds a lone surrogate, all of them together exceed
    `limit` characters, `value` holds more than MAX_VALUES strings, lists and objects (numbers, such
    as token ids, are not counted), or nests deeper than MAX_DEPTH.

    Stops at the first problem; paths are spelled out only for the error, so a large input costs
    no memory beyond itself."""
    total = values = 0
    stack: list[tuple[str, Iterator[tuple[Any, Any]]]] = [("", iter([(field, value)]))]
    while stack:
        where, items = stack[-1]
        for key, item in items:
            if isinstance(item, str | dict | list):
                values += 1
                if values > MAX_VALUES:
                    raise ValueError(f"{field}: more than {MAX_VALUES} strings, lists and objects; "
                                     "join the text of message parts, or split the job")
            if isinstance(item, str):
                total += len(item)
                if total > limit:
                    raise ValueError(f"{field}: more than {limit} characters of text (MAX_INPUT_CHARS)")
                if not item.isascii():
                    _check_unicode(item, f"{where}{key}")
            elif isinstance(item, dict | list):
                if len(stack) > MAX_DEPTH:
                    raise ValueError(f"{where}{key}: nested more than {MAX_DEPTH} levels deep")
                children = item.items() if isinstance(item, dict) else enumerate(item)
                stack.append((f"{where}{key}.", iter(children)))
                break
        else:
            stack.pop()


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: holds {text[e.start]!r} at position {e.start}, a lone UTF-16 surrogate, "
                         "which is not valid Unicode text") from None


def check_n(n: Any, limit: int, field: str) -> None:
    """The operator's bound on the sequences one job may ask for (MAX_N): each is a whole generation."""
    if isinstance(n, int) and n > limit:
        raise ValueError(f"{field}: {n} sequences asked for; at most {limit} are allowed (MAX_N)")


def check_stop(stop: Any, field: str) -> None:
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise ValueError(f"{field}: {len(stop)} stop sequences; at most {MAX_STOP_SEQUENCES} are allowed")
