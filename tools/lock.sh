#!/usr/bin/env bash
# Regenerate megarl's tested dependency locks from setup.py with uv's resolver (`uv pip compile`).
#
#   megarl/locks/cpu.txt        CPU machines and CI (Python 3.11): setup.py + the `dev` extra, torch 2.13.0
#                               (CPU wheel), megatron-core 0.16.1. sglang is installed next to it with
#                               --no-deps (its CUDA pins would replace the CPU stack), see README.
#   megarl/locks/gpu-py311.txt  GPU clusters, Python 3.11: + the `gpu` extra (torch 2.14.1 and everything
#   megarl/locks/gpu-py312.txt  sglang 0.5.23 pins, transformer-engine, flash-attn, sglang-router);
#                               Python 3.12 takes a newer megatron-core.
#
# usage: bash tools/lock.sh                 (needs uv: pip install uv==0.13.10, and PyPI)
#        bash tools/lock.sh --upgrade       move every pin to the newest release setup.py allows (without it,
#                                           uv keeps the pins already in the lock files)
#        TORCH_CPU_WHEELS=DIR bash tools/lock.sh   where the torch CPU wheel lies in a local folder
#
# The CPU lock is resolved against the torch CPU wheel (so none of the CUDA build's nvidia-* packages
# enter it) and written as `torch==2.13.0`: pip picks the CPU build where PyTorch's CPU index
# (https://download.pytorch.org/whl/cpu) is given, PyPI's CUDA build of the same version elsewhere.
# After changing a lock: run the tests on it (.ci/run installs from megarl/locks/cpu.txt) and
# `megarl doctor`; `tools/check_newest.sh` shows how far the newest releases are from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
command -v "$UV" >/dev/null || { echo "lock.sh: uv not found; install it with: pip install uv==0.13.10" >&2; exit 2; }
TORCH_CPU=2.13.0
TORCH_CPU_WHEELS=${TORCH_CPU_WHEELS:-https://download.pytorch.org/whl/cpu/torch/}
export UV_PYTHON_DOWNLOADS=never
UV_ARGS=("$@")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==${TORCH_CPU}+cpu" > "$tmp/torch-cpu.txt"

compile() {  # compile OUT PYTHON PLATFORM [uv args...]
  local out=$1 py=$2 platform=$3
  shift 3
  "$UV" pip compile setup.py --quiet --python-version "$py" --python-platform "$platform" \
    --annotation-style line --custom-compile-command "bash tools/lock.sh" ${UV_ARGS[@]+"${UV_ARGS[@]}"} "$@" -o "$out"
  echo "wrote $out ($(grep -c '==' "$out") packages)"
}

compile megarl/locks/cpu.txt 3.11 x86_64-manylinux_2_28 --extra dev \
  --find-links "$TORCH_CPU_WHEELS" --override "$tmp/torch-cpu.txt"
sed -i -e "s/^torch==${TORCH_CPU}+cpu /torch==${TORCH_CPU}     /" -e "s|--override [^,]*torch-cpu.txt|the CPU wheel (tools/lock.sh)|" megarl/locks/cpu.txt
# sglang 0.5.23 publishes manylinux_2_34 wheels only.
compile megarl/locks/gpu-py311.txt 3.11 x86_64-manylinux_2_34 --extra dev --extra gpu
compile megarl/locks/gpu-py312.txt 3.12 x86_64-manylinux_2_34 --extra dev --extra gpu
