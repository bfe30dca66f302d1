"""Writes vLLM's model-info cache into the image, so that a worker with no network volume (its
caches empty at every start) does not spend 13-33 s inspecting the model's class in a second
Python process. The Dockerfile runs it; it needs no GPU.

  python builder/model_infos.py [ARCHITECTURE ...]   # default: every architecture vLLM knows
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # /src in the image

from worker_vllm import engine

if __name__ == "__main__":
    failed = engine.cache_model_infos(sys.argv[1:] or None)
    # Those are inspected at start as vLLM always does.
    print(f"model_infos: {len(failed)} architectures not inspected here: {' '.join(failed) or '-'}")
