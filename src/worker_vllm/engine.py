"""The one module that imports vLLM: its argument parser, AsyncLLM, and its OpenAI app in-process.

A vLLM upgrade should touch this file only.
"""

import ast
import asyncio
import contextlib
import difflib
import gc
import importlib
import importlib.util
import logging
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import msgspec
import vllm.envs as envs
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.exceptions import VLLMClientError
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.utils import gc_utils
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.utils.gc_utils import freeze_gc_heap
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.utils import EngineZmqAddresses, get_engine_zmq_bind_addresses, launch_core_engines
from vllm.v1.executor import Executor

from worker_vllm import asgi

if TYPE_CHECKING:
    from fastapi import FastAPI

# vLLM's OpenAI app and the request types of its serving layer, which the engine's start does not
# need: imported where they are used, or earlier by prepare_serving.
SERVING_LAYER = (
    "vllm.entrypoints.launchers.api_server.app_state",
    "vllm.entrypoints.launchers.app",
    "vllm.entrypoints.openai.chat_completion.protocol",
    "vllm.entrypoints.openai.completion.protocol",
)


# Starts the other front-end processes, given the vLLM client config of each (the addresses its
# sockets bind); returns their processes.
StartFrontEnds = Callable[[list[dict[str, Any]]], list[BaseProcess]]


class InputError(ValueError):
    """A request vLLM refused; the message says why."""


def prepare_serving(front_end: Sequence[str] = ()) -> None:
    """What building vLLM's OpenAI app for the first job would wait for, done while the engine
    starts (startup.during_engine_start): import the serving layer and the front end's modules,
    then keep the heap so far out of garbage collection, so that the freeze once the app is built
    (Engine.ready) walks only what came after. On an H200 the first job then waited 0.86 s after
    the engine was up instead of 1.31 s (docs/benchmarks.md)."""
    for name in (*SERVING_LAYER, *front_end):
        importlib.import_module(name)
    freeze_gc_heap()


def arg_parser() -> FlexibleArgumentParser:
    """vLLM's own `vllm serve` parser: engine and OpenAI front-end options."""
    return make_arg_parser(FlexibleArgumentParser(prog="worker"))


def cache_model_infos(architectures: list[str] | None = None) -> list[str]:
    """Fill vLLM's model-info cache (VLLM_CACHE_ROOT/modelinfos) for these or all architectures;
    returns those that could not be inspected here.

    Without that cache vLLM inspects the model's class in a new Python process, for fear of
    starting CUDA in its own: a start with empty caches spent 13 s (CPU) to 24-33 s (H100) importing
    vLLM again. For the image build, where there is no GPU, this inspects in this process.
    """
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda inspect: inspect()
    failed = []
    for architecture in architectures or registry.ModelRegistry.get_supported_archs():
        try:
            registry.ModelRegistry.models[architecture].inspect_model_cls()  # vLLM caches what it finds
        except Exception:  # noqa: BLE001 - a module that needs what the build lacks: inspected at start
            failed.append(architecture)
    return failed


# Where vLLM 0.32 keeps the all-reduce + RMSNorm fusion's size limits, and their name.
FUSION_SIZES = ("vllm.compilation.passes.fusion.allreduce_rms_fusion", "FI_ALLREDUCE_FUSION_MAX_SIZE_MB")


def fusion_size_limits() -> dict[int, dict[int, float]]:
    """vLLM's size limits for its all-reduce + RMSNorm fusion (MB, by compute capability, then by
    tensor-parallel size), read from vLLM's source; empty where that source has none.

    vLLM looks them up as it builds its config, with TP > 1 on compute capability 9.0 or 10.x,
    unless `pass_config.fi_allreduce_fusion_max_size_mb` is set. Their module imports
    flashinfer.comm, whose import starts CUDA in this process, and vLLM then spawns its engine
    process and model workers instead of forking them: 24 s more on two H200s (docs/benchmarks.md).
    Read from the source, the limits are vLLM's own, and nothing is imported."""
    module, name = FUSION_SIZES
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return {}
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return ast.literal_eval(node.value)
    return {}


