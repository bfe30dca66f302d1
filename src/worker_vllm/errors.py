"""One-line error messages a person can act on: the field, the value, what is allowed; and for a
start-up failure, the cause and the fix."""

import errno
import re
from collections.abc import Sequence

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


# Start-up failures. Matched by class name and by message, as huggingface_hub 2.4, transformers 5
# and vLLM 0.32 word them (torch and vLLM are not imported here). vLLM and transformers wrap the
# Hub's errors (OSError("... is not a valid git identifier ..."), ValueError("Invalid repository
# ID ...")), so the whole chain is searched.
KV_CACHE_TOO_SMALL = (
    "KV cache is needed, which is larger than the available KV cache memory",  # vLLM 0.32
    "is larger than the maximum number of tokens that can be stored in KV cache",  # older vLLM
)
OUT_OF_MEMORY = ("CUDA out of memory", "CUDA error: out of memory", "HIP out of memory")
# vLLM's engine core and GPU workers are processes of their own: the worker's exception only says
# that they failed ("Engine core initialization failed. See root cause above. ...").
CAUSE_IN_ANOTHER_PROCESS = ("See root cause above", "See stack trace for root cause",
                            "See stack trace (above) for the root cause")
# A model that needs one of vLLM's plugins that did not load (startup/plugins.py decides which load):
# QUANTIZATION, LOAD_FORMAT, and for GGUF a .gguf file read as a Hugging Face folder.
BITSANDBYTES_NOT_LOADED = ("Unknown quantization method: bitsandbytes", "Load format `bitsandbytes` is not supported")
GGUF_NOT_LOADED = ("Unknown quantization method: gguf", "Load format `gguf` is not supported",
                   ".gguf' is not a valid JSON file")


def startup_hint(exc: BaseException) -> str | None:
    """What to change when `exc`, or an exception it wraps, stopped the start: a fix, or None."""
    chain = _chain(exc)
    for e in chain:  # the Hub's own errors first: they know the repo
        if hint := _hint_by_class(e, chain):
            return hint
    for e in chain:
        if hint := _hint_by_message(str(e)):
            return hint
    return None


def startup_failure(exc: BaseException, noted: Sequence[dict] = ()) -> str:
    """The one line after `startup failed: `: what failed, and how to fix it where that is known.
    `noted`: the exceptions vLLM's engine processes logged as they failed (startup.phases records
    them), used when `exc` says the cause is there."""
    if noted and any(s in str(exc) for s in CAUSE_IN_ANOTHER_PROCESS):
        # The engine process's own failure only points at its model worker's, when that one failed.
        causes = [n for n in noted if not any(s in n["message"] for s in CAUSE_IN_ANOTHER_PROCESS)] or list(noted)
        hinted = [(n, _hint_by_message(n["message"])) for n in causes]
        cause, hint = next(((n, h) for n, h in hinted if h), hinted[0])
        return with_hint(f"{cause['type']} in vLLM's engine process: {cause['message']}", hint)
    return with_hint(f"{type(exc).__name__}: {describe(exc)}", startup_hint(exc))


def with_hint(text: str, hint: str | None) -> str:
    if not hint:
        return text
    return f"{text}{' ' if text.endswith(('.', '!', '?')) else '. '}Fix: {hint}"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: causes, contexts, and the errors inside a pydantic ValidationError."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(found) < 32:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is f for f in found):
            continue
        found.append(e)
        todo += [e.__cause__, e.__context__]
        if isinstance(e, ValidationError):  # vLLM's config classes are pydantic dataclasses
            todo += [err.get("ctx", {}).get("error") for err in e.errors()]
    return found


def _names(e: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(e).__mro__}


