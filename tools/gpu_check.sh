#!/usr/bin/env bash
# One-GPU check of megarl's GPU path: compiled Triton kernels, kernel benchmark rows, three GRPO
# steps on CUDA + NCCL with the built-in rollout server on the same GPU syncing weights by the
# `tensor` transport (CUDA IPC handles), one step with the optimizer offloaded, and weight-sync
# benchmark rows. Each step has a time limit; together at most 8 minutes on
# one H100/H200 with no network. Results: gpu_check.json and gpu_check.md (plus the benchmarks'
# own JSON and one log) in --out.
#
# Usage:
#   tools/gpu_check.sh [--out DIR] [--wheels DIR] [--dry-run] [--python PY]
#   tools/gpu_check.sh --fetch-wheels DIR        # on a machine with pip access: the pure-Python
#                                                # and cp312 wheels a bare CUDA-torch image lacks
# Examples:
#   tools/gpu_check.sh --dry-run --out /tmp/gc   # CPU: checks every step's imports, arguments, files
#   tools/gpu_check.sh --fetch-wheels .whl       # then, on the GPU node (Python 3.12, CUDA torch):
#   tools/gpu_check.sh --wheels .whl --out results
#
# --dry-run runs on any machine: it checks that every step's files exist, its Python modules
# import, its command-line arguments parse and its recipe overrides validate, without a GPU.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$REPO/gpu_check_out}"
WHEELS=""
DRY=0
FETCH=""
PY="${PYTHON:-python3}"

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --python) PY="$2"; shift 2 ;;
    --fetch-wheels) FETCH="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# Packages megarl needs that a CUDA torch image (torch, triton, transformers, safetensors, numpy,
# sympy, aiohttp, rich, matplotlib, psutil, pyyaml, pytest already there) usually lacks.
# megatron-core 0.16.1 is the version CI tests; pydantic-core's pin follows pydantic's metadata.
WHEEL_SPECS=(megatron-core==0.16.1 pydantic annotated-types typing-inspection "typing-extensions>=4.16"
             math-verify latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
WHEEL_MODULES=(megatron.core pydantic math_verify)

if [ -n "$FETCH" ]; then
  mkdir -p "$FETCH"
  dl() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
           --platform manylinux2014_x86_64 -d "$FETCH" "$@"; }
  dl "${WHEEL_SPECS[@]}" || { echo "gpu_check: pip download failed (network or index?)" >&2; exit 1; }
  core=$(unzip -p "$FETCH"/pydantic-[0-9]*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')
  dl "pydantic-core==$core" || exit 1
  ls -1 "$FETCH"
  exit 0
fi

mkdir -p "$OUT_DIR" || exit 1
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
STEPS_TSV="$OUT_DIR/.steps.tsv"
: > "$STEPS_TSV"

if [ -n "$WHEELS" ]; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_check: no wheels in '$WHEELS' (make them with --fetch-wheels DIR)" >&2; exit 2; }
  if [ "$DRY" = 0 ]; then
    SITE="$(mktemp -d)/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 \
      || { echo "gpu_check: installing the wheels failed, see $LOG" >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    for spec in megatron_core pydantic-[0-9] pydantic_core math_verify; do
      ls "$WHEELS"/${spec}*.whl >/dev/null 2>&1 || { echo "gpu_check: $WHEELS lacks a ${spec%-\[0-9\]} wheel (run --fetch-wheels)" >&2; exit 2; }
    done
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
cd "$REPO" || exit 1

# The run's recipe: the CPU demo's toy model and task, 3 steps, weights pushed as CUDA IPC handles
# (`tensor`) to a built-in server on the same GPU, no overlap so every step syncs before it samples.
RUN_DIR="$(mktemp -d)/gpu_check_run"
TRAIN_ARGS=(configs/tiny_cpu.yaml run.steps=3 run.name=gpu_check "run.output_dir=$RUN_DIR" run.resume=false
            rollout.transport=tensor rollout.mode=sync eval.every=0 logging.wandb=disabled)
# One more step with the distributed optimizer's state offloaded to the CPU (Megatron's hybrid optimizer).
OFFLOAD_ARGS=(configs/tiny_cpu.yaml run.steps=1 run.name=gpu_check_offload "run.output_dir=$RUN_DIR-offload" run.resume=false
              rollout.mode=sync eval.every=0 logging.wandb=disabled checkpoint.every=0
              actor.distributed_optimizer=true actor.optimizer_offload=true)

step() {  # step NAME TIMEOUT_S CMD... : run one step under a timeout, log it, record rc and seconds
  local name="$1" limit="$2"; shift 2
  local start end rc
  echo "=== $name: $*" | tee -a "$LOG"
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  end=$(date +%s%N)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( (end - start) / 1000000 ))e-3" "$*" >> "$STEPS_TSV"
  echo "=== $name: rc=$rc" | tee -a "$LOG"
}

