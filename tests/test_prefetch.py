"""Reading the weights into memory during the start: which files, from where, how much (no engine)."""

import logging

from worker_vllm.startup import prefetch

MIB = 1 << 20


def write(path, size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w" * size)
    return path


def test_weight_files_are_the_top_level_safetensors_else_bin(tmp_path):
    shards = [write(tmp_path / f"model-0000{i}-of-00002.safetensors", 10) for i in (1, 2)]
    write(tmp_path / "pytorch_model.bin", 10)
    write(tmp_path / "original" / "consolidated.safetensors", 10)
    assert prefetch.weight_files(tmp_path) == shards
    (tmp_path / "bin-only").mkdir()
    assert prefetch.weight_files(tmp_path / "bin-only") == []
    assert prefetch.weight_files(write(tmp_path / "old" / "pytorch_model.bin", 1).parent) == [tmp_path / "old" / "pytorch_model.bin"]


def test_local_folder_is_the_path_or_the_hub_cache_snapshot(tmp_path):
    assert prefetch.local_folder(str(tmp_path)) == tmp_path
    repo = tmp_path / "hub" / "models--org--name"
    write(repo / "snapshots" / "abc123" / "config.json", 2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    cache = str(tmp_path / "hub")
    assert prefetch.local_folder("org/name", cache_dir=cache) == repo / "snapshots" / "abc123"
    assert prefetch.local_folder("org/name", "abc123", cache_dir=cache) == repo / "snapshots" / "abc123"
    assert prefetch.local_folder("org/other", cache_dir=cache) is None  # not downloaded yet
    assert prefetch.local_folder("not/a/repo/id", cache_dir=cache) is None


def test_reads_every_file_up_to_the_budget_and_logs_it(tmp_path, caplog):
    files = [write(tmp_path / f"{i}.safetensors", 3 * MIB) for i in range(2)]
    reading = prefetch.Prefetch(files, budget=10 * MIB)
    reading.wait(30)  # all read
    with caplog.at_level(logging.INFO, logger="worker"):
        reading.stop()
    assert reading.bytes_read == 6 * MIB
    assert "prefetch: 0.01 of 0.01 GiB of weights read into memory" in caplog.text

    capped = prefetch.Prefetch(files, budget=MIB)
    capped.wait(30)
    assert capped.bytes_read == MIB


def test_pieces_follow_the_files_in_order_up_to_the_budget(tmp_path):
    files = [write(tmp_path / "a.safetensors", 250), write(tmp_path / "b.safetensors", 100)]
    assert list(prefetch.pieces(files, budget=1000, size=100)) == [
        (files[0], 0, 100), (files[0], 100, 100), (files[0], 200, 50), (files[1], 0, 100)]
    assert list(prefetch.pieces(files, budget=120, size=100)) == [(files[0], 0, 100), (files[0], 100, 20)]


def test_threads_read_every_byte_once(tmp_path):
    files = [write(tmp_path / f"{i}.safetensors", 1000 + i) for i in range(9)]
    reading = prefetch.Prefetch(files, budget=1 << 40, threads=4)
    reading.wait(30)
    assert reading.bytes_read == reading.total == 9036


def test_a_file_it_cannot_read_ends_the_reading_not_the_start(tmp_path, caplog):
    broken = prefetch.Prefetch([tmp_path], budget=MIB)  # a folder: open() fails
    with caplog.at_level(logging.INFO, logger="worker"):
        broken.stop()
    assert broken.bytes_read == 0
    assert "prefetch: stopped reading weights" in caplog.text and "prefetch: 0.00 of" in caplog.text


def test_reads_only_weights_that_will_be_loaded(tmp_path):
    write(tmp_path / "model.safetensors", 100)
    reading = prefetch.start(prefetch.local_weights({"MODEL_NAME": str(tmp_path)}))
    reading.wait(30)
    assert reading.bytes_read == 100
    assert prefetch.local_weights({"MODEL_NAME": str(tmp_path), "LOAD_FORMAT": "dummy"}) == []
    assert prefetch.local_weights({"MODEL_NAME": str(tmp_path / "nothing-here")}) == []
    assert prefetch.local_weights({}) == []
    assert prefetch.start([]) is None


def test_a_model_in_one_file_is_read_too(tmp_path):
    gguf = write(tmp_path / "chat-7b-Q4_K_M.gguf", 100)
    reading = prefetch.start(prefetch.local_weights({"MODEL_NAME": str(gguf)}))
    reading.wait(30)
    assert reading.files == [gguf] and reading.bytes_read == 100


def test_a_name_no_path_can_have_reads_nothing():
    # Too long for a file name: the start goes on, and vLLM's own check of the name fails it in one line.
    assert prefetch.local_weights({"MODEL_NAME": "a" * 5000}) == []
