#!/usr/bin/env bash
# Shared by Dockerfile.cpu and Dockerfile.cuda: system packages, the non-root user, a venv with torch first
# (from TORCH_INDEX_URL when set: the CPU build; else PyPI's default build, which bundles CUDA), then the project's
# pinned dependencies read from its pyproject.toml. The project itself is installed after, in a layer of its own
# (`pip install --no-deps`): an edit of the code does not download torch and the rest again.
# Usage: install.sh PYPROJECT_TOML
set -euo pipefail
pyproject=$1

# c++: the CPU INT4 kernel compiles on first use; gcc: Triton builds its launcher; wget: KubeRay's probes.
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ gcc wget ca-certificates tini
rm -rf /var/lib/apt/lists/*

useradd --uid "${HEAVY_UID}" --user-group --create-home --shell /bin/bash heavy
install -d -o heavy -g heavy "${HEAVY_HOME}"

python -m venv /opt/venv
/opt/venv/bin/pip install --no-cache-dir --upgrade pip
torch_index=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then torch_index=(--index-url "${TORCH_INDEX_URL}"); fi
/opt/venv/bin/pip install --no-cache-dir "${torch_index[@]}" "torch==${TORCH_VERSION}"
# The pinned dependencies (the embedded model's packages included); ray[default] adds the dashboard agent that
# `ray start` on a cluster node and KubeRay's health checks need.
requirements=$(mktemp)
python -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "${pyproject}" > "${requirements}"
/opt/venv/bin/pip install --no-cache-dir -r "${requirements}" "ray[default]==${RAY_VERSION}"
rm "${requirements}"
