"""Environment variables -> vLLM options and worker settings (vLLM's parser; no engine)."""

import pytest

from worker_vllm import config, engine, redact

PARSER = engine.arg_parser()
TINY = "/models/tiny"


def settings(env, **kwargs):
    kwargs.setdefault("tiny_model", lambda: TINY)
    return config.from_env(env, engine.arg_parser(), **kwargs)


def test_vllm_options_by_upper_snake_name():
    s, warnings = settings({"MODEL_NAME": "org/model", "MAX_MODEL_LEN": "4096", "MAX_NUM_SEQS": "32",
                            "GPU_MEMORY_UTILIZATION": "0.85", "QUANTIZATION": "fp8", "KV_CACHE_DTYPE": "fp8",
                            "ENABLE_PREFIX_CACHING": "false", "ENFORCE_EAGER": "1",
                            "SPECULATIVE_CONFIG": '{"method": "ngram", "num_speculative_tokens": 3}'})
    args = s.engine_args
    assert (args.model, args.max_model_len, args.max_num_seqs) == ("org/model", 4096, 32)
    assert args.gpu_memory_utilization == 0.85
    assert (args.quantization, args.kv_cache_dtype) == ("fp8", "fp8")
    assert args.enable_prefix_caching is False and args.enforce_eager is True
    assert args.speculative_config == {"method": "ngram", "num_speculative_tokens": 3}
    assert warnings == []


def test_every_engine_argument_has_an_env_name():
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    names = config.env_names(PARSER)
    options = {a.dest for a in PARSER._actions if a.option_strings}
    fields = [f.name for f in dataclasses.fields(AsyncEngineArgs) if f.name in options]
    assert len(fields) > 100
    assert [f for f in fields if f not in config.NOT_FROM_ENV and f.upper() not in names] == []
    for front_end in ("TOOL_CALL_PARSER", "ENABLE_AUTO_TOOL_CHOICE", "CHAT_TEMPLATE", "ENABLE_FORCE_INCLUDE_USAGE"):
        assert front_end in names


def test_aliases_and_their_precedence():
    s, _ = settings({"MODEL": "plain/name", "MODEL_NAME": "org/model", "MODEL_REVISION": "abc123",
                     "TOKENIZER_NAME": "org/tok", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "my-model"})
    args = s.engine_args
    assert (args.model, args.revision, args.tokenizer) == ("org/model", "abc123", "org/tok")
    assert args.served_model_name == ["my-model"]


def test_list_options_take_json_or_words():
    s, _ = settings({"MODEL_NAME": "m", "LORA_MODULES": '[{"name": "a", "path": "/x"}, "b=/y"]',
                     "SERVED_MODEL_NAME": "one two"})
    assert [m.name for m in s.engine_args.lora_modules] == ["a", "b"]
    assert s.engine_args.served_model_name == ["one", "two"]


def test_tensor_parallel_defaults_to_visible_gpus():
    assert settings({"MODEL_NAME": "m"}, gpu_count=4)[0].engine_args.tensor_parallel_size == 4
    assert settings({"MODEL_NAME": "m", "TENSOR_PARALLEL_SIZE": "2"}, gpu_count=4)[0].engine_args.tensor_parallel_size == 2
    assert settings({"MODEL_NAME": "m"}, gpu_count=0)[0].engine_args.tensor_parallel_size == 1


def test_a_queue_worker_on_a_gpu_defaults_to_four_front_end_processes():
    def count(env, gpu_count=1):
        return settings({"MODEL_NAME": "m"} | env, gpu_count=gpu_count)[0].engine_args.api_server_count

    assert count({}) == 4
    assert count({"API_SERVER_COUNT": "2"}) == 2
    assert count({}, gpu_count=0) is None  # CPU: one process, as vLLM's default
    assert count({"LOAD_BALANCER": "true"}) is None  # vLLM's app over uvicorn runs in one process
    assert count({"ENABLE_OPENAI_ADMIN_ROUTES": "true"}) is None  # an admin route changes one process