if [ "$DRY" = 1 ]; then
  export MEGARL_DEVICE=cpu
  step files 10 ls tests/kernels/test_gpu_compiled.py tools/bench_kernels.py tools/bench_sync.py configs/tiny_cpu.yaml
  step imports 120 "$PY" -c "import megarl.train.trainer, megarl.rollout.server, megarl.rollout.weight_sync, megarl.kernels.logprob, megarl.kernels.advantages, megatron.core, pydantic, math_verify, triton"
  step kernel_tests_collect 120 "$PY" -m pytest -q --collect-only -p no:cacheprovider tests/kernels/test_gpu_compiled.py
  step bench_kernels_args 60 "$PY" tools/bench_kernels.py --help
  step grpo_recipe 60 "$PY" -m megarl.cli config "${TRAIN_ARGS[@]}"
  step offload_recipe 60 "$PY" -m megarl.cli config "${OFFLOAD_ARGS[@]}"
  step bench_sync_args 60 "$PY" tools/bench_sync.py --help
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: torch sees no CUDA GPU here; use --dry-run on CPU machines" >&2; exit 2; }
  unset TRITON_INTERPRET MEGARL_DEVICE
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
  step kernel_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_gpu_compiled.py
  step bench_kernels 120 "$PY" tools/bench_kernels.py --tokens 4096,16384 --reps 5 --json "$OUT_DIR/bench_kernels.json"
  step grpo_3_steps 120 "$PY" -m megarl.cli train "${TRAIN_ARGS[@]}"
  cp "$RUN_DIR/metrics.jsonl" "$OUT_DIR/grpo_metrics.jsonl" 2>/dev/null
  step grpo_offload_1_step 60 "$PY" -m megarl.cli train "${OFFLOAD_ARGS[@]}"
  step bench_sync 90 "$PY" tools/bench_sync.py --shape qwen2.5-0.5b --tp 1 --bucket-mb 256 --repeats 2 --json "$OUT_DIR/bench_sync.json"
fi

"$PY" - "$OUT_DIR" "$DRY" <<'EOF'
"""Summarize the steps (and, on a GPU, the GRPO run's metrics) as gpu_check.json and gpu_check.md."""
import json, math, platform, sys
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / ".steps.tsv").read_text().splitlines():
    name, rc, secs, cmd = line.split("\t", 3)
    steps.append({"step": name, "rc": int(rc), "seconds": float(secs), "command": cmd, "ok": rc == "0"})
info = {"mode": "dry-run" if dry else "gpu", "host": platform.node(), "python": platform.python_version()}
try:
    import torch
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
except Exception as exc:  # the summary must still be written when torch is broken
    info["torch"] = f"import failed: {exc}"
grpo = []
metrics = out / "grpo_metrics.jsonl"
if metrics.exists():
    grpo = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for row in grpo for v in row.values() if isinstance(v, (int, float)))
    steps.append({"step": "grpo_metrics", "rc": 0 if len(grpo) >= 3 and finite else 1, "seconds": 0.0,
                  "command": f"{len(grpo)} metric rows, all finite: {finite}", "ok": len(grpo) >= 3 and finite})
result = {"info": info, "steps": steps, "ok": all(s["ok"] for s in steps)}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
lines = [f"# gpu_check ({info['mode']})", "", " | ".join(f"{k}: {v}" for k, v in info.items()), "",
         "| step | rc | seconds | command |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']:.1f} | `{s['command']}` |" for s in steps]
keys = ["step", "perf/step_s", "perf/rollout_s", "perf/update_s", "perf/sync_s", "perf/tokens_per_s", "reward/mean", "actor/grad_norm"]
if grpo:
    lines += ["", "GRPO run (CUDA + NCCL, built-in server on the same GPU, `tensor` transport):", "",
              "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in grpo]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if result["ok"] else 1)
EOF
rc=$?
rm -f "$STEPS_TSV"
exit $rc
