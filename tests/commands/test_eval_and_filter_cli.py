"""`megarl eval` and `megarl data filter` end to end on CPU: a small local model served by the
built-in rollout server, real grading, tables and files."""

import json
import os
import subprocess
import sys


def _megarl(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "megarl.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_eval_end_to_end(toy_model, tmp_path):
    out = tmp_path / "eval"
    proc = _megarl("eval", "--model", str(toy_model), "--benchmarks", "toy-arith:heldout:12,gsm8k_test", "--limit", "4",
                   "--template", "none", "--n", "2", "--temperature", "1.0", "--max-new-tokens", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # gsm8k_test's first 4 prompts fit the toy model's 256-token context
    assert "toy-arith:heldout:12" in proc.stdout and "pass@2" in proc.stdout and "average (paper" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"toy-arith:heldout:12", "gsm8k_test"}
    for row in summary.values():
        assert row["problems"] == 4 and row["samples"] == 8
        assert 0 <= row["accuracy"] <= row["pass@2"] <= 1
        assert 0 < row["mean_length"] <= 40 and 0 <= row["truncation_rate"] <= 1 and row["seconds"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16
    toy = [s for s in samples if s["benchmark"] == "toy-arith:heldout:12"]
    acc = sum(s["correct"] for s in toy) / len(toy)
    assert abs(acc - summary["toy-arith:heldout:12"]["accuracy"]) < 1e-9


def test_eval_bad_model_dir(tmp_path):
    proc = _megarl("eval", "--model", str(tmp_path), "--benchmarks", "math500")
    assert proc.returncode == 2 and "not an HF model directory" in proc.stderr


def test_data_filter_keeps_pass_rate_band(toy_model, tmp_path):
    out = tmp_path / "kept.jsonl"
    proc = _megarl("data", "filter", "toy-arith:rl_train:10", "--model", str(toy_model), "--template", "none", "--k", "4",
                   "--min", "0.0", "--max", "0.5", "--max-new-tokens", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rates = [json.loads(line) for line in (tmp_path / "kept.pass_rates.jsonl").read_text().splitlines()]
    assert len(rates) == 10 and all(r["k"] == 4 for r in rates)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {r["id"] for r in rates if r["pass_rate"] <= 0.5}
    assert {r["id"] for r in kept} == expected
