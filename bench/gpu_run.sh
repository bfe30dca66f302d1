#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md, in parts that each fit one device call; results and logs go to $OUT.
# Stage vLLM first (../shared/gpu/README.md), then: bash .gpu/c04/stage.sh && export PYTHONPATH=/tmp/site &&
# bash bench/gpu_run.sh PART [ARGS]. Settings in the environment reach every part (FAST_BOOT=true, ...).
#
#   tests [NAME=VALUE ...] [PYTEST_ARGS]  the engine tests on the GPU, then the process tests (pytest wheels in .whl/)
#   throughput [BENCH_ARGS]   bench.py's (a) AsyncLLM (b) native (c) OpenAI (d) vllm serve + proxy (e) load balancer,
#                             3 interleaved rounds; the model shape from MODEL_CONFIG (bench/*-config.json, 8B by default);
#                             PROFILE=true also samples bench.py's process with py-spy (a wheel in .whl/)
#   cold [COLD_START_ARGS]    cold start in this machine's Python, dummy weights: empty caches, then warm
#                             (--runs load_balancer: LOAD_BALANCER=true, from the first 204 on /ping to the first 200)
#   image [--default] [--dummy] [--warm] [--compare DIR]  the image's Python: FAST_BOOT empty start, then 2 warm
#                             ones, 15 GiB of real weights out of the page cache (the cold-start targets)
#   fastboot_cost [BENCH_ARGS]  (a) with the default settings, then with FAST_BOOT=true, on one machine
#   quant [QUANT_CHECK_ARGS]  one job per quantization (bitsandbytes, fp8, awq, gptq, gguf) on a 1B model made here;
#                             the image's plugins travel as wheels in .whl/quant/ (the staged vLLM has none):
#                             grep -E '^(vllm-bnb-plugin|bitsandbytes|vllm-gguf-plugin|gguf)==' requirements.txt |
#                             xargs pip download -d .whl/quant --no-deps --only-binary :all: --python-version 3.12
#                             --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform any
#   kernels                   what the starts so far left in the volume's kernel caches: the Triton kernels in build
#                             order (bench/triton_kernels.py), and each cache's size
#   triton_record             the image's Python, FAST_BOOT, real weights: an empty start that records the Triton
#                             kernels it compiles (RECORD_TRITON_KERNELS), then builder/triton_cache.py compiles
#                             them for every architecture into Triton's default cache, as the image build does
#   triton_compare [ROUNDS]   empty starts alternating with that cache, with it and the gcc-built launchers Triton < 3.7
#                             builds per kernel (3.7 on, the image's, has none), and with neither (ROUNDS each, 2 by
#                             default); what each start still built; then one warm start
#   start_compare [ROUNDS [SPEC...]]  the image's Python, FAST_BOOT, real weights, the image's Triton kernels for
#                             this GPU (and the launchers Triton < 3.7 builds): ROUNDS (1) of a first start on an
#                             empty volume, then a warm start, of each SPEC in turn. SPEC: LABEL:VERSION[:NAME=VALUE...],
#                             VERSION `prev` (.gpu/prev/src, carried: git archive REV src | tar -x -C .gpu/prev) or
#                             `new` (this one), with those variables; `prev:prev new:new` by default. The image's
#                             weight loaders (fastsafetensors, instanttensor) travel as wheels in .whl/load/ (the
#                             staged vLLM has neither). Results in start_compare.json (per kind of start, the median
#                             and range of the seconds to the first token), logs in start_compare_logs.tgz.
#                             PROFILE=true: then one warm start of this version sampled by py-spy, every process and
#                             thread (cold_start_profiled_warm.pyspy.txt in the logs). KINDS="warm": warm starts only
#                             (from the caches the set-up's first start, or the last start, left)
#   import_compare [ROUNDS]   the image's Python: seconds to import the worker's start-up modules, with the collector
#                             off as the worker imports them (startup/imports.py) and on, alternating, ROUNDS (5) each
#                             (bench/import_time.py); results in import_compare.json
#   cuda_init [NAME=VALUE ...]  the image's Python: who starts CUDA in the worker's process before vLLM's engine
#                             process, and which missing packages it asked for by then (bench/cuda_init.py), e.g.
#                             cuda_init FAST_BOOT=true TENSOR_PARALLEL_SIZE=2; output in cuda_init.txt
#   disk_read [DISK_READ_ARGS]  the weight prefetch's read speed by thread count, 15 GiB of real weights out of
#                             the page cache (bench/disk_read.py)
#   triton_image              as the image has it: builder/triton_kernels.jsonl built for sm_90 and sm_80, then one
#                             empty FAST_BOOT start (dummy weights): what it still built, and the architectures the
#                             worker copied to the volume (this GPU's only)
#
# image's options: --default  the default settings instead of FAST_BOOT; --dummy  dummy weights (no 15 GiB on disk);
#   --warm  no empty start: warm starts from the caches an earlier `image` left on this machine;
#   --compare DIR  each warm start also with DIR/handler.py (another version's src/, e.g. from git archive), alternating.
# Examples: bash bench/gpu_run.sh tests TENSOR_PARALLEL_SIZE=2; bash bench/gpu_run.sh throughput --modes a b c;
#   FAST_BOOT=true bash bench/gpu_run.sh cold
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/out}"
MODEL_CONFIG="${MODEL_CONFIG:-bench/llama-3.1-8b-config.json}"
MODEL="/tmp/bench-$(basename "$MODEL_CONFIG" -config.json)"
IMAGE=/tmp/image  # the image's Python, made by bench/image_env.py
PREV=.gpu/prev/src/handler.py  # start_compare's previous version, carried: git archive REV src | tar -x -C .gpu/prev
VOLUME=/runpod-volume  # where bench/cold_start.py's starts keep their caches, as on Runpod
export PYTHONUNBUFFERED=1 RUNPOD_LOG_LEVEL=WARN VLLM_USE_FLASHINFER_SAMPLER="${VLLM_USE_FLASHINFER_SAMPLER:-0}"