@pytest.mark.parametrize("env, fragment", [
    ({"API_SERVER_COUNT": "0"}, "API_SERVER_COUNT=0: the worker needs at least 1 front-end process"),
    ({"API_SERVER_COUNT": "3", "ENABLE_OPENAI_ADMIN_ROUTES": "true"},
     "would change only the front-end process that serves it; set API_SERVER_COUNT=1"),
])
def test_front_end_counts_that_cannot_work_are_refused(env, fragment):
    with pytest.raises(config.ConfigError, match=fragment):
        settings({"MODEL_NAME": "m", **env})


@pytest.mark.parametrize("env, fragments", [
    ({"MAX_MODEL_LEN": "lots"}, ["MAX_MODEL_LEN='lots'", "invalid", "int"]),
    ({"DTYPE": "float7"}, ["DTYPE='float7'", "choose from", "bfloat16"]),
    ({"ENABLE_PREFIX_CACHING": "maybe"}, ["ENABLE_PREFIX_CACHING='maybe'", "true or false"]),
    ({"LORA_MODULES": "[not json"}, ["LORA_MODULES", "JSON"]),
    ({"DEFAULT_BATCH_SIZE": "0"}, ["DEFAULT_BATCH_SIZE='0'", "greater than or equal to 1"]),
    ({"MAX_CONCURRENCY": "many"}, ["MAX_CONCURRENCY='many'", "integer"]),
])
def test_bad_value_is_one_line_naming_variable_value_and_allowed(env, fragments):
    with pytest.raises(config.ConfigError) as err:
        settings({"MODEL_NAME": "m", **env})
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_near_miss_names_get_a_suggestion():
    _, warnings = settings({"MODEL_NAME": "m", "MAX_MODEL_LENGTH": "4096", "DEFAULT_BATCH_SIZ": "3", "PATH": "/bin"})
    assert any("MAX_MODEL_LENGTH" in w and "MAX_MODEL_LEN" in w for w in warnings)
    assert any("DEFAULT_BATCH_SIZ " in w and "DEFAULT_BATCH_SIZE" in w for w in warnings)
    assert len(warnings) == 2


def test_missing_model_name_inside_runpod_is_a_startup_error():
    with pytest.raises(config.ConfigError, match="MODEL_NAME is not set: set it to a Hugging Face repo id"):
        settings({"RUNPOD_POD_ID": "abc"})
    with pytest.raises(config.ConfigError, match="MODEL_NAME"):
        settings({"RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1/job-take/$ID"})


def test_missing_model_name_locally_serves_the_embedded_model():
    s, _ = settings({})
    assert s.embedded_model
    assert s.engine_args.model == TINY
    assert s.engine_args.served_model_name == ["tiny-random-llama"]
    assert s.engine_args.enforce_eager is True
    assert s.engine_args.dtype == "float32" and s.engine_args.kv_cache_memory_bytes == 1 << 30
    assert settings({"VLLM_CPU_KVCACHE_SPACE": "4"})[0].engine_args.kv_cache_memory_bytes is None
    on_gpu = settings({}, gpu_count=1)[0].engine_args
    assert on_gpu.dtype == "auto" and on_gpu.kv_cache_memory_bytes is None


def test_worker_settings_defaults():
    s, _ = settings({"MODEL_NAME": "m"})
    assert (s.worker.default_batch_size, s.worker.default_min_batch_size,
            s.worker.default_batch_size_growth_factor, s.worker.default_max_tokens) == (50, 1, 3, 512)
    assert s.worker.max_concurrency is None


def test_secrets_stay_out_of_argv_and_errors():
    token = "hf_plantedTokenValue123"
    redact.add_secret(token)
    s, _ = settings({"MODEL_NAME": "m", "HF_TOKEN": token, "API_KEY": "sk-planted-key-456"})
    assert s.engine_args.hf_token is None and s.engine_args.api_key is None
    argv, _ = config.engine_argv({"MODEL_NAME": "m", "HF_TOKEN": token}, config.env_names(PARSER))
    assert not any(token in a for a in argv)
    with pytest.raises(config.ConfigError) as err:
        settings({"MODEL_NAME": "m", "MAX_MODEL_LEN": token})
    assert token not in str(err.value)


