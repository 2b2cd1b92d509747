#!/bin/sh
# Installs the Python dependencies into /opt/venv and adds the service user.
# Shared by the CPU and the CUDA images of deploy/docker/Dockerfile.
#   install.sh PYTHON TORCH_INDEX
# PYTHON: the interpreter to build the virtual environment with (python3.11).
# TORCH_INDEX: the PyTorch wheel index for torch, e.g. .../whl/cpu or .../whl/cu128.
# requirements.txt pins torch==X; the index's build of that same version
# (X+cpu, X+cu128) satisfies the pin, so the second pip leaves it alone.
set -eu
python=$1
torch_index=$2

# webrtcvad (resemblyzer's silence trimming, services/stt/analysis.py) is published as source
# only: a C compiler and Python's headers while pip builds it, removed again after.
build_deps="gcc libc6-dev"
python_include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$python_include/Python.h" ] || build_deps="$build_deps ${python##*/}-dev"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $build_deps

"$python" -m venv /opt/venv
/opt/venv/bin/pip install --no-cache-dir --upgrade pip
/opt/venv/bin/pip install --no-cache-dir --index-url "$torch_index" \
    "$(grep -E '^torch==' /tmp/requirements.txt)"
/opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
apt-get purge -y --auto-remove $build_deps
rm -rf /var/lib/apt/lists/*
# Byte-compile now: at run time the root filesystem is read-only.
/opt/venv/bin/python -m compileall -q /opt/venv/lib >/dev/null || true

groupadd --gid 10001 voicemesh
useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin voicemesh
