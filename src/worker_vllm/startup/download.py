"""Progress of the model's download at start-up, in the log every 10 s.

vLLM downloads the weights in its engine process and logs nothing meanwhile, so a large model looks
like a hung worker, and Runpod marks a worker unhealthy after 7 minutes of start-up unless
RUNPOD_INIT_TIMEOUT says otherwise. A thread watches the model's folder in the Hugging Face cache
and logs the bytes there, the rate and the time left.
"""

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from worker_vllm import config

log = logging.getLogger("worker")
INTERVAL = 10.0


class Progress:
    """Logs what `folder` holds every `interval` seconds while it grows, until `stop`."""

    def __init__(self, folder: Path, repo: str, revision: str | None, interval: float = INTERVAL):
        self.folder, self.repo, self.revision, self.interval = folder, repo, revision, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="download-progress", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        total = self._total()
        began, start_bytes = time.monotonic(), self._bytes()
        last = start_bytes
        while not self._stop.wait(self.interval):
            now = self._bytes()
            if now == last:
                continue
            last = now
            rate = (now - start_bytes) / (time.monotonic() - began)
            line = f"download: {now / 2**30:.2f}"
            line += f" of {total / 2**30:.2f} GiB" if total else " GiB"
            line += f" of {self.repo}, {rate / 2**20:.0f} MiB/s"
            if total and rate > 0 and total > now:
                line += f", about {(total - now) / rate:.0f} s left"
            log.info(line)

    def _bytes(self) -> int:
        """Bytes in the repo's blobs, the ones still downloading included."""
        try:
            return sum(f.stat().st_size for f in (self.folder / "blobs").iterdir() if f.is_file())
        except OSError:  # not there yet
            return 0

    def _total(self) -> int | None:
        """The size of the repo's files, from the Hub; None if it cannot say."""
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(self.repo, revision=self.revision, files_metadata=True)
            return sum(s.size or 0 for s in info.siblings or []) or None
        except Exception:  # offline, gated, a local path: the log shows bytes and rate only
            log.debug("download: no size from the Hub for %s", self.repo, exc_info=True)
            return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval)


def start(env: Mapping[str, str]) -> Progress | None:
    """Watch the download of env's MODEL_NAME, if it is a Hub repo that is not on this machine."""
    model = config.model_name(env)
    if not model or not config.hub_repo_not_here(model) or env.get("LOAD_FORMAT") == "dummy":
        return None
    from huggingface_hub import constants  # here: it reads HF_HOME, which prepare has just written

    folder = Path(env.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE) / ("models--" + model.replace("/", "--"))
    return Progress(folder, model, env.get("MODEL_REVISION") or None)
