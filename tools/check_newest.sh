#!/usr/bin/env bash
# Canary for new releases: install megarl from setup.py with no lock (the newest releases its ranges
# admit), run a smoke set, and print every package that differs from the CPU lock, marking failures.
#
# usage: bash tools/check_newest.sh [VENV_DIR]      (default: a fresh temporary venv, removed after)
#
# The smoke set (at most ~5 minutes on 2 cores, with the toy model already in the cache):
#   imports         the trainer, server, weight sync, kernels, megatron-core, transformers, sglang's seams
#   kernels_name    tests/kernels/test_import_name.py: HF's `kernels` and megarl.kernels, from the repo
#                   root and elsewhere, and transformers building a model
#   doctor          `megarl doctor` against the CPU lock (it names each package that differs)
#   conversion      HF -> torch_dist -> a TP2xPP2 model -> torch_dist -> HF, bitwise (tests/checkpoint/test_torch_dist.py)
#   demo_2_steps    `megarl train configs/tiny_cpu.yaml` for 2 steps (pretrains the toy model on first use)
# torch stays at the lock's version: the CPU wheel comes from its own index, and the newest torch is
# what the GPU lock (tools/lock.sh) tracks. sglang stays at 0.5.23 --no-deps, as in the tests.
# When every step passes, move the CPU lock forward: bash tools/lock.sh --upgrade, then run the tests on it.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$(date +%s)
VENV=${1:-}
FRESH=0
if [ -z "$VENV" ]; then VENV=$(mktemp -d)/venv; FRESH=1; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [ $FRESH = 1 ] && rm -rf "$(dirname "$VENV")"' EXIT
TORCH=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' megarl/locks/cpu.txt)
SGLANG=0.5.23
declare -a NAMES RESULTS SECONDS_TAKEN

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name"
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  NAMES+=("$name"); SECONDS_TAKEN+=($(( $(date +%s) - t0 )))
  if [ $rc -eq 0 ]; then
    RESULTS+=("pass")
  else
    RESULTS+=("FAIL (rc=$rc$([ $rc = 124 ] && echo ", timed out after ${limit}s"))")
    grep -v "^WARNING: Location" "$WORK/$name.log" | tail -25 | sed 's/^/   | /'
  fi
}

echo "== venv $VENV (no lock: the newest releases setup.py admits; torch $TORCH, sglang $SGLANG --no-deps)"
python3 -m venv "$VENV" || exit 1
# shellcheck disable=SC1091
. "$VENV/bin/activate"
step install 900 bash -c "pip install -q torch==$TORCH && pip install -q -e '.[dev]' && pip install -q --no-deps sglang==$SGLANG"
export TRITON_INTERPRET=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step imports 120 python -c "import megarl.train.trainer, megarl.rollout.server, megarl.rollout.weight_sync, megarl.kernels.logprob, megatron.core, transformers, kernels, sglang.srt.utils"
step kernels_name 180 python -m pytest -q -p no:cacheprovider tests/kernels/test_import_name.py
step doctor 120 megarl doctor --lock cpu
step conversion 240 python -m pytest -q -p no:cacheprovider "tests/checkpoint/test_torch_dist.py::test_hf_to_torch_dist_at_tp2_pp2_to_hf_is_bitwise"
step demo_2_steps 420 bash -c "cd '$WORK' && megarl train '$REPO/configs/tiny_cpu.yaml' run.steps=2 eval.every=0 run.output_dir='$WORK/run'"

echo
echo "packages that differ from megarl/locks/cpu.txt:"
python - "$REPO/megarl/locks/cpu.txt" <<'EOF'
import sys
from pathlib import Path

from megarl import doctor

lock = doctor.read_lock(Path(sys.argv[1]))
have = doctor.installed_versions()
rows = [(name, version, have.get(name, "not installed")) for name, version in sorted(lock.items())
        if not doctor.same_version(have.get(name, ""), version)]
rows += [(name, "not in the lock", version) for name, version in sorted(have.items())
         if name not in lock and name not in ("megarl", "pip", "setuptools", "wheel", "sglang")]
width = max([len(r[0]) for r in rows] + [7])
print(f"  {'package':<{width}}  {'lock':<16} newest")
for name, locked, newest in rows:
    print(f"  {name:<{width}}  {locked:<16} {newest}")
print(f"  ({len(rows)} differ)" if rows else "  (none: the newest releases are the lock's)")
EOF

echo
echo "smoke set (newest releases):"
failed=0
for i in "${!NAMES[@]}"; do
  printf "  %-14s %-12s %4ss\n" "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}"
  [ "${RESULTS[$i]}" = pass ] || failed=1
done
echo "total $(( $(date +%s) - START ))s"
if [ "${RESULTS[0]}" != pass ]; then
  echo "RESULT: FAIL - installing the newest releases failed (log above): a release may be missing or conflicting"
  exit 1
elif [ $failed -ne 0 ]; then
  echo "RESULT: FAIL - a newest release breaks megarl (logs above); keep the lock, fix or bound the range in setup.py"
  exit 1
fi
echo "RESULT: pass - the newest releases work; move the CPU lock forward with: bash tools/lock.sh --upgrade"
