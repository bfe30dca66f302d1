"""The environment a worker starts from: prepared once, written once, before vLLM is imported."""

import gc
import json
import os

import pytest

from worker_vllm.startup import caches, environment, fitness, phases


@pytest.fixture
def model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"w" * 100)
    return tmp_path / "model"


def prepared(environ: dict) -> environment.Startup:
    startup = environment.prepare(environ)
    if startup.prefetching:
        startup.prefetching.wait(30)
    return startup


def test_writes_its_additions_to_the_process_environment_once(model):
    environ = {"MODEL_NAME": str(model), "FAST_BOOT": "true"}
    startup = prepared(environ)
    assert environ == startup.env  # what the settings are read from is what vLLM's processes see
    assert environ["VLLM_ENABLE_STARTUP_PLAN"] == "1" and environ["RUNPOD_LOG_LEVEL"] == "INFO"
    assert environ[phases.FILE_ENV] == str(startup.phases_file) and startup.phases_file.is_file()
    assert startup.engine_started() == {}
    assert not startup.phases_file.exists()  # the engine's processes stop noting phases


def test_vllms_bitsandbytes_and_gguf_plugins_are_left_out_of_a_model_that_uses_neither(model):
    environ = {"MODEL_NAME": str(model)}
    prepared(environ).engine_started()
    assert {"bitsandbytes", "gguf"}.isdisjoint(environ["VLLM_PLUGINS"].split(","))
    assert "lora_filesystem_resolver" in environ["VLLM_PLUGINS"].split(",")  # vLLM's own plugins still load


def test_the_variables_a_user_set_win(model):
    environ = {"MODEL_NAME": str(model), "FAST_BOOT": "true", "VLLM_ENABLE_STARTUP_PLAN": "0",
               "RUNPOD_LOG_LEVEL": "DEBUG"}
    prepared(environ).engine_started()
    assert environ["VLLM_ENABLE_STARTUP_PLAN"] == "0" and environ["RUNPOD_LOG_LEVEL"] == "DEBUG"


def test_an_empty_runpod_log_level_is_replaced(model):
    environ = {"MODEL_NAME": str(model), "RUNPOD_LOG_LEVEL": ""}  # it would crash the SDK's import
    prepared(environ).engine_started()
    assert environ["RUNPOD_LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize("value, reads", [("", True), ("true", True), ("false", False), ("maybe", False)])
def test_prefetch_reads_its_setting_as_the_worker_settings_do(model, value, reads):
    """An empty value is unset (on); a bad one starts nothing here: the settings check reports it."""
    startup = prepared({"MODEL_NAME": str(model), "PREFETCH_WEIGHTS": value})
    assert (startup.prefetching is not None) == reads
    if reads:
        assert startup.prefetching.bytes_read == 100
    startup.engine_started()


def test_a_baked_model_is_filled_in(model, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"model": "acme/tiny", "path": str(model)}))
    environ = {"BAKED_MODEL_MANIFEST": str(manifest)}
    startup = prepared(environ)
    assert startup.env["MODEL_NAME"] == str(model) and startup.env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "acme/tiny"
    assert "MODEL_NAME" not in environ  # read from the manifest by each reader of startup.env, not written
    assert startup.prefetching is not None
    startup.engine_started()


@pytest.mark.parametrize("name", ["a" * 5000, "x" * 300 + "/y", "x" * 300 + "/y.gguf", "x" * 300 + ":Q8_0"])
def test_a_model_name_no_path_can_have_is_left_to_vllms_check(name):
    # Too long for a file name: each probe of the disk takes it for no local model, and vLLM's own
    # check of the name then fails the start in one line (not a traceback from here).
    startup = prepared({"MODEL_NAME": name})
    assert startup.prefetching is None and startup.env["MODEL_NAME"] == name
    if startup.downloading:  # a Hub repo id's shape: its download would be watched
        startup.downloading.stop()


def test_the_sdks_start_up_checks_run_while_vllm_imports_and_are_marked_done_for_its_own_run(model):
    environ = dict(os.environ) | {"MODEL_NAME": str(model), "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    startup = environment.prepare(environ, sdk_checks=True)
    assert startup.checking is not None
    assert {name: environ[name] for name in fitness.DONE} == fitness.DONE  # the SDK's own run skips them
    assert startup.before_engine() >= 0.0  # they passed: no SystemExit
    startup.engine_started()


def test_the_heap_is_frozen_just_before_vllm_forks_its_engine_process(model):
    startup = environment.prepare({"MODEL_NAME": str(model)})
    frozen = gc.get_freeze_count()
    startup.before_engine()
    assert gc.get_freeze_count() > frozen  # the engine process's full collections will skip it
    startup.engine_started()


def test_the_sdks_start_up_checks_are_not_started_where_both_are_skipped(model):
    environ = {"MODEL_NAME": str(model)} | fitness.DONE
    startup = environment.prepare(environ, sdk_checks=True)
    assert startup.checking is None
    startup.engine_started()


def test_sdk_checks_that_hang_stop_the_worker_with_a_line_that_says_so():
    checks = fitness.Checks(os.environ, command="import time; print('checking', flush=True); time.sleep(60)")
    with pytest.raises(SystemExit) as exit_:
        checks.wait(timeout=3)
    assert str(exit_.value.code).startswith("startup failed: the runpod SDK's start-up checks did not finish in 3 s")
    checks._watch.join(5)  # the child was killed: its output ended
    assert not checks._watch.is_alive()


def test_fast_boot_on_a_gpu_picks_instanttensor_for_weights_found_here(model, monkeypatch):
    monkeypatch.setattr(caches, "gpu_name", lambda: "NVIDIA H200")
    startup = prepared({"MODEL_NAME": str(model), "FAST_BOOT": "true"})
    startup.engine_started()
    assert startup.load_format == "instanttensor" and startup.env["INSTANTTENSOR_BACKEND"] == "BUFFERED"
    without = prepared({"MODEL_NAME": str(model)})
    without.engine_started()
    assert without.load_format is None
