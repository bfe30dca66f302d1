# The runtime image: downloads the model at start, or reads it from a network volume.
#   docker build -t runpod-worker-vllm .
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    # huggingface_hub 2.x downloads through hf_xet (no hf_transfer any more); this lets it use
    # every core and more memory for a faster start-up download.
    HF_XET_HIGH_PERFORMANCE=1 \
    # FlashInfer's sampler JIT-compiles for minutes at the first start; PyPI's prebuilt kernels
    # (flashinfer-cubin 0.6.13) do not match the FlashInfer vLLM 0.32 pins (0.7.0.post1).
    VLLM_USE_FLASHINFER_SAMPLER=0

# Ubuntu 24.04's Python is 3.12; Triton builds its launchers with gcc and the Python headers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

COPY requirements.txt /requirements.txt
RUN pip install -r /requirements.txt

COPY src /src
COPY builder /builder
# The same script CI runs on the source tree: byte-compiles it and checks that it imports. Then
# vLLM's model-info cache, in its default place: a start with no network volume does not inspect
# the model's class in a second Python process (13-33 s). Then the Triton kernels a start of vLLM
# builds, compiled here for each GPU architecture Runpod rents (no GPU needed; about 35 s on 6
# cores, 32 MiB) into Triton's default cache: an empty start finds them instead of building them
# (20 s less to the first token on an H200).
RUN bash /builder/check_source.sh /src \
    && python3 /builder/model_infos.py \
    && python3 /builder/triton_cache.py

WORKDIR /
CMD ["python3", "/src/handler.py"]
