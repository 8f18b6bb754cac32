"""Benchmark evaluation: generate through rollout servers, grade, and summarize per benchmark.

Metrics per benchmark: accuracy (mean over all samples = avg@n), pass@k (unbiased estimator,
k = n), mean response length in tokens, truncation rate, answers/s. Per-sample rows go to
JSON Lines so results can be inspected and compared; averages.json holds the two labelled averages. A named protocol (`protocol`, see
megarl.evaluation.protocols) replaces n, temperature, top-p and the token limit with a paper's.

A benchmark whose requests failed (a server rejected them) raises `EvaluationFailed`: no score is
reported from failed requests. The client caps each request's new tokens at what the model's
context leaves after the prompt (`RolloutClient(context_length=...)`), as vLLM does, so a 4k-context
model evaluated with a 16000-token protocol generates up to its length instead of being rejected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from megarl.runtime.seeds import fold_seed

if TYPE_CHECKING:  # the recipe's sections; megarl.config imports megarl.evaluation.protocols
    from megarl.config import Config, EvalConfig, RewardConfig


@dataclasses.dataclass
class EvalSettings:
    """One evaluation run. No defaults here: the recipe's sections (megarl.config) hold them, and
    `megarl eval` builds the same sections from its flags."""

    eval: EvalConfig  # benchmarks, protocol, sampling, limit
    reward: RewardConfig  # answer extraction and grading time limit, as training grades
    template: str  # prompt template (data.template)
    seed: int  # sampling seed
    stop_token_ids: list[int]  # token ids that end a response (eval.stop_token_ids, else rollout.stop_token_ids)
    template_stops: bool  # stop at the template's stop strings (rollout.template_stops)
    baseline: bool  # the model is the base model (step 0): a protocol with baseline_greedy decodes its single run greedily

    @classmethod
    def from_recipe(cls, cfg: Config, *, baseline: bool) -> EvalSettings:
        """The held-out evaluation of a training run (`baseline`: of its initial weights)."""
        stops = cfg.eval.stop_token_ids if cfg.eval.stop_token_ids is not None else cfg.rollout.stop_token_ids
        return cls(eval=cfg.eval, reward=cfg.reward, template=cfg.data.template, seed=fold_seed(cfg.run.seed, 62),
                   stop_token_ids=list(stops), template_stops=cfg.rollout.template_stops, baseline=baseline)


class EvaluationFailed(RuntimeError):
    """Some requests of a benchmark failed; its score would count them as wrong, so none is given."""


def sampling_for(ev: EvalConfig, benchmark: str, template: str) -> tuple[int, float, float, int, tuple[str, ...]]:
    """(n, temperature, top_p, max_new_tokens, extra stop strings) for one benchmark: the named
    protocol's, or the section's own values under protocol=custom."""
    from megarl.evaluation.protocols import get_protocol

    protocol = get_protocol(ev.protocol)
    if protocol is None:
        return ev.n, ev.temperature, ev.top_p, ev.max_new_tokens, ()
    n = protocol.n_per_benchmark.get(benchmark, protocol.n)
    return n, protocol.temperature, protocol.top_p, protocol.max_new_tokens, protocol.extra_stops.get(template, ())


def single_run_sampling(ev: EvalConfig, benchmark: str, template: str, baseline: bool) -> tuple[float, float] | None:
    """(temperature, top_p) of a separate single run of `benchmark`, when the paper's one-run score is not the
    first of its samples: a base model's greedy run under a protocol with baseline_greedy. None: sample 0 is the run."""
    from megarl.evaluation.protocols import get_protocol

    protocol = get_protocol(ev.protocol)
    n, temperature, *_ = sampling_for(ev, benchmark, template)
    if protocol is None or not (baseline and protocol.baseline_greedy) or (n == 1 and temperature == 0.0):
        return None
    return 0.0, 1.0


def adds_special_tokens(ev: EvalConfig) -> bool:
    """Whether prompts are encoded with the tokenizer's special tokens (BOS): a named protocol's upstream
    harness does (vLLM with text prompts); custom encodes as training does (without)."""
    from megarl.evaluation.protocols import get_protocol

    protocol = get_protocol(ev.protocol)
    return protocol.add_special_tokens if protocol is not None else False