die() { echo "gpu_run.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }  # the lines above

need_vllm() {  # found without importing it (the import takes 10-30 s)
  command -v nvidia-smi > /dev/null || die "no nvidia-smi: this runs on a GPU machine"
  python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('vllm') and u.find_spec('runpod')))" ||
    die "vLLM and the runpod SDK are not importable: stage them (../shared/gpu/README.md), then export PYTHONPATH=/tmp/site"
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
  [ -d "$MODEL" ] || python3 bench/make_model.py "$MODEL" --config "$MODEL_CONFIG" > /dev/null ||
    die "bench/make_model.py failed"
}

throughput() {  # throughput LABEL ARGS...: bench.py into $OUT/LABEL, its summary lines on stdout
  local label=$1 bench status; shift
  python3 bench/bench.py --model "$MODEL" --out "$OUT/$label" "$@" > "$OUT/$label.log" 2>&1 &
  bench=$!
  if [ "${PROFILE:-}" = true ]; then
    # Attached, not launching: a profiler that fails leaves the run alone. --nonblocking samples without
    # pausing the process, so the profiled run's figures still count.
    py_spy && /tmp/py-spy/bin/py-spy record --nonblocking -r 100 -f raw -o "$OUT/$label.pyspy.txt" --pid "$bench" \
      > "$OUT/$label.pyspy.log" 2>&1 &
  fi
  wait "$bench"; status=$?
  grep -E '^[abcde]_' "$OUT/$label.log"
  return "$status"
}
py_spy() {  # /tmp/py-spy/bin/py-spy, from its wheel in .whl/
  [ -x /tmp/py-spy/bin/py-spy ] || python3 -m pip install -q --no-deps --no-index --target /tmp/py-spy .whl/py_spy-*.whl ||
    { echo "gpu_run.sh: no py-spy wheel in .whl/: not profiled" >&2; return 1; }
}
cold() { python3 bench/cold_start.py --model "$MODEL" --out "$OUT" "$@"; }
in_image() { PATH="$IMAGE/venv/bin:$PATH" "$@"; }
weights() {  # 15 GiB of zero bf16 shards next to the model's config, once
  ls "$MODEL"/*.safetensors > /dev/null 2>&1 || python3 bench/make_model.py "$MODEL" --weights > /dev/null ||
    die "writing the weights failed (they need 15 GiB free under /tmp)"
}

tests() {
  local args=() arg status
  for arg in "$@"; do  # NAME=VALUE: into the environment the tests' engines start from
    if [[ $arg =~ ^[A-Z_][A-Z0-9_]*= ]]; then export "${arg?}"; else args+=("$arg"); fi
  done
  # The machine has no pytest: it and its dependencies travel as wheels in .whl/ (pytest-timeout for pyproject's timeout).
  compgen -G ".whl/*.whl" > /dev/null ||
    die "no wheels in .whl/: pip download -d .whl --only-binary :all: --python-version 3.12 pytest pytest-timeout"
  python3 -m pip install -q --no-deps --no-index --target /tmp/pytest-site .whl/*.whl || die "installing .whl/*.whl failed"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/pytest-site"
  python3 -c "import pytest" 2> /dev/null || die "pytest, or a wheel it needs, is missing from .whl/"
  python3 -c "import pytest_timeout" 2> /dev/null || echo "gpu_run.sh: no pytest-timeout in .whl/: no test times out" >&2
  run_pytest() { python3 -m pytest -q -p no:cacheprovider "$@" >> "$OUT/gpu_tests.log" 2>&1; }
  : > "$OUT/gpu_tests.log"
  if [ ${#args[@]} -gt 0 ]; then
    run_pytest "${args[@]}"; status=$?
  else
    # Two runs: the session engine holds most of the GPU's memory until its run ends, and each process
    # test starts a worker with an engine of its own.
    run_pytest -m engine; status=$?
    run_pytest -m process; local process=$?
    [ "$process" -eq 5 ] || [ "$status" -ne 0 ] || status=$process  # 5: no test carries the marker
  fi
  grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed|errors?)' "$OUT/gpu_tests.log" | tee "$OUT/gpu_tests.txt"
  return "$status"
}

image_env() {  # the image's Python, with the model-info cache the Dockerfile builds
  [ -x "$IMAGE/venv/bin/python" ] || python3 bench/image_env.py "$IMAGE" > "$OUT/image_env.txt" ||
    die "bench/image_env.py failed (see $OUT/image_env.txt)"
  in_image python3 builder/model_infos.py LlamaForCausalLM ||  # as the Dockerfile does, in vLLM's default cache root
    die "builder/model_infos.py failed in the image's Python"
}

image() {
  local settings=fast_boot weights=real empty=true compare="" label
  while [ $# -gt 0 ]; do
    case "$1" in
      --default) settings=default ;;
      --dummy) weights=dummy ;;
      --warm) empty=false ;;
      --compare) compare="${2:?--compare DIR}"; shift ;;
      *) die "image: unknown option $1" ;;
    esac
    shift
  done
  [ -z "$compare" ] || [ -f "$compare/handler.py" ] || die "image: no $compare/handler.py to compare with"
  if [ "$empty" = false ]; then
    [ -x "$IMAGE/venv/bin/python" ] && [ -n "$(ls -A "$VOLUME/cache" 2> /dev/null)" ] ||
      die "image --warm starts from the caches of an earlier \`image\` on this machine: run \`image\` first"
  fi
  image_env
  [ "$settings" = default ] || export FAST_BOOT=true
  local evict=()
  if [ "$weights" = real ]; then
    weights
    export LOAD_FORMAT=auto
    evict=(--evict-weights)  # out of the page cache before each start, as on a machine that has not read them
  fi
  label="image_$settings"
  [ "$weights" = real ] || label="${label}_dummy"
  [ "$empty" = false ] || in_image cold --label "$label" --runs empty "${evict[@]}"
  for round in 1 2; do  # alternating, as imports vary by seconds between starts
    [ -z "$compare" ] ||
      in_image cold --label "${label}_before_$round" --runs warm "${evict[@]}" --worker "$compare/handler.py"
    in_image cold --label "${label}_$round" --runs warm "${evict[@]}"
  done
}

SHIPPED="$HOME/.triton/cache"  # Triton's default cache: where builder/triton_cache.py puts the image's kernels
RECORDED=/tmp/triton_kernels.jsonl  # what triton_record's start compiled, for triton_compare in a later call
LAUNCHERS=/tmp/triton-launchers  # the C launchers Triton < 3.7 builds with gcc for each kernel (3.7 on has one for all)
built_at_start() {  # LABEL: what the last start built that the image's cache did not have: kernels, and launchers
  python3 bench/triton_kernels.py "$VOLUME"/cache/*/*/*/triton --except "$SHIPPED" > "$OUT/$1.built.txt"
  echo "$1: built at start: $(tail -1 "$OUT/$1.built.txt")"
}

keep_launchers() {  # DIR: the per-kernel launchers the last start built (Triton < 3.7), copied to DIR
  mkdir -p "$1"
  for so in "$VOLUME"/cache/*/*/*/triton/*/__triton_launcher*.so; do [ -f "$so" ] && cp -r "$(dirname "$so")" "$1/"; done
}

