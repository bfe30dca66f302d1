"""Caches go on the network volume when one is mounted, keyed by model, vLLM version and GPU."""

import json

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


def test_a_model_name_longer_than_a_file_name_gets_a_key_that_fits(tmp_path):
    long, longer = "a" * 5000, "a" * 5001
    key = caches.cache_key(long, "0.32.0", "NVIDIA H200")
    assert all(len(part) <= 128 for part in key.parts)
    assert key != caches.cache_key(longer, "0.32.0", "NVIDIA H200")
    (tmp_path / key).mkdir(parents=True)  # the file system takes it


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
    caches.seed(env)
    assert (tmp_path / "volume" / "vllm" / "modelinfos" / "m-Llama.json").read_text() == '{"hash": "h"}'

    (image / "m-Qwen.json").write_text("{}")  # a root that has model infos keeps its own
    caches.seed(env)
    assert not (tmp_path / "volume" / "vllm" / "modelinfos" / "m-Qwen.json").exists()


def test_no_seeding_without_a_cache_root_or_image_infos(tmp_path):
    caches.seed({"XDG_CACHE_HOME": str(tmp_path)})
    caches.seed({"XDG_CACHE_HOME": str(tmp_path / "none"), "VLLM_CACHE_ROOT": str(tmp_path / "v")})
    assert list(tmp_path.iterdir()) == []


def test_the_image_s_triton_kernels_for_this_gpu_seed_a_new_kernel_cache(tmp_path):
    shipped = tmp_path / "home" / ".triton" / "cache"
    for entry, arch in (("SM90", 90), ("SM80", 80)):
        (shipped / entry).mkdir(parents=True)
        (shipped / entry / "_topk_topp_kernel.json").write_text(json.dumps({"target": {"backend": "cuda", "arch": arch}}))
        (shipped / entry / "__grp___topk_topp_kernel.json").write_text("{}")
        (shipped / entry / "_topk_topp_kernel.cubin").write_bytes(b"\x7fELF")
    (shipped / "HELPER").mkdir()  # a compiled module, for every architecture
    (shipped / "HELPER" / "cuda_utils.so").write_bytes(b"\x7fELF")
    env = {"TRITON_HOME": str(tmp_path / "home"), "TRITON_CACHE_DIR": str(tmp_path / "volume" / "triton")}
    caches.seed(env, gpu_arch=lambda: 90)
    assert sorted(path.name for path in (tmp_path / "volume" / "triton").iterdir()) == ["HELPER", "SM90"]
    assert (tmp_path / "volume" / "triton" / "SM90" / "_topk_topp_kernel.cubin").read_bytes() == b"\x7fELF"

    (shipped / "NEW").mkdir()  # a cache that exists is the volume's own: left as it is
    caches.seed(env, gpu_arch=lambda: 90)
    assert not (tmp_path / "volume" / "triton" / "NEW").exists()

    caches.seed(env | {"TRITON_CACHE_DIR": str(tmp_path / "unknown-gpu")})  # all of it when the GPU is not known
    assert len(list((tmp_path / "unknown-gpu").iterdir())) == 4


def test_a_cache_place_that_cannot_be_looked_at_does_not_stop_the_start(tmp_path, caplog):
    (tmp_path / "xdg" / "vllm" / "modelinfos").mkdir(parents=True)
    (tmp_path / "home" / ".triton" / "cache").mkdir(parents=True)
    too_long = str(tmp_path / ("x" * 300))
    caches.seed({"XDG_CACHE_HOME": str(tmp_path / "xdg"), "TRITON_HOME": str(tmp_path / "home"),
                 "VLLM_CACHE_ROOT": too_long, "TRITON_CACHE_DIR": too_long}, gpu_arch=lambda: 90)
    assert caplog.text.count("File name too long") == 2


def test_the_gpu_architecture_comes_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert caches.gpu_arch() is None  # no nvidia-smi
    smi.write_text("#!/bin/sh\necho 12.0\necho 12.0\n")
    smi.chmod(0o755)
    assert caches.gpu_arch() == 120
    smi.write_text("#!/bin/sh\necho 'No devices were found'\n")
    assert caches.gpu_arch() is None
