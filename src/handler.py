"""Runpod Serverless entry: `python src/handler.py`, the image's CMD.

`python src/handler.py --test_input '{"input": {...}}'` (or a test_input.json) runs one job
locally. ARCHITECTURE.md says where a job goes from here.
"""

import sys

from worker_vllm.startup import hooks

hooks.install()  # in vLLM's engine processes too: they import this module again

if __name__ == "__main__":
    from worker_vllm.main import main

    main(sys.argv[1:])
