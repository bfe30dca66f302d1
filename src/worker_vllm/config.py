"""Settings from environment variables.

Every option of `vllm serve` (engine and OpenAI front end) is read from its UPPER_SNAKE name:
MAX_MODEL_LEN -> --max-model-len. vLLM's own parser checks types, choices and JSON, so a new
vLLM flag works without code here. VLLM_CONFIG_FILE names a YAML file of vLLM options (vLLM's
`--config`); the environment wins over it. The worker's own settings are a pydantic model.
"""

import argparse
import contextlib
import difflib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker_vllm import redact

# Names the worker has always accepted, mapped to the vLLM option they set.
ALIASES = {
    "MODEL_NAME": "model",
    "MODEL_REVISION": "revision",
    "TOKENIZER_NAME": "tokenizer",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "served_model_name",
    "CUSTOM_CHAT_TEMPLATE": "chat_template",  # a template string or a path, like --chat-template
    "OPENAI_RESPONSE_ROLE": "response_role",  # worker-vllm's name
}
# Variables runpod-workers/worker-vllm read that this worker does not, and what to set instead.
WORKER_VLLM_ONLY = {
    "RAW_OPENAI_OUTPUT": "OpenAI streams always come as vLLM's SSE events, whole",
    "MIN_BATCH_SIZE": "set DEFAULT_MIN_BATCH_SIZE",
    "BATCH_SIZE": "set DEFAULT_BATCH_SIZE",
    "BATCH_SIZE_GROWTH_FACTOR": "set DEFAULT_BATCH_SIZE_GROWTH_FACTOR",
    "DISABLE_LOG_REQUESTS": "vLLM 0.32 logs no requests unless ENABLE_LOG_REQUESTS=true",
    "SWAP_SPACE": "vLLM 0.32 has no CPU swap space",
    "PREEMPTION_MODE": "vLLM 0.32 always recomputes preempted requests",
    "USE_V2_BLOCK_MANAGER": "vLLM 0.32 has one block manager",
    "SCHEDULER_DELAY_FACTOR": "vLLM 0.32 has no such option",
    "GUIDED_DECODING_BACKEND": 'set STRUCTURED_OUTPUTS_CONFIG=\'{"backend": "..."}\'',
    "SPECULATIVE_MODEL": 'set SPECULATIVE_CONFIG=\'{"model": "...", "num_speculative_tokens": N}\'',
    "NUM_SPECULATIVE_TOKENS": 'set SPECULATIVE_CONFIG=\'{"model": "...", "num_speculative_tokens": N}\'',
    "ROPE_SCALING": 'set HF_OVERRIDES=\'{"rope_scaling": {...}}\'',
    "MAX_SEQ_LEN_TO_CAPTURE": "CUDA graph sizes come from COMPILATION_CONFIG",
    "TENSORIZER_URI": "set LOAD_FORMAT=tensorizer and MODEL_LOADER_EXTRA_CONFIG",
    "QUANTIZATION_PARAM_PATH": "vLLM 0.32 reads KV cache scales from the checkpoint",
}
# Options of the HTTP server that make no sense in-process, or that other software sets
# (PORT, HOST, CONFIG), and HF_TOKEN, which huggingface_hub reads from the environment itself.
NOT_FROM_ENV = {"host", "port", "uds", "api_key", "root_path", "config", "headless", "grpc",
                "hf_token", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs"}
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
RUNPOD_MARKERS = ("RUNPOD_POD_ID", "RUNPOD_WEBHOOK_GET_JOB")
# Engine options the worker sets unless their env var does. vLLM sends a stream's first token at
# once, then every 4 tokens: the Runpod stream batches tokens anyway, and per-token outputs cost the
# OpenAI path 17% of its throughput at 256 streams on an H100 (docs/benchmarks.md).
WORKER_DEFAULTS = {"stream_interval": "4"}
# Front-end processes on one engine core (vLLM's --api-server-count; front_ends.py) for a queue
# worker on a GPU: with a 1B model at 512 streams, one process held the OpenAI path to 0.82x of
# AsyncLLM's tokens/s and doubled its TTFT; four gave 1.00x (docs/benchmarks.md).
GPU_QUEUE_DEFAULTS = {"api_server_count": "4"}
# Used when the embedded tiny model is served: it is for CPU runs, where eager mode starts
# in about 20 s instead of 55 s.
TINY_MODEL_DEFAULTS = {"enforce_eager": "true", "max_model_len": "2048"}
# And with no GPU: float32 keeps vLLM off its bf16 AMX attention kernel, which dies with SIGILL
# where the process never asked Linux for AMX (vLLM 0.32, short prompts); 1 GiB of KV cache,
# because vLLM's CPU backend otherwise wants 92% of a NUMA node free.
TINY_MODEL_CPU_DEFAULTS = {"dtype": "float32", "kv_cache_memory_bytes": "1G"}
# FAST_BOOT=true: the fastest start measured, for a few % of throughput (docs/benchmarks.md). Each
# part yields to its own env var. No torch.compile (vLLM's own CUDA kernels), and full CUDA graphs
# for 12 batch sizes. Without torch.compile the all-reduce + RMSNorm fusion (a compile pass) never
# runs; off, with TENSOR_PARALLEL_SIZE > 1 on H100/H200/B200, vLLM's model workers also skip its
# FlashInfer workspace, whose communication module a first start JIT-builds for minutes.
FAST_BOOT_DEFAULTS = {
    "compilation_config": json.dumps({"mode": 0, "cudagraph_mode": "FULL",
                                      "cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256],
                                      "pass_config": {"fuse_allreduce_rms": False}})}
FAST_BOOT_VLLM_ENV = {
    "VLLM_ENABLE_STARTUP_PLAN": "1",  # reuse the KV cache size a start measured (on the volume): no profiling
    "VLLM_USE_FLASHINFER_SAMPLER": "0",  # no JIT build of FlashInfer's sampling kernels
}
# The prefetch (startup/prefetch.py) reads the weights into the page cache; InstantTensor, FAST_BOOT's
# loader on a GPU (startup/loader.py), would read them from the disk again with its default, direct I/O.
PREFETCH_VLLM_ENV = {"INSTANTTENSOR_BACKEND": "BUFFERED"}
# LOAD_FORMAT values that leave the loader to vLLM, or to the worker where it picks one.
VLLMS_LOADER = ("", "auto")


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line a person can act on, secrets masked."""

    def __init__(self, message: str):
        super().__init__(redact.redact(message))


class WorkerSettings(BaseModel):
    """The worker's own settings (not vLLM's), read from the environment variable of each field."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    default_batch_size: int = Field(50, ge=1, alias="DEFAULT_BATCH_SIZE")
    default_min_batch_size: int = Field(1, ge=1, alias="DEFAULT_MIN_BATCH_SIZE")
    default_batch_size_growth_factor: float = Field(3, ge=1, alias="DEFAULT_BATCH_SIZE_GROWTH_FACTOR")
    default_max_tokens: int = Field(512, ge=1, alias="DEFAULT_MAX_TOKENS")
    max_concurrency: int | None = Field(None, ge=1, alias="MAX_CONCURRENCY")
    enable_openai_admin_routes: bool = Field(False, alias="ENABLE_OPENAI_ADMIN_ROUTES")
    request_timeout: float | None = Field(None, gt=0, alias="REQUEST_TIMEOUT")
    max_n: int = Field(32, ge=1, alias="MAX_N")
    shutdown_grace_seconds: float = Field(30, ge=0, alias="SHUTDOWN_GRACE_SECONDS")
    max_input_chars: int = Field(4_000_000, ge=1, alias="MAX_INPUT_CHARS")
    fast_boot: bool = Field(False, alias="FAST_BOOT")
    load_balancer: bool = Field(False, alias="LOAD_BALANCER")  # serve HTTP (load_balancer.py), not the queue
    port: int = Field(80, ge=0, le=65535, alias="PORT")
    port_health: int | None = Field(None, ge=0, le=65535, alias="PORT_HEALTH")  # None: PORT
    runpod_pod_id: str | None = Field(None, alias="RUNPOD_POD_ID")  # X-Runpod-Worker-Id
    prefetch_weights: bool = Field(True, alias="PREFETCH_WEIGHTS")
    volume: Path = Field(Path("/runpod-volume"), alias="RUNPOD_VOLUME_PATH")  # where Runpod mounts volumes
    vllm_config_file: str | None = Field(None, alias="VLLM_CONFIG_FILE")  # vLLM's --config YAML; env wins