triton_record() {
  image_env; weights
  export FAST_BOOT=true LOAD_FORMAT=auto
  rm -rf "$SHIPPED" "$RECORDED" "$LAUNCHERS"
  RECORD_TRITON_KERNELS=$RECORDED in_image cold --label triton_record --runs empty --evict-weights
  cp "$RECORDED" "$OUT/triton_kernels.jsonl" || die "the start recorded no Triton kernel"
  built_at_start triton_record
  keep_launchers "$LAUNCHERS"  # for triton_compare's "launchers" starts
  local began=$SECONDS
  in_image python3 builder/triton_cache.py --kernels "$RECORDED" | tee "$OUT/triton_cache.txt"
  echo "triton_cache: $((SECONDS - began)) s in all; $(du -sh "$SHIPPED" | cut -f1) in $SHIPPED" | tee -a "$OUT/triton_cache.txt"
}

triton_compare() {  # ROUNDS of: the image's kernels; those and this Triton's launchers (as Triton >= 3.7 starts); none
  local rounds=${1:-2} round
  [ -d "$SHIPPED" ] && [ -x "$IMAGE/venv/bin/python" ] || die "triton_compare needs triton_record's cache: run it first"
  export FAST_BOOT=true LOAD_FORMAT=auto
  for round in $(seq "$rounds"); do  # alternating, as starts vary by seconds
    in_image cold --label "triton_shipped_$round" --runs empty --evict-weights
    built_at_start "triton_shipped_$round"
    cp -r "$LAUNCHERS"/. "$SHIPPED/"
    in_image cold --label "triton_launchers_$round" --runs empty --evict-weights
    built_at_start "triton_launchers_$round"
    (cd "$LAUNCHERS" && for entry in *; do rm -rf "${SHIPPED:?}/$entry"; done)
    mv "$SHIPPED" "$SHIPPED.off"
    in_image cold --label "triton_none_$round" --runs empty --evict-weights
    built_at_start "triton_none_$round"
    mv "$SHIPPED.off" "$SHIPPED"
  done
  in_image cold --label triton_warm --runs warm --evict-weights
}