def averages(results: dict) -> dict[str, float]:
    """The two averages over benchmarks, labelled: the paper's (one run per benchmark: `single_run`) and
    the one over every sample (AIME24 as avg@32 under simplerl-zoo)."""
    if not results:
        return {}
    rows = list(results.values())
    return {
        "average (paper: one run per benchmark)": sum(r["single_run"] for r in rows) / len(rows),
        "average (all samples: avg@n)": sum(r["accuracy"] for r in rows) / len(rows),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate_benchmarks(client, tokenizer, settings: EvalSettings, out_dir: Path | None = None, progress: bool = True,
                        tools=None) -> dict:
    """Run every benchmark; returns {benchmark: summary row}. Writes samples.jsonl and summary.json. With `tools`
    (a megarl.rollout.multi_turn.ToolRunner), the model calls the interpreter as in training."""
    from megarl.data import get_template, load_prompts, render_prompt, stop_strings
    from megarl.rewards.grading import grade_batch
    from megarl.rollout import multi_turn
    from megarl.rollout.client import RolloutError, SamplingParams

    template = get_template(settings.template)
    results = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples_file = (out_dir / "samples.jsonl").open("w")
    for name in settings.eval.benchmarks:
        rows = load_prompts(name)
        if settings.eval.limit:
            rows = rows[: settings.eval.limit]
        started = time.perf_counter()
        special = adds_special_tokens(settings.eval)
        prompts = [tokenizer(render_prompt(template, r.problem, tokenizer), add_special_tokens=special)["input_ids"] for r in rows]
        n, temperature, top_p, max_new_tokens, extra_stops = sampling_for(settings.eval, name, settings.template)
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stop=list(dict.fromkeys([*stop_strings(template, tokenizer, template_stops=settings.template_stops), *extra_stops])),
            stop_token_ids=list(settings.stop_token_ids), sampling_seed=settings.seed,
        )
        single = single_run_sampling(settings.eval, name, settings.template, settings.baseline)
        runs = [(sampling, n, "samples")]
        if single is not None:
            runs.append((dataclasses.replace(sampling, temperature=single[0], top_p=single[1]), 1, "single run"))
        outputs = []
        for run_sampling, run_n, label in runs:
            try:
                outputs.append(multi_turn.generate(client, prompts, run_sampling, run_n, tools))
            except RolloutError as err:
                failed = sum(group is None for group in err.partial_results) if err.partial_results is not None else len(prompts)
                raise EvaluationFailed(
                    f"{name}: {failed} of {len(prompts)} prompts failed ({label}), so no score is reported: {err}") from err
        gen_s = time.perf_counter() - started
        flat = [s for group in outputs[0] for s in group]
        grades = grade_batch(
            [s.text for s in flat], [rows[s.prompt_index].answer for s in flat], template=settings.template,
            timeout=settings.reward.timeout_s, finish_reasons=[s.finish_reason for s in flat],
            extraction_mode=settings.reward.extraction,
        )
        if single is None:  # the paper's one run: each problem's first sample
            single_correct = [bool(g.correct) for s, g in zip(flat, grades) if s.sample_index == 0]
        else:
            firsts = [group[0] for group in outputs[1]]
            single_correct = [bool(g.correct) for g in grade_batch(
                [s.text for s in firsts], [r.answer for r in rows], template=settings.template, timeout=settings.reward.timeout_s,
                finish_reasons=[s.finish_reason for s in firsts], extraction_mode=settings.reward.extraction)]
        correct_per_prompt = [0] * len(rows)
        for s, g in zip(flat, grades):
            correct_per_prompt[s.prompt_index] += int(g.correct)
            if out_dir is not None:
                samples_file.write(json.dumps({
                    "benchmark": name, "id": rows[s.prompt_index].id, "sample": s.sample_index, "response": s.text,
                    "answer": rows[s.prompt_index].answer, "extracted": g.extracted, "correct": bool(g.correct),
                    "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                }) + "\n")
        total = len(flat)
        results[name] = {
            "problems": len(rows),
            "samples": total,
            "accuracy": sum(int(g.correct) for g in grades) / total if total else 0.0,
            "single_run": sum(single_correct) / len(single_correct) if single_correct else 0.0,
            f"pass@{n}": sum(pass_at_k(n, c, n) for c in correct_per_prompt) / len(rows) if rows else 0.0,
            "mean_length": sum(s.completion_tokens for s in flat) / total if total else 0.0,
            "truncation_rate": sum(s.finish_reason == "length" for s in flat) / total if total else 0.0,
            "seconds": time.perf_counter() - started,
            "generation_s": gen_s,
        }
    if out_dir is not None:
        samples_file.close()
        (out_dir / "summary.json").write_text(json.dumps(results, indent=2))
        (out_dir / "averages.json").write_text(json.dumps(averages(results), indent=2))
    return results


def results_table(results: dict, title: str = "evaluation"):
    from rich.table import Table

    table = Table(title=title)
    keys = ["problems", "samples", "accuracy", "single_run"] + [k for k in next(iter(results.values()), {}) if k.startswith("pass@")]
    keys += ["mean_length", "truncation_rate", "seconds"]
    table.add_column("benchmark")
    for k in keys:
        table.add_column(k, justify="right")
    for name, row in results.items():
        table.add_row(name, *[_fmt(row.get(k)) for k in keys])
    if len(results) > 1:
        for label, value in averages(results).items():
            column = "single_run" if label.startswith("average (paper") else "accuracy"
            cells = [_fmt(value) if k == column else "" for k in keys]
            table.add_row(f"[bold]{label}[/]", *cells)
    return table


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
