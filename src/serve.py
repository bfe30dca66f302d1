"""A local endpoint with Runpod's HTTP shapes, on the worker's embedded or configured model:

    RUNPOD_LOCAL_API_KEY=KEY python src/serve.py [--host 127.0.0.1] [--port 8000] [--api-key KEY]

worker_vllm/local/endpoint.py says what it serves. It reads the worker's environment variables,
logs like the worker, exits 1 when vLLM's engine dies, and drains its jobs on SIGTERM.
"""

import sys

from worker_vllm.startup import hooks

hooks.install()  # in vLLM's engine processes too: they import this module again

if __name__ == "__main__":
    from worker_vllm.local.endpoint import main

    main(sys.argv[1:])
