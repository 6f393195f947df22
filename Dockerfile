# GPU image for pretraining and finetuning: CUDA torch + the project, headless MuJoCo rendering through EGL.
# Build and run: docker/README.md.
#
# The base only needs the CUDA driver plumbing: the PyPI torch wheel carries its own CUDA runtime, cuDNN and NCCL
# (nvidia-* / cuda-toolkit wheels), so a -cudnn-runtime base would ship a second copy of them. torch 2.13.0 on
# PyPI is built for CUDA 13.0, hence a 13.0 base (it also tells the NVIDIA runtime the driver must be >= 580).
# For older GPUs or drivers see "Other CUDA versions" in docker/README.md (BASE_IMAGE / TORCH_INDEX_URL).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (Ubuntu 22.04 universe) and the GL libraries MuJoCo needs for EGL rendering. libEGL_nvidia itself is
# mounted by the NVIDIA container runtime when the "graphics" capability is asked for (below).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        python3.11 \
        python3.11-venv \
        libegl1 \
        libgl1 \
        libgles2 \
        libglvnd0 \
    && rm -rf /var/lib/apt/lists/*

# glvnd finds EGL vendors through these files; the driver's libEGL_nvidia is only used if one names it.
RUN mkdir -p /usr/share/glvnd/egl_vendor.d \
    && printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n' \
        > /usr/share/glvnd/egl_vendor.d/10_nvidia.json

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    MUJOCO_GL=egl \
    PYOPENGL_PLATFORM=egl

# torch first and pinned: setup.py leaves it unpinned on purpose, so the project install below keeps this build.
RUN python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==25.2 \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

WORKDIR /app

# Dependencies only depend on setup.py: install them from it alone (an empty src/ gives a package-less install),
# so editing the code reuses this layer. The project itself goes in after the code, without dependencies.
COPY setup.py ./
RUN mkdir src \
    && pip install --no-cache-dir . \
    && pip uninstall -y control-pretrain \
    && rm -rf build src

COPY src/ src/
COPY configs/ configs/
COPY scripts/ scripts/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build src/*.egg-info \
    && python -c "import sys, torch, dm_control, control_pretrain; assert sys.version_info[:2] == (3, 11)"

# Unprivileged user; outputs/ and data/ are the default output and data folders and the usual mount points.
RUN useradd --create-home --uid 1000 --shell /bin/bash trainer \
    && mkdir -p /app/outputs /app/data \
    && chown 1000:1000 /app/outputs /app/data
USER 1000:1000

CMD ["python", "src/dmc_pretrain.py", "--help"]