@dataclass
class Settings:
    engine_args: argparse.Namespace
    worker: WorkerSettings
    embedded_model: bool


def env_names(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every environment variable that sets a vLLM option, with the option's argparse action."""
    names = {}
    for action in parser._actions:
        if action.dest in NOT_FROM_ENV or not action.option_strings:
            continue
        long = [s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")]
        if long:
            names[long[0][2:].replace("-", "_").upper()] = action
    for alias, dest in ALIASES.items():
        names[alias] = next(a for a in parser._actions if a.dest == dest)
    return names


def _flag(name: str, value: str) -> bool:
    if value.strip().lower() in TRUE:
        return True
    if value.strip().lower() in FALSE:
        return False
    raise ConfigError(f"{name}={_shown(name, value)!r} is not a boolean: use true or false")


def _shown(name: str, value: str) -> str:
    return redact.MASK if redact.is_secret_name(name) else value


def _list_items(value: str) -> list[str]:
    """A list option: a JSON array, one JSON object, or words separated by spaces."""
    text = value.strip()
    if text.startswith("["):
        return [v if isinstance(v, str) else json.dumps(v) for v in json.loads(text)]
    if text.startswith("{"):
        return [text]
    return text.split()


def _argv_item(name: str, value: str, action: argparse.Action) -> list[str]:
    option = next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))
    if isinstance(action, argparse.BooleanOptionalAction):
        return [option] if _flag(name, value) else ["--no-" + option[2:]]
    if action.nargs == 0:  # store_true / store_const
        return [option] if _flag(name, value) else []
    if action.nargs in ("+", "*"):
        try:
            return [option, *_list_items(value)]
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}={_shown(name, value)!r} is not a valid JSON list: {e}") from None
    return [f"{option}={value}"]