triton_image() {
  image_env
  rm -rf "$SHIPPED"
  in_image python3 builder/triton_cache.py --archs 90 80 | tee "$OUT/triton_cache.txt"
  FAST_BOOT=true in_image cold --label triton_image --runs empty
  built_at_start triton_image
  # What the worker copied to the volume, by architecture (this GPU's only), and what the start built
  python3 bench/triton_kernels.py "$VOLUME"/cache/*/*/*/triton | tail -1 | tee "$OUT/triton_image_copied.txt"
}

start_compare() {
  local rounds=${1:-1} round arch spec kind
  shift || true
  local specs=("${@:-prev:prev}"); [ $# -gt 0 ] || specs+=(new:new)
  [ -f "$PREV" ] || die "start_compare needs the previous version in .gpu/prev/src (carried)"
  image_env; weights
  export FAST_BOOT=true
  unset LOAD_FORMAT  # the loader is the worker's choice (and vLLM's), as in the image
  if compgen -G ".whl/load/*.whl" > /dev/null; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/load-site .whl/load/*.whl ||
      die "installing .whl/load/*.whl failed"
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/load-site"
  fi
  # Once per machine: the image's kernels, then the launchers a first start builds. Marked, not judged by
  # the cache being there: a start with no volume (cuda_init, cold) fills Triton's default cache too.
  if [ ! -f "$SHIPPED/start_compare.done" ]; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    in_image python3 builder/triton_cache.py --archs "$arch" > "$OUT/triton_cache.txt"
    in_image python3 -X importtime -c "import sys; sys.path.insert(0, 'src'); import worker_vllm.worker" \
      2> "$OUT/importtime.txt"
    in_image cold --label launchers --runs first --evict-weights
    keep_launchers "$SHIPPED"
    touch "$SHIPPED/start_compare.done"
  fi
  for round in $(seq "$rounds"); do  # alternating, as starts vary by seconds
    for kind in ${KINDS:-first warm}; do
      for spec in "${specs[@]}"; do
        start_spec "$spec" "$kind" "$round" || die "start_compare: bad SPEC $spec (LABEL:VERSION[:NAME=VALUE...])"
      done
    done
  done
  if [ "${PROFILE:-}" = true ] && py_spy; then  # then one more warm start of this version, sampled
    in_image cold --label profiled --runs warm --evict-weights --py-spy /tmp/py-spy/bin/py-spy
  fi
  python3 bench/start_summary.py "$OUT"  # one file of results, one of logs: the device returns few files
}

start_spec() {  # SPEC KIND ROUND: one start for start_compare, in a subshell for the SPEC's variables
  local label version vars
  IFS=: read -r label version vars <<< "$1"
  case "$version" in
    prev) version=$PREV ;;
    new) version=src/handler.py ;;
    *) return 1 ;;
  esac
  (
    IFS=: read -ra vars <<< "$vars"
    for var in "${vars[@]}"; do export "${var?}"; done
    in_image cold --label "${2}_${label}_$3" --runs "$2" --real-weights --evict-weights --worker "$version"
  )
}

import_compare() {
  image_env
  in_image python3 bench/import_time.py --rounds "${1:-5}" --out "$OUT/import_compare.json"
}

cuda_init() {
  local arg
  for arg in "$@"; do export "${arg?}"; done
  image_env
  in_image python3 bench/cuda_init.py > "$OUT/cuda_init.txt" 2>&1
  echo "cuda_init $*: exit $? (3: CUDA started in the worker's process)" | tee -a "$OUT/cuda_init.txt"
  grep -E "^(missing packages|  [^ ]+  <- )" "$OUT/cuda_init.txt" || true
}

part="${1:-}"
shift || true
case "$part" in
  tests) need_vllm; tests "$@" ;;
  throughput) need_vllm; throughput "${LABEL:-throughput}" "$@" ;;  # LABEL: several runs in one $OUT
  cold)
    need_vllm
    label=default; [ "${FAST_BOOT:-}" != true ] || label=fast_boot
    cold --label "$label" "$@" ;;
  image) need_vllm; image "$@" ;;
  triton_record) need_vllm; triton_record ;;
  triton_compare) need_vllm; triton_compare "$@" ;;
  triton_image) need_vllm; triton_image ;;
  start_compare) need_vllm; start_compare "$@" ;;
  import_compare) need_vllm; import_compare "$@" ;;
  cuda_init) need_vllm; cuda_init "$@" ;;
  disk_read) need_vllm; weights; python3 bench/disk_read.py "$MODEL" --out "$OUT" "$@" ;;
  fastboot_cost)
    need_vllm
    throughput default_a --modes a "$@"
    FAST_BOOT=true throughput fast_boot_a --modes a "$@" ;;
  quant)
    need_vllm
    if compgen -G ".whl/quant/*.whl" > /dev/null; then
      python3 -m pip install -q --no-deps --no-index --target /tmp/quant-site .whl/quant/*.whl ||
        die "installing .whl/quant/*.whl failed"
      export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/quant-site"
    else
      echo "gpu_run.sh: no wheels in .whl/quant/: bitsandbytes and gguf will fail for want of their plugins" >&2
    fi
    python3 bench/quant_check.py --out "$OUT" "$@" ;;
  kernels)
    mkdir -p "$OUT"
    du -sh "$VOLUME"/cache/*/*/*/* 2> /dev/null | tee "$OUT/kernel_caches.txt"
    for triton in "$VOLUME"/cache/*/*/*/triton; do
      [ -d "$triton" ] || continue
      python3 bench/triton_kernels.py "$triton" --json "$OUT/triton_kernels.json" \
        --source "$(python3 -c 'import vllm, os; print(os.path.dirname(os.path.dirname(vllm.__file__)))')" |
        tee "$OUT/triton_kernels.txt"
    done ;;
  -h|--help) usage ;;
  *) usage >&2; die "${part:+unknown }part: ${part:-none given}" ;;
esac