def test_secret_names():
    assert all(map(redact.is_secret_name, ["HF_TOKEN", "RUNPOD_AI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]))
    assert not any(map(redact.is_secret_name, ["TOKENIZER_NAME", "MAX_NUM_BATCHED_TOKENS", "MODEL_NAME"]))


def test_fast_boot_preset_sets_no_compile_fewer_full_cuda_graphs_and_vllm_env():
    s, _ = settings({"MODEL_NAME": "m", "FAST_BOOT": "true"})
    compilation = s.engine_args.compilation_config
    assert compilation.cudagraph_capture_sizes == [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256]
    assert (compilation.mode, compilation.cudagraph_mode.name) == (0, "FULL")
    assert compilation.pass_config.fuse_allreduce_rms is False  # a compile pass: no FlashInfer workspace for it
    assert config.vllm_env({}, s.worker) == {"VLLM_ENABLE_STARTUP_PLAN": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0",
                                              "INSTANTTENSOR_BACKEND": "BUFFERED"}
    # Each part yields to the variable that sets it.
    env = {"MODEL_NAME": "m", "FAST_BOOT": "1", "VLLM_USE_FLASHINFER_SAMPLER": "1", "INSTANTTENSOR_BACKEND": "URING",
           "COMPILATION_CONFIG": '{"cudagraph_capture_sizes": [1, 8]}'}
    s, _ = settings(env)
    assert s.engine_args.compilation_config.cudagraph_capture_sizes == [1, 8]
    assert config.vllm_env(env, s.worker) == {"VLLM_ENABLE_STARTUP_PLAN": "1"}


def test_without_fast_boot_nothing_changes():
    s, _ = settings({"MODEL_NAME": "m"})
    assert s.engine_args.compilation_config.cudagraph_capture_sizes is None and s.engine_args.load_format == "auto"
    # Only how InstantTensor reads, where a user picks it: through the page cache the prefetch fills.
    assert config.vllm_env({}, s.worker) == {"INSTANTTENSOR_BACKEND": "BUFFERED"}
    s, _ = settings({"MODEL_NAME": "m", "PREFETCH_WEIGHTS": "false"})
    assert config.vllm_env({}, s.worker) == {}
    with pytest.raises(config.ConfigError, match="FAST_BOOT='fast' is not valid: Input should be a valid boolean"):
        settings({"MODEL_NAME": "m", "FAST_BOOT": "fast"})


def test_streams_deliver_every_four_tokens_unless_stream_interval_says():
    assert settings({"MODEL_NAME": "m"})[0].engine_args.stream_interval == 4
    assert settings({"MODEL_NAME": "m", "STREAM_INTERVAL": "1"})[0].engine_args.stream_interval == 1


def test_a_secret_that_holds_another_is_masked_whole():
    for value in ("hf_PLANTED", "hf_PLANTEDsecretTail99", "PLANTEDsec"):  # the short ones first
        redact.add_secret(value)
    assert redact.redact("token=hf_PLANTEDsecretTail99 end") == "token=*** end"


def test_worker_vllm_variables_are_honoured_or_named_with_what_to_set():
    s, warnings = settings({"MODEL_NAME": "m", "OPENAI_RESPONSE_ROLE": "helper", "RAW_OPENAI_OUTPUT": "1",
                            "MIN_BATCH_SIZE": "4", "SWAP_SPACE": "4"})
    assert s.engine_args.response_role == "helper"
    assert "RAW_OPENAI_OUTPUT (a worker-vllm variable) is not read here" in " ".join(warnings)
    assert any("MIN_BATCH_SIZE" in w and "set DEFAULT_MIN_BATCH_SIZE" in w for w in warnings)
    assert any(w.startswith("SWAP_SPACE") for w in warnings)


def config_file(tmp_path, text: str, name: str = "vllm.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_vllm_config_file_is_read_by_vllms_parser(tmp_path):
    path = config_file(tmp_path, "max_model_len: 4096\nenforce_eager: true\ncompilation-config:\n  mode: 0\n")
    args = settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": path})[0].engine_args
    assert (args.max_model_len, args.enforce_eager, args.compilation_config.mode) == (4096, True, 0)


def test_the_environment_wins_over_the_config_file(tmp_path):
    path = config_file(tmp_path, "max_model_len: 4096\nenforce_eager: true\ndisable-log-stats: true\n"
                                 "stream-interval: 2\ntensor-parallel-size: 2\n")
    args = settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": path, "MAX_MODEL_LEN": "8192", "ENFORCE_EAGER": "false",
                     "DISABLE_LOG_STATS": "false"})[0].engine_args
    assert (args.max_model_len, args.enforce_eager, args.disable_log_stats) == (8192, False, False)
    # The worker's own defaults (stream interval, tensor parallel over the visible GPUs) yield to the file.
    assert (args.stream_interval, args.tensor_parallel_size) == (2, 2)
    args = settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": path}, gpu_count=4)[0].engine_args
    assert (args.stream_interval, args.tensor_parallel_size) == (2, 2)


def test_the_config_file_may_name_the_model(tmp_path):
    path = config_file(tmp_path, "model: org/from-file\n")
    s, _ = settings({"VLLM_CONFIG_FILE": path, "RUNPOD_POD_ID": "abc"})
    assert s.engine_args.model == "org/from-file" and not s.embedded_model
    assert settings({"VLLM_CONFIG_FILE": path, "MODEL_NAME": "org/env"})[0].engine_args.model == "org/env"


@pytest.mark.parametrize("name, text, fragments", [
    (None, None, ["no such file"]),
    ("bad.yaml", "max_model_len: [4096\n  enforce_eager: true\n", ["is not valid YAML", "line 2"]),
    ("list.yaml", "- max_model_len\n", ["is not a YAML mapping of vLLM options"]),
    ("empty.yaml", "", ["is not a YAML mapping of vLLM options"]),
    ("vllm.json", "{}", ["only .yaml or .yml"]),
    ("typo.yaml", "max-model-length: 4096\n", ["unrecognized arguments: --max-model-length"]),
    ("value.yaml", "max-model-len: lots\n", ["argument --max-model-len", "'lots'"]),
])
def test_a_missing_or_bad_config_file_is_one_line_naming_it(tmp_path, name, text, fragments):
    path = str(tmp_path / "missing.yaml") if name is None else config_file(tmp_path, text, name)
    with pytest.raises(config.ConfigError) as err:
        settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": path, "MAX_MODEL_LEN": "2048"})
    message = str(err.value)
    assert message.startswith(f"VLLM_CONFIG_FILE={path!r}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_bad_value_in_the_environment_is_still_the_environments(tmp_path):
    path = config_file(tmp_path, "max_model_len: 4096\n")
    with pytest.raises(config.ConfigError, match=r"^MAX_MODEL_LEN='lots' is not valid"):
        settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": path, "MAX_MODEL_LEN": "lots"})


def test_the_loader_the_worker_picked_yields_to_load_format_and_the_config_file(tmp_path):
    for env in ({"MODEL_NAME": "m"}, {"MODEL_NAME": "m", "LOAD_FORMAT": "auto"}, {"MODEL_NAME": "m", "LOAD_FORMAT": ""}):
        s, _ = settings(env, load_format="instanttensor")
        assert s.engine_args.load_format == "instanttensor", env
    s, _ = settings({"MODEL_NAME": "m", "LOAD_FORMAT": "safetensors"}, load_format="instanttensor")
    assert s.engine_args.load_format == "safetensors"
    file = tmp_path / "vllm.yaml"
    file.write_text("load-format: safetensors\n")
    s, _ = settings({"MODEL_NAME": "m", "VLLM_CONFIG_FILE": str(file)}, load_format="instanttensor")
    assert s.engine_args.load_format == "safetensors"