def engine_argv(env: Mapping[str, str], names: Mapping[str, argparse.Action]) -> tuple[list[str], list[str]]:
    """The vLLM command line the environment describes, and warnings for near-miss names."""
    argv, warnings = [], []
    chosen = {}
    for name, value in env.items():
        action = names.get(name)
        if action is None:
            continue
        # An alias (MODEL_NAME) wins over the plain option name (MODEL).
        if action.dest in chosen and name not in ALIASES:
            continue
        chosen[action.dest] = (name, value)
    for name, value in chosen.values():
        argv += _argv_item(name, value, names[name])
    known = list(names) + [f.alias for f in WorkerSettings.model_fields.values() if f.alias]
    for name in env:
        if name in WORKER_VLLM_ONLY and name not in names:
            warnings.append(f"{name} (a worker-vllm variable) is not read here: {WORKER_VLLM_ONLY[name]}")
        if name in names or name in known or name in WORKER_VLLM_ONLY:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            warnings.append(f"{name} is not a setting this worker reads; did you mean {close[0]}?")
    return argv, warnings


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def config_file_argv(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The options of the YAML file VLLM_CONFIG_FILE names, as vLLM's parser reads them (`--config`):
    checked here, so that a missing or bad file is one line that names the variable."""
    where = f"VLLM_CONFIG_FILE={path!r}"
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "no such file"
        raise ConfigError(f"{where}: {what}; name a YAML file of vLLM options (max-model-len: 8192, ...)")
    if not path.endswith((".yaml", ".yml")):
        raise ConfigError(f"{where}: vLLM reads only .yaml or .yml files")
    try:
        with _quiet("vllm.utils.argparse_utils"):  # vLLM logs "check path correctness" for any error
            return parser.load_config_file(path)  # type: ignore[attr-defined]
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - PyYAML's errors, or YAML that is not a mapping of options
        raise ConfigError(f"{where}: {_yaml_problem(e)}") from None


def _yaml_problem(e: Exception) -> str:
    if not type(e).__module__.startswith("yaml"):
        return "is not a YAML mapping of vLLM options (max-model-len: 8192, ...)"
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"is not valid YAML: {problem or str(e).strip().splitlines()[0]}{where}"


def _dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options `argv` sets (`--max_model_len`, `--no-enable-prefix-caching`, `--x.y`)."""
    dests = set()
    for arg in argv:
        if arg.startswith("--"):
            option = "--" + arg[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
            if action := parser._option_string_actions.get(option):
                dests.add(action.dest)
    return dests


def _parse(parser: argparse.ArgumentParser, argv: list[str], names: Mapping[str, argparse.Action],
           env: Mapping[str, str], config_file: str | None = None, in_file: Collection[str] = ()) -> argparse.Namespace:
    def error(message: str) -> NoReturn:
        # argparse says "argument --max-model-len: invalid int value: 'x'"; name the env var instead.
        # An option set in both places: the file's value comes first, so a bad value there fails first.
        for name, action in names.items():
            if name in env and any(f"argument {s}" in message for s in action.option_strings if s.startswith("--")) \
                    and (action.dest not in in_file or repr(env[name]) in message):
                detail = message.split(": ", 1)[-1]
                raise ConfigError(f"{name}={_shown(name, env[name])!r} is not valid: {detail}")
        if config_file:  # the environment's arguments are all known options: the rest is the file's
            raise ConfigError(f"VLLM_CONFIG_FILE={config_file!r}: {message}")
        raise ConfigError(message)

    parser.error = error  # type: ignore[method-assign]
    try:
        return parser.parse_args(argv)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def model_name(env: Mapping[str, str]) -> str | None:
    """The model the environment names: MODEL_NAME, else vLLM's own MODEL."""
    return env.get("MODEL_NAME") or env.get("MODEL") or None


def hub_repo_not_here(name: str) -> bool:
    """Whether `name` is a Hub repo id (org/name) and no path on this machine. os.path answers False,
    not an error, for a name no path can have (too long)."""
    return name.count("/") == 1 and not os.path.exists(name)


def worker_settings(env: Mapping[str, str]) -> WorkerSettings:
    """The worker's own settings in `env`; an empty variable is unset."""
    try:
        return WorkerSettings.model_validate({k: v for k, v in env.items() if v != ""})
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0])
        raise ConfigError(f"{name}={env.get(name)!r} is not valid: {err['msg']}") from None


