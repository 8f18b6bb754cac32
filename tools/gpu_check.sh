#!/usr/bin/env bash
# One-GPU check of what megarl's GPU recipes run, in at most 8 minutes on one H100/H200 (Python 3.11
# or 3.12, CUDA torch and triton installed, no network needed): installs the carried wheels of the
# GPU lock for that Python, or prints a table of every locked package missing or at another version;
# runs the compiled Triton kernel tests; starts SGLang 0.5.23 through megarl's launcher
# (rollout.engine=sglang) when it imports, else runs the same steps on the built-in server and marks
# the SGLang rows skipped; trains a Qwen2 model with Qwen2.5-0.5B's layer shapes in bf16 (TE layers
# when transformer-engine imports, THD packing) for 3 GRPO steps, pushing weights over the
# distributed transport (NCCL update group, weight-update session) to a server on GPU 1 when there
# are two GPUs (on one GPU NCCL refuses two ranks on the device: that row is skipped and the run
# pushes CUDA IPC tensors), and checks the served log-probs against the trainer's (mean
# |difference| per token <= 0.05, tools/gpu_check.py MISMATCH_BOUND);
# runs one colocated step with offload, printing the trainer's device memory before, after and at
# peak, and one step with the optimizer state offloaded. Each step has a time limit. Results: a
# pass/fail/skipped table, gpu_check.json, gpu_check.md, gpu_check.log.
#
# Usage:
#   tools/gpu_check.sh [--out DIR] [--wheels DIR] [--dry-run] [--python PY]
#   tools/gpu_check.sh --fetch-wheels DIR [--python-version 3.12] [--only NAMES] [--budget-mb 48]
#                      [--have FREEZE.txt] [--plan]
# Examples:
#   tools/gpu_check.sh --dry-run --out /tmp/gc   # CPU: files, imports, arguments, recipes, locks, wheel lists
#   tools/gpu_check.sh --fetch-wheels .whl --python-version 3.12 --have image.txt   # where pip works
#   tools/gpu_check.sh --wheels .whl --out results                                 # on the GPU node
#
# --fetch-wheels downloads the GPU lock's wheels for that Python, megarl's own requirements first,
# leaving out the image's CUDA stack (torch, triton, nvidia-*, cuda-*) and what --have lists (the GPU
# image's `pip list --format=freeze`), until the folder reaches --budget-mb; it prints what did not
# fit or has no wheel. The steps and their limits are in tools/gpu_check.py (--help for all options).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { echo "gpu_check: --python needs an interpreter path" >&2; exit 2; }
              PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
command -v "$PY" >/dev/null || { echo "gpu_check: no Python interpreter '$PY' (pass --python PATH)" >&2; exit 2; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO" || exit 1
exec "$PY" "$REPO/tools/gpu_check.py" ${args[@]+"${args[@]}"}
