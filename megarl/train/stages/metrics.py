"""Metrics stage: what one step reports (rollout, advantages, update statistics reduced over the
ranks, train/inference mismatch, timings, held-out accuracy) and the accuracy table at the end of a run."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from megarl.runtime import collectives
from megarl.train.batch import TrainSequence

# Update statistics reported as token-weighted means over all ranks.
STAT_KEYS = ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/clipfrac", "actor/ppo_kl", "actor/dual_clipfrac",
             "critic/vf_loss", "critic/values")


@dataclasses.dataclass
class StepTimer:
    """Wall-clock seconds per phase of a step: `with timer("update"): ...`."""

    times: dict = dataclasses.field(default_factory=dict)

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t

        return _Ctx()


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def rollout_metrics(seqs: Sequence[TrainSequence], sampled_grades: Sequence, *, prompts: int, filtered: int, rounds: int,
                    truncated_prompts: int, epoch: int, weight_versions, reflection: dict) -> dict:
    """The kept batch (`seqs`) and every graded sample including the groups dynamic sampling dropped."""
    lengths = [len(s.response_ids) for s in seqs]
    correct = [bool(g.correct) for g in sampled_grades]
    metrics = {
        "reward/mean": sum(s.reward for s in seqs) / len(seqs),
        "reward/accuracy": sum(s.correct for s in seqs) / len(seqs),
        "reward/accuracy_all_sampled": sum(correct) / len(correct),
        "reward/has_answer": sum(bool(g.has_answer) for g in sampled_grades) / len(correct),
        "response/length_mean": sum(lengths) / len(lengths),
        "response/length_max": max(lengths),
        "response/length_correct": mean(len(s.response_ids) for s in seqs if s.correct),
        "response/length_incorrect": mean(len(s.response_ids) for s in seqs if not s.correct),
        "response/truncated": sum(s.truncated for s in seqs) / len(seqs),
        "response/model_tokens_mean": mean(s.model_tokens for s in seqs),  # without tool output (multi-turn)
        "data/filtered_groups": filtered,
        "batch/sequences": len(seqs),
        "batch/prompts": prompts,
        "data/sampling_rounds": rounds,
        "data/truncated_prompts": truncated_prompts,
        "data/epoch": epoch,
    }
    numeric = [int(v) for v in weight_versions if v is not None and str(v).isdigit()]
    if numeric:
        metrics["rollout/weight_version"] = min(numeric)
    metrics.update({f"response/{k}": v for k, v in reflection.items()})
    return metrics


def advantage_metrics(seqs: Sequence[TrainSequence]) -> dict:
    return {"advantage/mean": mean(s.advantage for s in seqs), "advantage/abs_mean": mean(abs(s.advantage) for s in seqs)}


def policy_lag(rollout: dict, step: int) -> dict:
    """Optimizer steps between the weights that sampled the batch and the ones it trains (0 on-policy;
    1 with rollout.mode=overlap, up to max_staleness with async); replaces the batch's weight version."""
    out = dict(rollout)
    out["rollout/policy_lag"] = step - out.pop("rollout/weight_version", step)
    return out


def accumulate(stats: list[dict], sums: dict, counts: dict, prefix: str) -> None:
    """Add micro-batch statistics, weighted by their token counts, to running sums."""
    for st in stats:
        tokens = float(st.get("tokens", 0.0))
        for k, v in st.items():
            if k == "tokens":
                continue
            key = prefix + k
            sums[key] = sums.get(key, 0.0) + float(v) * tokens
            counts[key] = counts.get(key, 0.0) + tokens