def _hint_by_class(e: BaseException, chain: list[BaseException]) -> str | None:
    names, repo = _names(e), getattr(e, "repo_id", None) or "the model's repo"
    if "RevisionNotFoundError" in names:
        return f"pin MODEL_REVISION to a branch, tag or commit that exists in {repo}"
    if "GatedRepoError" in names:
        return (f"{repo} is gated: accept its terms on huggingface.co, and set HF_TOKEN to a token of an "
                "account that has access")
    if "RepositoryNotFoundError" in names:
        return (f"check MODEL_NAME: {repo} is not a model on huggingface.co, or is private or gated: then set "
                "HF_TOKEN to a token with access to it")
    if "HFValidationError" in names and "Repo id must" in str(e):
        return "check MODEL_NAME: it is neither a folder that exists nor a Hugging Face repo id (org/name)"
    if "OutOfMemoryError" in names:  # torch.OutOfMemoryError
        return _OOM_HINT
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        offline = any("OfflineModeIsEnabled" in _names(c) or "outgoing traffic has been disabled" in str(c)
                      for c in chain)
        return _OFFLINE_HINT if offline else _UNREACHABLE_HINT
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return _DISK_FULL_HINT
    return None


_OOM_HINT = ("out of GPU memory: lower GPU_MEMORY_UTILIZATION or MAX_NUM_SEQS (vLLM needs room outside its "
             "share for activations and CUDA graphs); if the weights do not fit, use more GPUs "
             "(TENSOR_PARALLEL_SIZE) or a quantized model")
_OFFLINE_HINT = ("HF_HUB_OFFLINE is set but the model is not in the Hugging Face cache: unset HF_HUB_OFFLINE, or "
                 "put the model in the cache (a network volume, or an image with the model baked in)")
_UNREACHABLE_HINT = ("huggingface.co could not be reached and the model is not in the cache: check the network, "
                     "or serve the model from a network volume or an image with the model baked in")
_DISK_FULL_HINT = ("the disk is full: the container disk is too small for the model; attach a network volume "
                   "or raise the container disk size")


def _hint_by_message(message: str) -> str | None:
    if any(s in message for s in KV_CACHE_TOO_SMALL):
        estimate = re.search(r"estimated maximum model length is (\d+)", message)
        fits = f" ({estimate.group(1)} fits, vLLM estimates)" if estimate and estimate.group(1) != "0" else ""
        return (f"lower MAX_MODEL_LEN{fits} or raise GPU_MEMORY_UTILIZATION (or KV_CACHE_MEMORY_BYTES, where "
                "set), or use more GPUs: TENSOR_PARALLEL_SIZE")
    if "No available memory for the cache blocks" in message:
        return ("the weights leave no memory for the KV cache: raise GPU_MEMORY_UTILIZATION (or "
                "KV_CACHE_MEMORY_BYTES, where set), or use more GPUs (TENSOR_PARALLEL_SIZE) or a quantized model")
    if "Free memory on device" in message and ("is less than desired GPU memory utilization" in message
                                                or "is less than the engine's budget" in message):
        return "lower GPU_MEMORY_UTILIZATION: another process holds part of the GPU's memory"
    if match := re.search(r"is greater than the derived max_model_len \((\w+)=(\d+)", message):
        return f"lower MAX_MODEL_LEN to {match.group(2)} or less, the model's {match.group(1)}"
    if any(s in message for s in OUT_OF_MEMORY):
        return _OOM_HINT
    if "No space left on device" in message:
        return _DISK_FULL_HINT
    if any(s in message for s in BITSANDBYTES_NOT_LOADED):
        return ("set QUANTIZATION=bitsandbytes (the worker loads vLLM's bitsandbytes plugin only when QUANTIZATION, "
                "LOAD_FORMAT or a local model's config.json names it), and where VLLM_PLUGINS is set, list "
                "bitsandbytes in it")
    if any(s in message for s in GGUF_NOT_LOADED):
        return ("where VLLM_PLUGINS is set, list gguf in it (the worker loads vLLM's GGUF plugin only when "
                "QUANTIZATION or LOAD_FORMAT is gguf or MODEL_NAME names a GGUF file: a path or Hub file ending in "
                ".gguf, or repo_id:quant_type)")
    if "is not a valid git identifier" in message:  # transformers' words for RevisionNotFoundError
        return "pin MODEL_REVISION to a branch, tag or commit that exists in the model's repo"
    if any(s in message for s in CAUSE_IN_ANOTHER_PROCESS):
        return "the cause is in the log lines of vLLM's engine process above (EngineCore failed to start)"
    return None