def set_fusion_size_limit(engine_args: AsyncEngineArgs) -> None:
    """Give vLLM the fusion's size limit for this GPU and tensor-parallel size (fusion_size_limits),
    where the settings leave it to vLLM."""
    pass_config = engine_args.compilation_config.pass_config
    if engine_args.tensor_parallel_size < 2 or pass_config.fi_allreduce_fusion_max_size_mb is not None:
        return
    capability = current_platform.get_device_capability()  # from NVML on a GPU: no CUDA
    if capability is not None:
        limit = fusion_size_limits().get(capability.to_int(), {}).get(engine_args.tensor_parallel_size)
        if limit is not None:
            pass_config.fi_allreduce_fusion_max_size_mb = limit


@contextlib.contextmanager
def freeze_gc_for_capture() -> Iterator[None]:
    """vLLM's context around its CUDA graph capture (gc_utils.freeze_gc_for_cudagraph_capture), less
    its end. vLLM collects, freezes the heap and turns the collector off, so that no collection runs
    during the capture; then it unfreezes the whole heap and collects again. In a forked engine
    process that heap includes everything the worker froze before the fork (Startup.before_engine),
    and that collection, then the full one of vLLM's freeze once its start is done, each walked all
    of it again: 0.43 s each in a warm start of the 8B shape on an H200 (docs/benchmarks.md). Here
    the heap stays frozen, as vLLM freezes it again anyway once its start is done."""
    enabled = gc.isenabled()
    gc.collect()
    if envs.VLLM_ENABLE_CUDAGRAPH_GC:  # vLLM's opt-out: collections may run during the capture
        yield
        return
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def keep_heap_frozen_through_capture() -> None:
    """Put freeze_gc_for_capture in the place of vLLM's context. Its model runners import the context
    by name when their modules are imported, in the engine process or model workers after vLLM
    forks them: they find this one (tests/test_capture_gc.py)."""
    gc_utils.freeze_gc_for_cudagraph_capture = freeze_gc_for_capture


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Engine:
    """vLLM's AsyncLLM in this process, with vLLM's OpenAI FastAPI app called in-process (ASGI)."""

    def __init__(self, args, client: dict[str, Any] | None = None,
                 start_front_ends: StartFrontEnds | None = None):
        """With API_SERVER_COUNT > 1 (vLLM's --api-server-count), this process starts vLLM's engine
        core for that many front ends, itself the first: `start_front_ends` starts the others while
        the engine core loads. A front end that another process started passes its `client` config."""
        validate_parsed_serve_args(args)
        self.args = args
        engine_args = AsyncEngineArgs.from_cli_args(args)
        set_fusion_size_limit(engine_args)
        keep_heap_frozen_through_capture()
        count = 1 if client else args.api_server_count or 1
        if count > 1:
            engine_args._api_process_count, engine_args._api_process_rank = count, -1
        elif client:
            engine_args._api_process_count = client["client_count"]
            engine_args._api_process_rank = client["client_index"]
        self.vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if self.vllm_config.model_config.runner_type == "pooling":
            # vLLM 0.32 asserts a detokenizer for every output once stream_interval > 1, and pooling
            # requests have none: with the worker's default of 4, every embedding request failed.
            self.vllm_config.scheduler_config.stream_interval = 1
        self.front_ends: list[BaseProcess] = []
        if count > 1:
            self.llm = self._start_engine_core(engine_args, count, start_front_ends)
        else:
            self.llm = self._connect(engine_args, client)
        # vLLM re-reads its environment variables at each access unless told; its engine process
        # caches them after start-up, and so does this one: per generated token, the front end's
        # stats read one (1 in 8 of this process's samples on an H100 at 256 streams).
        envs.enable_envs_cache()
        self.app: FastAPI | None = None
        self._ready = asyncio.Lock()

    def _connect(self, engine_args: AsyncEngineArgs, client: dict[str, Any] | None) -> AsyncLLM:
        """AsyncLLM: it starts the engine core, or with `client` joins one another process started."""
        client = dict(client or {})
        # Built outside any event loop: AsyncLLM then binds to the loop of its first request,
        # which is the runpod SDK's loop.
        return AsyncLLM.from_vllm_config(
            vllm_config=self.vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=engine_args.enable_log_requests,
            disable_log_stats=engine_args.disable_log_stats,
            client_addresses=client or None,
            client_count=client.pop("client_count", 1),
            client_index=client.pop("client_index", 0),
        )

    def _start_engine_core(self, engine_args: AsyncEngineArgs, count: int,
                           start_front_ends: StartFrontEnds | None) -> AsyncLLM:
        """vLLM's engine core for `count` front ends, as `vllm serve --api-server-count` starts it:
        the other front ends start while it loads. Returns this process's AsyncLLM."""
        if start_front_ends is None:
            raise ValueError(f"--api-server-count={count} needs the worker to start the other front ends")
        # Each front end binds its own sockets (IPC paths), and the engine core connects to them
        # until they are there. vLLM's own way hands each front end a socket bound beforehand; with
        # that, about one start in ten on 2 CPU cores left a front end's first question to the core
        # unanswered for good, and on an H200 every late one waited 30 s.
        addresses = get_engine_zmq_bind_addresses(self.vllm_config, count)
        if not all(address.startswith("ipc://") for address in (*addresses.inputs, *addresses.outputs)):
            raise ValueError(f"--api-server-count={count} needs the engine on this machine (data parallelism "
                             "across machines is not supported)")
        connected: list[AsyncLLM | BaseException] = []

        def connect(client: dict[str, Any]) -> None:
            try:
                connected.append(self._connect(engine_args, client))
            except BaseException as e:  # noqa: BLE001 - raised in the main thread below
                connected.append(e)

        try:
            with launch_core_engines(self.vllm_config, Executor.get_class(self.vllm_config),
                                     not engine_args.disable_log_stats,
                                     EngineZmqAddresses(inputs=addresses.inputs, outputs=addresses.outputs)) as launch:
                clients = []
                for index, (inputs, outputs) in enumerate(zip(addresses.inputs, addresses.outputs, strict=True)):
                    client = {"input_address": inputs, "output_address": outputs,
                              "client_count": count, "client_index": index}
                    if launch.tensor_queue is not None:
                        client["tensor_queue"] = launch.tensor_queue
                    if launch.coordinator is not None:  # data parallelism: the engines' loads, to balance on
                        client["stats_update_address"] = launch.coordinator.get_stats_publish_address()
                    clients.append(client)
                self.front_ends = start_front_ends(clients[1:])
                launch.watched_frontend_processes = self.front_ends  # one that dies fails the start
                # This process's client binds its sockets now, as the others do, not once the core is up.
                self.vllm_config.parallel_config._api_process_rank = 0
                connecting = threading.Thread(target=connect, args=(clients[0],), name="engine-client", daemon=True)
                connecting.start()
            connecting.join()
            llm = connected[0]
            if isinstance(llm, BaseException):
                raise llm
        except BaseException:
            self._stop_front_ends()
            raise
        # As when AsyncLLM starts the engine core itself: it watches the core, marks itself dead when
        # the core exits, and stops the core at shutdown.
        llm.engine_core.resources.engine_manager = launch.engine_manager
        llm.engine_core.start_engine_core_monitor()
        return llm

    def _stop_front_ends(self, timeout: float = 5.0) -> None:
        for process in self.front_ends:
            if process.is_alive():
                process.terminate()
        for process in self.front_ends:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(timeout)

    @property
    def max_num_seqs(self) -> int:
        return self.vllm_config.scheduler_config.max_num_seqs

    @property
    def served_model_names(self) -> list[str]:
        return list(self.args.served_model_name or [self.args.model])

    async def ready(self) -> "FastAPI":
        """vLLM's OpenAI app, built on the running loop the first time."""
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        async with self._ready:
            if self.app is None:
                tasks = await self.llm.get_supported_tasks()
                root = logging.getLogger()
                level = root.level
                # build_app imports model_hosting_container_standards, which sets the root logger's
                # level from LOG_LEVEL, else to ERROR: the worker's own INFO and WARNING lines would go.
                try:
                    app = build_app(self.args, tasks, self.llm.model_config)
                finally:
                    root.setLevel(level)
                await init_app_state(self.llm, app.state, self.args, tasks)
                # vLLM's engine-error handler asks its uvicorn server to exit; in-process there is none,
                # and the worker's watchdog (lifecycle.exit_when_engine_dies) ends the process instead.
                app.state.server = types.SimpleNamespace(should_exit=False)
                # As `vllm serve` does once it starts (its app's lifespan, which no server runs here):
                # the start-up heap is kept out of garbage collection. Without it, each full collection
                # walked vLLM's whole heap mid-stream, a quarter of this process's time while serving.
                freeze_gc_heap()
                self.app = app
            return self.app

    async def routes(self) -> set[str]:
        """The paths vLLM's app serves for this model's tasks."""
        return {path for route in (await self.ready()).routes if (path := getattr(route, "path", None))}

    # --- native path -------------------------------------------------------------------------

    @property
    def is_dead(self) -> bool:
        # Not vLLM's `errored`: that is also true once its output task is cancelled, which
        # asyncio.run does to every task when the SDK's loop ends on SIGTERM: a shutdown, not a death.
        output = self.llm.output_handler
        return self.llm.engine_core.resources.engine_dead or self._front_end_exited is not None or (
            output is not None and output.done() and not output.cancelled())

    @property
    def _front_end_exited(self) -> BaseProcess | None:
        return next((p for p in self.front_ends if p.exitcode is not None), None)

    @property
    def dead_reason(self) -> str:
        if (process := self._front_end_exited) is not None and not self.llm.engine_core.resources.engine_dead:
            return f"its front-end process {process.name} exited with code {process.exitcode}"
        return str(self.llm.dead_error)

    def num_unfinished_requests(self) -> int:
        return self.llm.output_processor.get_num_unfinished_requests()

    @property
    def max_model_len(self) -> int:
        return self.vllm_config.model_config.max_model_len

    def sampling_params(self, params: dict) -> SamplingParams:
        """vLLM's SamplingParams, streaming deltas; InputError names what vLLM refused."""
        unknown = sorted(set(params) - set(SamplingParams.__struct_fields__))
        if unknown:
            close = difflib.get_close_matches(unknown[0], SamplingParams.__struct_fields__, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"sampling_params: unknown field {unknown[0]!r}{hint}")
        try:
            sampling = msgspec.convert(params, SamplingParams)  # checks types, then vLLM's own rules
        except msgspec.ValidationError as e:
            message, _, where = str(e).partition(" - at `$.")
            field = f"sampling_params.{where.rstrip('`')}" if where else "sampling_params"
            raise InputError(f"{field}: {message if where else e}") from None
        except (ValueError, VLLMClientError) as e:
            raise InputError(f"sampling_params: {e}") from None
        if sampling.max_tokens is not None and sampling.max_tokens > self.max_model_len:
            raise InputError(f"sampling_params: max_tokens={sampling.max_tokens} cannot be greater than "
                             f"max_model_len={self.max_model_len}")
        sampling.output_kind = RequestOutputKind.DELTA
        return sampling

    async def render(self, *, prompt: str | None = None, messages: list | None = None,
                     chat_template_kwargs: dict | None = None):
        """The engine input for a prompt, or for chat messages through the model's chat template."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        renderer = (await self.ready()).state.online_renderer
        model = self.served_model_names[0]
        try:
            if messages is not None:
                request = ChatCompletionRequest(model=model, messages=messages,
                                                chat_template_kwargs=chat_template_kwargs)
                result = await renderer.render_chat(request)
                inputs = result if isinstance(result, ErrorResponse) else result[1]
            else:
                inputs = await renderer.render_completion(CompletionRequest(model=model, prompt=prompt))
        except (ValueError, VLLMClientError) as e:  # pydantic's ValidationError is a ValueError
            raise InputError(str(e)) from None
        if isinstance(inputs, ErrorResponse):
            raise InputError(inputs.error.message)
        return inputs[0]

    async def generate(self, engine_input, sampling: SamplingParams, request_id: str):
        try:
            async for output in self.llm.generate(engine_input, sampling, request_id):
                yield output
        except VLLMClientError as e:
            raise InputError(str(e)) from None

    async def abort(self, request_id: str):
        await self.llm.abort(request_id)

    # --- OpenAI path -------------------------------------------------------------------------

    async def http(self, method: str, path: str, body: dict | None, request_id: str,
                   on_cancel: Callable[[Callable[[], None]], None] = lambda cancel: None) -> asgi.Response:
        """vLLM's OpenAI app, called in-process (see asgi.call); vLLM takes `request_id` as its own."""
        app = await self.ready()
        return await asgi.call(app, method, path, body, {"x-request-id": request_id}, on_cancel)

    def kill(self) -> None:
        """Kill the processes this one started (the engine core, the other front ends) at once: for
        a worker about to os._exit, which would leave a live engine core running without it."""
        manager = self.llm.engine_core.resources.engine_manager
        for process in (*self.front_ends, *getattr(manager, "processes", ())):
            if process.is_alive():
                process.kill()

    def shutdown(self):
        self._stop_front_ends()
        self.llm.shutdown()
        gc.unfreeze()  # the heap is collectable again: objects left frozen at exit are reported as leaks
