"""The native path: `prompt` or `messages` with vLLM sampling params, streamed as token batches."""

from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

import errors
from batching import BatchSizes, batched


class NativeInput(BaseModel):
    """A native job's input."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[dict] | None = Field(None, min_length=1)
    sampling_params: dict = Field(default_factory=dict)
    stream: StrictBool = False
    apply_chat_template: StrictBool = False
    chat_template_kwargs: dict | None = None
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a chat list)")
        return self


def _usage(prompt_tokens: int, output_tokens: int) -> dict:
    return {"input": prompt_tokens, "output": output_tokens}


async def run(worker, job_input: dict, request_id: str) -> AsyncIterator[dict]:
    """Yields token batches (stream) or one object with the full text; {"error": ...} for bad input."""
    try:
        async for item in _generate(worker, job_input, request_id):
            yield item
    except ValueError as e:  # pydantic's ValidationError, vLLM's refusals (engine.InputError)
        yield {"error": errors.describe(e)}


async def _generate(worker, job_input: dict, request_id: str) -> AsyncIterator[dict]:
    request = NativeInput.model_validate(job_input)
    defaults = worker.settings.worker
    params = {"max_tokens": defaults.default_max_tokens, **request.sampling_params}
    sampling = worker.engine.sampling_params(params, stream=request.stream)
    messages = request.messages
    if messages is None and request.apply_chat_template:
        messages = [{"role": "user", "content": request.prompt}]
    engine_input = await worker.engine.render(prompt=request.prompt, messages=messages,
                                              chat_template_kwargs=request.chat_template_kwargs)
    outputs = worker.engine.generate(engine_input, sampling, request_id)

    if not request.stream:
        async for final in outputs:
            choices = [{"index": o.index, "text": o.text, "finish_reason": o.finish_reason}
                       for o in sorted(final.outputs, key=lambda o: o.index)]
            generated = sum(len(o.token_ids) for o in final.outputs)
            yield {"choices": choices, "usage": _usage(len(final.prompt_token_ids), generated)}
        return

    sizes = BatchSizes(request.min_batch_size or defaults.default_min_batch_size,
                       request.max_batch_size or defaults.default_batch_size,
                       request.batch_size_growth_factor or defaults.default_batch_size_growth_factor)
    generated = 0
    async for batch in batched(outputs, sizes, weight=lambda out: max((len(o.token_ids) for o in out.outputs), default=0)):
        choices: dict[int, dict] = {}
        for out in batch:
            for o in out.outputs:
                choice = choices.setdefault(o.index, {"index": o.index, "tokens": [], "finish_reason": None})
                if o.text:
                    choice["tokens"].append(o.text)
                choice["finish_reason"] = o.finish_reason
                generated += len(o.token_ids)
        yield {"choices": [choices[i] for i in sorted(choices)],
               "usage": _usage(len(batch[0].prompt_token_ids), generated)}
