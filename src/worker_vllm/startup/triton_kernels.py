"""vLLM's Triton kernels, compiled when the image is built instead of at every empty start.

An empty start builds about 30 Triton kernels, 35 s of an 8B model's start on an H200. Which ones
depends on vLLM and the settings more than on the model (the sampling kernels are built for its
vocabulary size), and Triton compiles for any NVIDIA architecture without a GPU. So a start on a
GPU records what it compiled (`RECORD_TRITON_KERNELS=FILE`: one JSON line per kernel, in Triton's
own specialization format), builder/triton_kernels.jsonl keeps that list, and the image build
compiles it for each architecture into Triton's cache (builder/triton_cache.py), where a start
finds it.
"""

import importlib
import importlib.util
import json
import os
from collections.abc import Iterable
from typing import Any

RECORD_ENV = "RECORD_TRITON_KERNELS"


def record_from_env() -> None:
    """In a process whose environment names a file: record every kernel Triton compiles into it."""
    if os.environ.get(RECORD_ENV):
        record(os.environ[RECORD_ENV])


def record(path: str) -> None:
    from triton import knobs

    chained = knobs.runtime.jit_post_compile_hook  # vLLM's JIT monitor sets one after its warm-up, chained too

    def hook(*, fn: Any, compile: dict, **kwargs: Any) -> Any:
        if importlib.util.find_spec(fn.module):  # not generated code (torch.compile's), which has no name to import
            with open(path, "a") as file:  # one write per line: the engine's processes append to one file
                file.write(json.dumps(recorded(f"{fn.module}:{fn.name}", compile["specialization_data"])) + "\n")
        return chained(fn=fn, compile=compile, **kwargs) if chained else None

    knobs.runtime.jit_post_compile_hook = hook


def recorded(function: str, specialization_data: str) -> dict:
    """Triton's specialization of one compile, with only the options the launch chose: the rest
    are the target's defaults, which differ from one architecture to the next."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.driver import driver

    spec = json.loads(specialization_data)
    target = GPUTarget(**spec.pop("target")) if "target" in spec else driver.active.get_current_target()  # Triton < 3.7
    defaults = json.loads(json.dumps(make_backend(target).parse_options({}).__dict__, default=list))
    spec["options"] = {name: value for name, value in spec["options"].items() if defaults.get(name) != value}
    return {"function": function, "recorded_on": target.arch, **spec}


def read(lines: Iterable[str]) -> list[dict]:
    """The recorded kernels, each specialization once."""
    specs: dict[str, dict] = {}
    for line in lines:
        if line.strip():
            spec = json.loads(line)
            specs.setdefault(identity(spec), spec)
    return list(specs.values())


def identity(spec: dict) -> str:
    """What makes two recorded compiles the same kernel, on any architecture."""
    return json.dumps({name: spec[name] for name in ("function", "signature", "constant_keys", "constant_vals",
                                                     "attrs_keys", "attrs_vals", "options")}, sort_keys=True)


class CompileOnly:
    """Triton's active driver while compiling for an architecture this machine may not have: a
    compile asks only for the device and its target. Each architecture gets its own device
    number, so Triton keeps one JIT cache per architecture."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)


def compile_for(arch: int, specs: list[dict]) -> list[str]:
    """Compile each recorded kernel for one NVIDIA architecture (80 for sm_80, ...) into Triton's
    cache; the kernels that could not be, each with the reason. This process's Triton then
    compiles for that architecture only: run it in a process of its own."""
    from triton.runtime.driver import driver

    compiler = CompileOnly(arch)
    driver.set_active(compiler)
    target = compiler.get_current_target().__dict__
    failed = []
    for spec in specs:
        try:
            function = resolve(spec["function"])
            function.preload(json.dumps(spec | {"name": function._fn_name, "target": target}))
        except Exception as e:  # noqa: BLE001 - a kernel not built here is built at start, as before
            failed.append(f"{spec['function']}: {type(e).__name__}: {e}"[:300])
    return failed


def resolve(name: str) -> Any:
    """`module:qualname` -> the Triton function vLLM defines there."""
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not hasattr(found, "preload"):
        raise TypeError(f"{name} is not a Triton kernel here (is Triton usable in this process?)")
    return found
