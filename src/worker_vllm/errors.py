"""One-line error messages a person can act on: the field, the value, what is allowed."""

from pydantic import ValidationError

from worker_vllm import redact


def describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "input"
            got = "" if err["type"] in ("missing", "value_error") else f" (got {_short(err.get('input'))})"
            parts.append(f"{field}: {err['msg']}{got}")
        return redact.redact("; ".join(parts))
    return redact.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
