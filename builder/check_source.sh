#!/usr/bin/env bash
# Byte-compiles the worker's source and checks that its modules import (without starting vLLM).
# The Dockerfile runs it at build time; the test suite runs it on the repository's src/.
set -euo pipefail
src="${1:?usage: check_source.sh SRC_DIR}"
python3 -m compileall -q "$src"
cd "$src"
python3 -c "import handler, serve, worker_vllm.main, worker_vllm.router, worker_vllm.local.endpoint"
