#!/usr/bin/env bash
# The whole GPU run, in parts that each fit one device call; results and logs go to $OUT.
#   bash bench/gpu_run.sh cold        # cold start: empty caches (builder/warm_cache.py), then warm
#   bash bench/gpu_run.sh throughput  # (a) (b) (c) (d) at 256 and 32 concurrent
#   bash bench/gpu_run.sh tests       # the pytest suite's engine tests on the GPU
#   bash bench/gpu_run.sh fastboot    # FAST_BOOT=true: cold start, empty and warm, and throughput of (a) (c)
#   bash bench/gpu_run.sh flashinfer  # FlashInfer's sampler on (JIT-built at start): throughput of (a)
#   bash bench/gpu_run.sh profile     # where start-up goes: import times, a cold start's logs; (c) with stream_interval
#   bash bench/gpu_run.sh fastboot_parts  # FAST_BOOT empty, then warm without and with its startup plan
#   bash bench/gpu_run.sh kv_bytes    # default empty, warm, and warm with KV_CACHE_MEMORY_BYTES (no KV profiling)
#   bash bench/gpu_run.sh weights     # zero weights on disk, out of the page cache: warm start without and with PREFETCH_WEIGHTS
#   bash bench/gpu_run.sh loaders auto fastsafetensors  # the same start with each LOAD_FORMAT named (wheels in .whl/loaders)
#   bash bench/gpu_run.sh bytecode    # vLLM's import without and with torch's bytecode compiled; FAST_BOOT start with it
#   bash bench/gpu_run.sh versions DIR  # FAST_BOOT warm starts of DIR/handler.py (an older src/) and of src/, twice each
#   bash bench/gpu_run.sh interval    # (b), then (a) and (c), with the stream interval of 4 and with vLLM's 1
#   bash bench/gpu_run.sh image       # the image's Python (bench/image_env.py); FAST_BOOT empty starts in it,
#                                     # without and with the image's model-info cache, then warm
#   bash bench/gpu_run.sh image_warm  # after image: warm FAST_BOOT starts, this machine's Python and the image's
#   bash bench/gpu_run.sh fastboot_cost  # (a) with the default settings, then with FAST_BOOT, on one machine
#   bash bench/gpu_run.sh image_weights  # as image, with 15 GiB of weights on local disk, out of the page cache
#   bash bench/gpu_run.sh image_versions DIR  # image_weights' setup and empty start, then its warm starts of
#                                     # DIR/handler.py (an older src/) and of src/, alternating
#   bash bench/gpu_run.sh image_default  # as image_weights, with the default settings instead of FAST_BOOT
#   (throughput takes bench.py's options: bash bench/gpu_run.sh throughput --modes a b c)
# Run `cold` first: it leaves the caches on /runpod-volume that the other parts start from.
# Needs vLLM 0.32 importable (see ../shared/gpu/README.md: PYTHONPATH=/tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
MODEL=/tmp/bench-llama-3.1-8b
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RUNPOD_LOG_LEVEL=WARN VLLM_USE_FLASHINFER_SAMPLER="${VLLM_USE_FLASHINFER_SAMPLER:-0}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
[ -d "$MODEL" ] || python3 bench/make_model.py "$MODEL" > /dev/null
throughput() {  # throughput LABEL ARGS...: bench.py into $OUT/LABEL, its summary lines on stdout
  local label=$1; shift
  python3 bench/bench.py --model "$MODEL" --out "$OUT/$label" "$@" 2>&1 | tee "$OUT/$label.log" | grep -E '^[abcd]_'
}
part="${1:?part: cold, throughput, tests, fastboot, flashinfer, profile, fastboot_parts, kv_bytes, weights, loaders, bytecode, versions, interval, image, image_warm, image_weights, image_versions, image_default or fastboot_cost}"
shift
cold() { python3 bench/cold_start.py --model "$MODEL" --out "$OUT" "$@"; }
in_image() { PATH=/tmp/image/venv/bin:$PATH "$@"; }  # the Python bench/image_env.py made
weights() { ls "$MODEL"/*.safetensors > /dev/null 2>&1 || python3 bench/make_model.py "$MODEL" --weights; }
case "$part" in
  cold) cold ;;
  throughput) throughput throughput "$@" ;;
  tests)
    # pytest and its dependencies travel as wheels in .whl (the GPU machine has no pytest).
    python3 -m pip install -q --no-deps --no-index --target /tmp/pytest-site .whl/*.whl
    PYTHONPATH="$PYTHONPATH:/tmp/pytest-site" python3 -m pytest -q -p no:cacheprovider tests/test_native.py \
      tests/test_handler.py tests/test_validation.py tests/test_cancel_timeout.py tests/test_openai.py \
      tests/test_serve.py > "$OUT/gpu_tests.log" 2>&1
    tail -15 "$OUT/gpu_tests.log" | tee "$OUT/gpu_tests.txt" ;;
  fastboot)
    export FAST_BOOT=true
    cold --label fast_boot
    throughput fast_boot --modes a c ;;
  flashinfer)
    export VLLM_USE_FLASHINFER_SAMPLER=1
    throughput flashinfer_sampler --modes a
    grep -ciE 'flashinfer\.jit|ninja|Building|compil' "$OUT/flashinfer_sampler.log" > "$OUT/flashinfer_jit_lines.txt" ;;
  profile)
    python3 -X importtime -c "import sys; sys.path.insert(0, 'src'); import engine, runpod" 2> "$OUT/importtime.txt"
    cold
    throughput stream_interval --modes a c --concurrency 256 --openai-stream-interval 4 ;;
  fastboot_parts)  # run before kv_bytes and weights: its empty start clears the volume
    export FAST_BOOT=true
    cold --label fast_boot --runs empty
    VLLM_ENABLE_STARTUP_PLAN=0 cold --label fast_boot_without_startup_plan --runs warm
    cold --label fast_boot_warm --runs warm ;;
  kv_bytes)
    cold --label default
    KV_CACHE_MEMORY_BYTES=55G cold --label kv_cache_memory_bytes --runs warm ;;
  weights)  # after kv_bytes, whose caches these starts find
    weights
    export LOAD_FORMAT=auto
    PREFETCH_WEIGHTS=false cold --label weights_no_prefetch --runs warm --evict-weights
    cold --label weights_prefetch --runs warm --evict-weights ;;
  loaders)  # LOAD_FORMAT values; PREFETCH_WEIGHTS=false unless set. Fills the caches first if the volume is empty
    python3 -m pip install -q --no-deps --no-index --target /tmp/loader-site .whl/loaders/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/loader-site" PREFETCH_WEIGHTS="${PREFETCH_WEIGHTS:-false}"
    weights
    [ -n "$(ls -A /runpod-volume/cache 2> /dev/null)" ] || cold --label loaders_cache_fill --runs empty
    for format in "$@"; do
      LOAD_FORMAT=$format timeout 300 python3 bench/cold_start.py --model "$MODEL" --out "$OUT" --runs warm \
        --evict-weights --label "loader_${format}_prefetch_$PREFETCH_WEIGHTS"
    done ;;
  bytecode)  # vLLM's import with and without bytecode for torch, which this machine has none of (an image compiles it)
    python3 -c "
import os, pathlib, sys, torch, transformers
print('dont_write_bytecode:', sys.flags.dont_write_bytecode, 'PYTHONDONTWRITEBYTECODE:', os.environ.get('PYTHONDONTWRITEBYTECODE'))
for module in (torch, transformers):
    root = pathlib.Path(module.__file__).parent
    print(root, len(list(root.rglob('*.py'))), '.py', len(list(root.rglob('*.pyc'))), '.pyc')
" > "$OUT/bytecode.txt"
    imports() { for run in "$@"; do python3 -c "import time; t = time.perf_counter(); import vllm; print('import vllm ($run):', round(time.perf_counter() - t, 1), 's')"; done; }
    imports plain plain >> "$OUT/bytecode.txt"
    export PYTHONPYCACHEPREFIX=/tmp/pycache  # compileall writes here, and imports read from here
    python3 -m compileall -q -j 0 "$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')" > /dev/null
    imports "torch compiled" "torch compiled" >> "$OUT/bytecode.txt"
    cat "$OUT/bytecode.txt"
    FAST_BOOT=true cold --label fast_boot_bytecode --runs warm ;;  # after fastboot, whose caches it finds
  versions)  # after fastboot, whose caches these starts find; alternating, as imports vary by seconds between starts
    export FAST_BOOT=true
    for round in 1 2; do
      cold --label "versions_before_$round" --runs warm --worker "$1/handler.py"
      cold --label "versions_after_$round" --runs warm
    done ;;
  interval)
    throughput interval_4 --modes b a c
    STREAM_INTERVAL=1 throughput interval_1 --modes b a c ;;
  image)
    python3 bench/image_env.py /tmp/image | tee "$OUT/image_env.txt"
    for python in python3 /tmp/image/venv/bin/python; do  # what transformers imports that the image lacks
      $python -c "import sys; sys.path.insert(0, 'src'); import engine
print(sys.executable, 'imported:', sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'pandas', 'pyarrow', 'accelerate'}))"
    done 2>&1 | grep imported: | tee -a "$OUT/image_env.txt"
    export FAST_BOOT=true
    rm -rf ~/.cache/vllm/modelinfos
    in_image cold --label image_without_model_infos --runs empty
    in_image python3 builder/model_infos.py LlamaForCausalLM  # as the Dockerfile does, in vLLM's default cache root
    in_image cold --label image --runs empty warm ;;
  image_warm)  # after image, whose caches these starts find; alternating
    export FAST_BOOT=true
    for round in 1 2; do
      cold --label "machine_python_$round" --runs warm
      in_image cold --label "image_python_$round" --runs warm
    done ;;
  image_weights|image_versions|image_default)
    [ -d /tmp/image ] || python3 bench/image_env.py /tmp/image > "$OUT/image_env.txt"
    export LOAD_FORMAT=auto
    [ "$part" = image_default ] || export FAST_BOOT=true
    in_image python3 builder/model_infos.py LlamaForCausalLM
    weights
    if [ "$part" = image_weights ]; then
      in_image cold --label image_weights --runs empty warm --evict-weights
      in_image cold --label image_weights_2 --runs warm --evict-weights
    elif [ "$part" = image_default ]; then
      in_image cold --label image_default --runs empty warm --evict-weights
    else
      in_image cold --label image_versions --runs empty --evict-weights
      for round in 1 2; do
        in_image cold --label "image_versions_before_$round" --runs warm --evict-weights --worker "$1/handler.py"
        in_image cold --label "image_versions_after_$round" --runs warm --evict-weights
      done
    fi ;;
  fastboot_cost)
    throughput default_a --modes a
    FAST_BOOT=true throughput fast_boot_a --modes a ;;
esac
