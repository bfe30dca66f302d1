"""Checks on job input that vLLM does not make: text that is not Unicode, inputs too large to
tokenize in reasonable time, and stop lists that slow every decoding step."""

MAX_STOP_SEQUENCES = 64


def check_text(value, limit: int, field: str = "input") -> None:
    """Raise ValueError if a string in `value` holds a lone surrogate, or all of them together
    exceed `limit` characters."""
    total = 0
    pending = [(field, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            total += len(item)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{where}: holds {item[e.start]!r} at position {e.start}, a lone UTF-16 "
                                 "surrogate, which is not valid Unicode text") from None
        elif isinstance(item, dict):
            pending += [(f"{where}.{k}", v) for k, v in item.items()]
        elif isinstance(item, list):
            pending += [(f"{where}.{i}", v) for i, v in enumerate(item)]
    if total > limit:
        raise ValueError(f"{field}: {total} characters of text; the limit is {limit} (MAX_INPUT_CHARS)")


def check_stop(stop, field: str) -> None:
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise ValueError(f"{field}: {len(stop)} stop sequences; at most {MAX_STOP_SEQUENCES} are allowed")
