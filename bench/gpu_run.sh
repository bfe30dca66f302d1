#!/usr/bin/env bash
# The whole GPU run, in parts that each fit one device call; results and logs go to $OUT.
#   bash bench/gpu_run.sh cold        # cold start: empty caches, then warm
#   bash bench/gpu_run.sh throughput  # (a) (b) (c) (d) at 256 and 32 concurrent
#   bash bench/gpu_run.sh flashinfer  # the same with FlashInfer's sampler on: JIT cost and speed
#   bash bench/gpu_run.sh tests       # the pytest suite's engine tests on the GPU
# Needs vLLM 0.32 importable (see ../shared/gpu/README.md: PYTHONPATH=/tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
MODEL=/tmp/bench-llama-3.1-8b
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RUNPOD_LOG_LEVEL=WARN VLLM_USE_FLASHINFER_SAMPLER="${VLLM_USE_FLASHINFER_SAMPLER:-0}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
[ -d "$MODEL" ] || python3 bench/make_model.py "$MODEL" > /dev/null
case "${1:?part: cold, throughput, flashinfer or tests}" in
  cold) python3 bench/cold_start.py --model "$MODEL" --out "$OUT" ;;
  throughput) python3 bench/bench.py --model "$MODEL" --out "$OUT" 2>&1 | tee "$OUT/throughput.log" | grep -E '^[abcd]_' ;;
  flashinfer)
    export VLLM_USE_FLASHINFER_SAMPLER=1
    python3 bench/cold_start.py --model "$MODEL" --out "$OUT" --label flashinfer_sampler --runs empty
    python3 bench/bench.py --model "$MODEL" --out "$OUT/flashinfer" --modes a --concurrency 256 2>&1 \
      | tee "$OUT/flashinfer.log" | grep -E '^a_' ;;
  tests) VLLM_CPU_KVCACHE_SPACE=1 python3 -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_handler.py \
           tests/test_validation.py tests/test_cancel_timeout.py tests/test_openai.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt" ;;
esac
