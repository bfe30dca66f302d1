"""The progress of a start-up download, in the log while the model's folder in the Hub cache grows."""

import logging
import time

from worker_vllm.startup import download


def test_logs_bytes_rate_and_time_left_while_the_download_grows(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(download.Progress, "_total", lambda self: 4 * 2**20)
    blobs = tmp_path / "models--acme--big" / "blobs"
    with caplog.at_level(logging.INFO, logger="worker"):
        progress = download.Progress(tmp_path / "models--acme--big", "acme/big", None, interval=0.05)
        time.sleep(0.12)  # nothing there yet: nothing logged
        blobs.mkdir(parents=True)
        part = blobs / "0123abcd.incomplete"
        for _ in range(3):
            with open(part, "ab") as f:
                f.write(b"\0" * 2**20)
            time.sleep(0.12)
        progress.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("download: ")]
    assert lines and all(" of 0.00 GiB of acme/big" in line or "GiB of acme/big" in line for line in lines)
    assert "MiB/s" in lines[-1] and "s left" in lines[-1]


def test_watches_only_a_hub_repo_that_is_not_here(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub lookup of the total fails at once
    assert download.start({"MODEL_NAME": str(tmp_path)}) is None
    assert download.start({"MODEL_NAME": "acme/big", "LOAD_FORMAT": "dummy"}) is None
    assert download.start({}) is None
    progress = download.start({"MODEL_NAME": "acme/big", "HF_HUB_CACHE": str(tmp_path)})
    assert progress.folder == tmp_path / "models--acme--big"
    progress.stop()