def reduce_stats(sums: dict, counts: dict) -> dict:
    """Token-weighted means of last-stage stats over all ranks."""
    from megatron.core import parallel_state as ps

    from megarl.train.workers import is_last_stage

    vec = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0.0)] for k in STAT_KEYS], dtype=torch.float64)
    if not is_last_stage() or ps.get_tensor_model_parallel_rank() != 0:
        vec.zero_()
    collectives.all_reduce(vec)
    out = {k: float(vec[i, 0] / vec[i, 1]) for i, k in enumerate(STAT_KEYS) if vec[i, 1] > 0}
    if "actor/kl_loss" in out:
        out["actor/kl"] = out.pop("actor/kl_loss")
    return out


def record_mismatch(totals: list[float], logp: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> None:
    """Add |logp - behaviour| over `mask` to `totals` = [sum, count, max]."""
    d = (logp - behaviour).abs().double()[mask]
    if d.numel():
        totals[0] += d.sum().item()
        totals[1] += d.numel()
        totals[2] = max(totals[2], d.max().item())


def mismatch_metrics(totals: list[float], reporter: bool) -> dict:
    """Train/inference mismatch over all ranks: |actor's log-prob - server's behaviour log-prob|."""
    vec = torch.tensor(totals if reporter else [0.0, 0.0, 0.0], dtype=torch.float64)
    maxv = vec[2].clone()
    collectives.all_reduce(vec[:2])
    collectives.all_reduce(maxv, op="max")
    if vec[1] == 0:
        return {}
    return {"mismatch/logp_abs_mean": float(vec[0] / vec[1]), "mismatch/logp_abs_max": float(maxv)}


def perf_metrics(timer: StepTimer, seqs: Sequence[TrainSequence], step_s: float) -> dict:
    tokens = sum(s.length for s in seqs)
    out = {f"perf/{k}_s": v for k, v in timer.times.items()}
    out.update({"perf/step_s": step_s, "perf/tokens_per_s": tokens / step_s, "perf/tokens": tokens})
    return out


def server_idle(client, busy_before: float, step_s: float) -> dict:
    """The fraction of the step the generating servers sat idle (`busy_before`: the client's busy seconds
    when the step began)."""
    busy = client.busy_seconds() - busy_before
    return {"perf/server_idle_frac": max(0.0, 1.0 - busy / (step_s * len(client.servers)))}


def print_eval_summary(run_dir: Path, console) -> None:
    """Held-out accuracy before training (step 0) and at the last evaluation, as a table (and
    eval_summary.json)."""
    from rich.table import Table

    from megarl.monitoring.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    if not rows:
        return
    first, last = rows[0], rows[-1]
    table = Table(title=f"held-out accuracy: step {first['step']} -> step {last['step']}")
    for col in ("benchmark", "before", "after", "change (points)"):
        table.add_column(col, justify="right" if col != "benchmark" else "left")
    summary = {}
    for key in sorted(k for k in last if k.startswith("eval/") and k.endswith("/accuracy")):
        before, after = first.get(key), last[key]
        name = key[len("eval/"):-len("/accuracy")]
        summary[name] = {"before": before, "after": after, "step_before": first["step"], "step_after": last["step"]}
        delta = "" if before is None else f"{100 * (after - before):+.1f}"
        table.add_row(name, "" if before is None else f"{100 * before:.1f}%", f"{100 * after:.1f}%", delta)
    console.print(table)
    (run_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2))


def evaluate(cfg, client, tokenizer, run_dir: Path, step: int, is_driver: bool, tools=None) -> dict:
    """Held-out accuracy on eval.benchmarks through the rollout servers (the driver asks; every rank
    gets the result)."""
    payload = [{}]
    if is_driver and cfg.eval.benchmarks:
        from megarl.evaluation.harness import EvalSettings, evaluate_benchmarks

        result = evaluate_benchmarks(client, tokenizer, EvalSettings.from_recipe(cfg, baseline=step == 0),
                                     out_dir=run_dir / "eval" / f"step_{step:06d}", tools=tools)
        payload = [{f"eval/{name}/{key}": row[key] for name, row in result.items() for key in ("accuracy", "single_run")}]
    collectives.broadcast_objects(payload, src=0)
    return payload[0]
