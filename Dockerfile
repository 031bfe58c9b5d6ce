# kd-sweep's image: CUDA PyTorch, the project, kdsweep as the entry point.
#   docker build -t kd-sweep:latest .                         # add --build-arg BAKE_WEIGHTS=1 for MHIST's
#   apptainer build kd-sweep.sif docker-daemon://kd-sweep:latest   # pretrained ResNet50/MobileNetV2
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

# 1: download torchvision's ImageNet weights at build time (compute nodes often have no network)
ARG BAKE_WEIGHTS=0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/torch-cache \
    KDSWEEP_DATA=/data \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/kd-sweep
COPY pyproject.toml README.md ./
COPY kd ./kd
COPY sweep ./sweep
COPY slurm/profiles ./slurm/profiles
# torch and torchvision come from the base image (the project's range admits them): no second torch
RUN pip install --no-cache-dir . \
    && python -c "import torch, torchvision, kd, sweep; print('torch', torch.__version__)"
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then \
      python -c "from torchvision import models as m; m.resnet50(weights='IMAGENET1K_V2'); m.mobilenet_v2(weights='IMAGENET1K_V2')"; \
    fi

# what a job records as the image it ran in (kd.provenance): the commit this image was built from
ARG KDSWEEP_COMMIT=unknown
RUN printf '{"image": "kd-sweep", "commit": "%s", "built": "%s"}\n' "$KDSWEEP_COMMIT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      > /etc/kd-sweep-image

RUN useradd --create-home --uid 1000 kd \
    && mkdir -p /data /results \
    && chown kd:kd /data /results
USER 1000:1000
WORKDIR /results
VOLUME ["/data", "/results"]
ENTRYPOINT ["kdsweep"]
CMD ["--help"]