def in_runpod(env: Mapping[str, str]) -> bool:
    return any(env.get(marker) for marker in RUNPOD_MARKERS)


def from_env(env: Mapping[str, str], parser: argparse.ArgumentParser, *, gpu_count: int = 0,
             tiny_model: Callable[[], str] | None = None, load_format: str | None = None) -> tuple[Settings, list[str]]:
    """Settings and warnings from `env`. `parser` is vLLM's serve parser (see engine.arg_parser).
    `load_format`: the loader the worker picked for the weights it found (startup/loader.py), in
    place of vLLM's choice; a LOAD_FORMAT other than `auto`, or VLLM_CONFIG_FILE's, wins."""
    names = env_names(parser)
    env = dict(env)
    worker = worker_settings(env)
    config_file = worker.vllm_config_file
    file_argv = config_file_argv(parser, config_file) if config_file else []
    in_file = _dests(parser, file_argv)

    def default(dest: str, value: str) -> None:  # the worker's defaults yield to the file too
        if dest not in in_file:
            env.setdefault(dest.upper(), value)

    embedded = not model_name(env) and "model" not in in_file
    if embedded:
        if in_runpod(env):
            raise ConfigError("MODEL_NAME is not set: set it to a Hugging Face repo id (e.g. "
                              "Qwen/Qwen2.5-0.5B-Instruct) or a local path in the endpoint's environment variables")
        if tiny_model is None:
            raise ConfigError("MODEL_NAME is not set")
        env["MODEL_NAME"] = tiny_model()
        env.setdefault("OPENAI_SERVED_MODEL_NAME_OVERRIDE", "tiny-random-llama")
        defaults = TINY_MODEL_DEFAULTS | (TINY_MODEL_CPU_DEFAULTS if gpu_count == 0 else {})
        if "VLLM_CPU_KVCACHE_SPACE" in env:  # the CPU backend's own way to size the KV cache
            defaults.pop("kv_cache_memory_bytes", None)
        for dest, value in defaults.items():
            default(dest, value)
    if gpu_count > 1:
        default("tensor_parallel_size", str(gpu_count))
    if gpu_count and not worker.load_balancer and not worker.enable_openai_admin_routes:
        for dest, value in GPU_QUEUE_DEFAULTS.items():
            default(dest, value)
    for dest, value in WORKER_DEFAULTS.items():
        if dest.upper() in names:  # an option a later vLLM drops is not set
            default(dest, value)
    if worker.fast_boot:
        for dest, value in FAST_BOOT_DEFAULTS.items():
            default(dest, value)
    if load_format and env.get("LOAD_FORMAT", "auto") in VLLMS_LOADER and "load_format" not in in_file:
        env["LOAD_FORMAT"] = load_format
    argv, warnings = engine_argv(env, names)
    # The file's options first, where vLLM's parser would put them for `--config`: the environment's
    # win. Spliced here from the read above, so the file is read once.
    args = _parse(parser, [*file_argv, *argv], names, env, config_file, in_file)
    _env_wins(args, names, env, in_file)
    if args.api_server_count is not None and args.api_server_count < 1:
        raise ConfigError(f"API_SERVER_COUNT={args.api_server_count}: the worker needs at least 1 front-end process")
    if (args.api_server_count or 1) > 1 and worker.enable_openai_admin_routes:
        raise ConfigError(f"API_SERVER_COUNT={args.api_server_count} and ENABLE_OPENAI_ADMIN_ROUTES: an admin route "
                          "(LoRA loading, sleep, prefix cache reset) would change only the front-end process that "
                          "serves it; set API_SERVER_COUNT=1")
    return Settings(args, worker, embedded), warnings


def _env_wins(args: argparse.Namespace, names: Mapping[str, argparse.Action], env: Mapping[str, str],
              in_file: Collection[str]) -> None:
    """Where a later argument cannot undo the file's: a store_true flag the environment turns off,
    and an append option, which would add the environment's value to the file's."""
    for name, action in names.items():
        if name not in env or action.dest not in in_file:
            continue
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction) and not _flag(name, env[name]):
            setattr(args, action.dest, action.default)
        elif isinstance(action, argparse._AppendAction):
            setattr(args, action.dest, getattr(args, action.dest)[-1:])


def vllm_env(env: Mapping[str, str], worker: WorkerSettings) -> dict[str, str]:
    """The environment variables of vLLM and its loaders that the worker's settings imply, where
    `env` sets none."""
    implied = (FAST_BOOT_VLLM_ENV if worker.fast_boot else {}) | (PREFETCH_VLLM_ENV if worker.prefetch_weights else {})
    return {name: value for name, value in implied.items() if name not in env}
