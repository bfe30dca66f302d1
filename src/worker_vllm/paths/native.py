"""The native path: `prompt` or `messages` with vLLM sampling params, streamed as token batches."""

import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from worker_vllm import errors
from worker_vllm.jobs import Job
from worker_vllm.paths import limits
from worker_vllm.paths.base import Item
from worker_vllm.paths.batching import BatchSizes, batched

if TYPE_CHECKING:
    from worker_vllm.config import WorkerSettings
    from worker_vllm.worker import Worker

log = logging.getLogger("worker.native")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None


class NativeInput(BaseModel):
    """A native job's input. Unknown keys are ignored with a warning."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # Infinity parses as JSON here

    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    sampling_params: dict = Field(default_factory=dict)
    stream: StrictBool = False
    apply_chat_template: StrictBool = False
    chat_template_kwargs: dict | None = None
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)
    request_timeout: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a chat list)")
        return self


WHOLE = BatchSizes(sys.maxsize, sys.maxsize)  # one batch at the end: a non-streaming job


class BatchKnobs(Protocol):
    """A job's own stream batch sizes (both paths' inputs have them)."""

    max_batch_size: int | None
    min_batch_size: int | None
    batch_size_growth_factor: float | None


def batch_sizes(request: BatchKnobs, defaults: "WorkerSettings") -> BatchSizes:
    """The job's stream batch sizes: its own knobs, else the worker's defaults."""
    return BatchSizes(request.min_batch_size or defaults.default_min_batch_size,
                      request.max_batch_size or defaults.default_batch_size,
                      request.batch_size_growth_factor or defaults.default_batch_size_growth_factor)


async def run(worker: "Worker", job_input: dict[str, Any], job: Job) -> AsyncIterator[Item]:
    """Yields token batches (stream) or one object with the full text; {"error": ...} for bad input."""
    try:
        async for item in _generate(worker, job_input, job):
            yield item
    except ValueError as e:  # pydantic's ValidationError, vLLM's refusals (engine.InputError)
        yield {"error": errors.describe(e)}


async def _generate(worker: "Worker", job_input: dict[str, Any], job: Job) -> AsyncIterator[Item]:
    defaults = worker.settings.worker
    request = await limits.validated(NativeInput, job_input, defaults.max_input_chars)
    if request.model_extra:
        log.warning("job %s: ignored unknown input keys %s", job.id, sorted(request.model_extra))
    limits.check_stop(request.sampling_params.get("stop"), "sampling_params.stop")
    engine = worker.engine
    params = {"max_tokens": defaults.default_max_tokens, **request.sampling_params}
    sampling = engine.sampling_params(params | _int_keys(params, "logit_bias"))
    limits.check_n(sampling.n, defaults.max_n, "sampling_params.n")
    if sampling.seed is not None and not limits.INT64[0] <= sampling.seed <= limits.INT64[1]:
        raise ValueError(f"sampling_params.seed: {sampling.seed} is not a 64-bit integer "
                         f"({limits.INT64[0]} to {limits.INT64[1]})")
    messages: list[dict[str, Any]] | None = None
    if request.messages:
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
    elif request.apply_chat_template:
        messages = [{"role": "user", "content": request.prompt}]
    engine_input = await engine.render(prompt=request.prompt, messages=messages,
                                       chat_template_kwargs=request.chat_template_kwargs)
    job.on_abort(lambda: engine.abort(job.id))
    job.set_timeout(request.request_timeout, defaults.request_timeout)
    outputs = engine.generate(engine_input, sampling, job.id)

    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    prompt_tokens = generated = 0
    sizes = batch_sizes(request, defaults) if request.stream else WHOLE
    async for batch in batched(outputs, sizes, weight=_new_tokens):
        choices: dict[int, dict] = {}
        for out in batch:
            prompt_tokens = len(out.prompt_token_ids)
            for o in out.outputs:
                choice = choices.setdefault(o.index, {"index": o.index, "tokens": [], "finish_reason": None})
                if o.text:
                    choice["tokens"].append(o.text)
                    texts.setdefault(o.index, []).append(o.text)
                choice["finish_reason"] = finish[o.index] = o.finish_reason
                generated += len(o.token_ids)
        job.report_usage(prompt_tokens, generated)
        if request.stream and not job.abort_reason:
            yield {"choices": [choices[i] for i in sorted(choices)], "usage": _usage(prompt_tokens, generated)}

    result = {"choices": [{"index": i, "text": "".join(texts.get(i, [])), "finish_reason": finish.get(i)}
                          for i in sorted(finish)], "usage": _usage(prompt_tokens, generated)}
    if job.abort_reason:
        yield {"error": f"{job.abort_reason}; generation was aborted. Partial output: {json.dumps(result)}"}
    elif not request.stream:
        for choice in result["choices"]:  # worker-vllm's clients read output[0]["choices"][0]["tokens"][0]
            choice["tokens"] = [choice["text"]]
        yield result


def _int_keys(params: dict[str, Any], name: str) -> dict[str, Any]:
    """params[name] with its keys as ints where they are decimal strings: JSON object keys are always
    strings, and vLLM wants token ids (`logit_bias`)."""
    value = params.get(name)
    if not isinstance(value, dict):
        return {}
    return {name: {int(k) if isinstance(k, str) and k.lstrip("-").isdecimal() else k: v for k, v in value.items()}}


def _new_tokens(output: Any) -> int:
    """Tokens a vLLM output adds (to its longest choice)."""
    return max((len(o.token_ids) for o in output.outputs), default=0)


def _usage(prompt_tokens: int, output_tokens: int) -> dict:
    return {"input": prompt_tokens, "output": output_tokens}
