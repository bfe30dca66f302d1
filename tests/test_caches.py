"""Caches go on the network volume when one is mounted, keyed by model, vLLM version and GPU."""

from worker_vllm.startup import caches


def test_caches_on_the_volume(tmp_path):
    env = caches.cache_env({"MODEL_NAME": "Qwen/Qwen2.5-7B-Instruct"}, volume=tmp_path, gpu="NVIDIA H100 80GB HBM3")
    assert env["HF_HOME"] == str(tmp_path / "huggingface-cache")
    kernels = tmp_path / "cache" / "Qwen-Qwen2.5-7B-Instruct" / f"vllm-{caches.vllm_version()}" / "NVIDIA-H100-80GB-HBM3"
    assert env["VLLM_CACHE_ROOT"] == str(kernels / "vllm")
    assert env["TRITON_CACHE_DIR"] == str(kernels / "triton")
    assert env["FLASHINFER_WORKSPACE_BASE"] == str(kernels / "flashinfer")


def test_another_gpu_or_model_gets_its_own_kernels(tmp_path):
    h100 = caches.cache_env({"MODEL_NAME": "a/b"}, volume=tmp_path, gpu="NVIDIA H100 80GB HBM3")
    h200 = caches.cache_env({"MODEL_NAME": "a/b"}, volume=tmp_path, gpu="NVIDIA H200")
    other = caches.cache_env({"MODEL_NAME": "a/c"}, volume=tmp_path, gpu="NVIDIA H100 80GB HBM3")
    assert len({h100["VLLM_CACHE_ROOT"], h200["VLLM_CACHE_ROOT"], other["VLLM_CACHE_ROOT"]}) == 3
    assert h100["HF_HOME"] == h200["HF_HOME"] == other["HF_HOME"]  # weights are shared


def test_key_parts_cannot_leave_the_cache_folder():
    assert ".." not in caches.cache_key("../../etc", "0.32.0", "x/../y").parts


def test_vllm_version_and_gpu_are_found():
    assert caches.vllm_version().startswith("0.32")
    assert caches.gpu_name()  # "cpu" here; the model name on a GPU machine


def test_without_a_volume_a_baked_image_s_kernels_are_used(tmp_path):
    (tmp_path / "models" / "cache").mkdir(parents=True)
    env = caches.cache_env({"MODEL_NAME": "/models/org/m"}, volume=tmp_path / "missing", baked=tmp_path / "models")
    assert "HF_HOME" not in env  # the weights are in the image
    assert env["VLLM_CACHE_ROOT"].startswith(str(tmp_path / "models" / "cache" / "models-org-m"))


def test_no_volume_no_baked_kernels_no_change(tmp_path):
    assert caches.cache_env({}, volume=tmp_path / "missing", baked=tmp_path / "missing") == {}


def test_variables_the_user_set_win(tmp_path):
    assert "HF_HOME" not in caches.cache_env({"HF_HOME": "/data/hf"}, volume=tmp_path)


def test_the_image_s_model_infos_seed_a_new_cache_root(tmp_path):
    image = tmp_path / "xdg" / "vllm" / "modelinfos"
    image.mkdir(parents=True)
    (image / "m-Llama.json").write_text('{"hash": "h"}')
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "VLLM_CACHE_ROOT": str(tmp_path / "volume" / "vllm")}
    caches.seed_model_infos(env)
    assert (tmp_path / "volume" / "vllm" / "modelinfos" / "m-Llama.json").read_text() == '{"hash": "h"}'

    (image / "m-Qwen.json").write_text("{}")  # a root that has model infos keeps its own
    caches.seed_model_infos(env)
    assert not (tmp_path / "volume" / "vllm" / "modelinfos" / "m-Qwen.json").exists()


def test_no_seeding_without_a_cache_root_or_image_infos(tmp_path):
    caches.seed_model_infos({"XDG_CACHE_HOME": str(tmp_path)})
    caches.seed_model_infos({"XDG_CACHE_HOME": str(tmp_path / "none"), "VLLM_CACHE_ROOT": str(tmp_path / "v")})
    assert list(tmp_path.iterdir()) == []
