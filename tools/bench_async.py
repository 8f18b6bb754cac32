"""Sync, overlap and async RL side by side on the long-tailed toy task, then a model's prediction for a GPU cluster.

Runs, one after the other in fresh processes pinned to the same --threads cores, the same recipe
(default configs/tiny_cpu_longtail.yaml: the toy task with 30% chain problems, built-in rollout server,
CPU) for the same number of steps (so the same number of trained samples) in three modes:

  sync     rollout.mode=sync
  overlap  rollout.mode=overlap                 (one step off-policy)
  async    rollout.mode=async rollout.partial=true rollout.max_staleness=2

Each is `megarl train CONFIG run.steps=S eval.every=0 checkpoint.hf_export_every=S ...`; from its
metrics.jsonl come wall-clock seconds per step, tokens/s, the time per stage, the rollout servers' idle
fraction, staleness, partial samples and dropped groups (the first --warmup steps are left out of the
means). Held-out accuracy (greedy, strict \\boxed{} grading, the recipe's eval settings) is measured
by `megarl eval` on the base model once and on each run's final weights: evaluating inside the runs
would let the async producer generate ahead during the step-0 evaluation and flatter its step times.

Then it measures what a discrete-event model (tools/async_model.py) needs: the base model's response
lengths at temperature 1 (also printed as p50/p90/p99/max), the built-in server's decode cost per
step as a function of batch size and context (timed on the engine directly), and the trainer's cost per
token and the weight sync's cost (fitted on the sync run's steps). Fed with these, the model replays the
CPU runs (a check of the model against the measurement), and then predicts the same schedules on a GPU
layout (SimpleRL-Zoo Qwen2.5-7B's, with a zero-RL length distribution), whose costs are stated
assumptions: a 127k-parameter model's CPU costs say nothing about a 7B model's GPU costs, so only the
schedule logic carries over. Prints tables and writes JSON (--out).

example:
  python tools/bench_async.py --out /tmp/bench_async.json              # ~6-8 min on 2 cores (model cached)
  python tools/bench_async.py --steps 6 --modes sync async --eval-problems 50   # a quick look
  python tools/bench_async.py --set rollout.max_staleness=1 --out /tmp/k1.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "tiny_cpu_longtail.yaml"
MODES = {
    "sync": ["rollout.mode=sync"],
    "overlap": ["rollout.mode=overlap"],
    "async": ["rollout.mode=async", "rollout.partial=true"],  # max_staleness from --max-staleness
}
STAGES = ["rollout_s", "logprobs_s", "advantages_s", "update_s", "rollout_wait_s", "sync_s"]
IDLE_KEYS = ("perf/server_idle_frac", "rollout/server_idle_frac")  # the name megarl logs it under, then the older one
ROLLOUT_KEYS = ["rollout/staleness_mean", "rollout/staleness_max", "rollout/partial_frac",
                "rollout/dropped_stale", "response/length_mean", "response/length_max", "response/truncated",
                "reward/accuracy"]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bench_trl():
    """Shared pieces of tools/bench_trl.py: core pinning, thread split, child runner, git commit, load."""
    return _load_tool("bench_trl")


def run_env() -> dict:
    """The environment of every run: megarl's own thread choice (`fleet.builtin_thread_split`: each
    built-in server 1 thread; the trainer all pinned cores in sync mode, the rest beside the server in
    overlap and async), nothing forced. Two server threads measured up to 10x slower per decode step
    than one on this shared 2-core machine (megarl/demo/README.md), so no mode gets them."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MEGARL_SERVER_THREADS")}
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def load_recipe(config: Path, overrides: list[str]):
    import megarl.demo  # noqa: F401  registers builtin: models and the toy sets, as the megarl command does
    from megarl.config import ConfigError, load_config

    try:
        return load_config(str(config), list(overrides))
    except ConfigError as err:
        raise SystemExit(f"bench_async: config error: {err}")


def resolve_model(cfg) -> str:
    """The recipe's model directory, built (once, cached) here so that no run's step time includes it."""
    from megarl import model_source

    return str(model_source.resolve(cfg.model.path, tokenizer=cfg.model.tokenizer).hf_dir)


# ---- the three runs ------------------------------------------------------------------------
def mode_overrides(args, mode: str) -> list[str]:
    extra = list(MODES[mode])
    if mode == "async":
        extra.append(f"rollout.max_staleness={args.max_staleness}")
    return extra


class BatchWatcher:
    """Polls the run's built-in server (`GET /server_info`, no token needed) and records the size of
    every batch it runs: the built-in server decodes static batches, so how many sequences share one
    decides how well it uses its decode steps."""

    def __init__(self, log_dir: Path, interval_s: float = 0.2):
        self.log_dir, self.interval = log_dir, interval_s
        self.sizes: dict[int, int] = {}  # batch number -> sequences
        self.stopping = False
        import threading

        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(timeout=5)

    def _url(self) -> str | None:
        for log in sorted(self.log_dir.glob("rollout_server_*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if "listening on http://" in line:
                    return line.rsplit("listening on ", 1)[1].strip()
        return None

    def _run(self) -> None:
        import urllib.request

        url = None
        while not self.stopping:
            time.sleep(self.interval)
            try:
                url = url or self._url()
                if url is None:
                    continue
                with urllib.request.urlopen(url + "/server_info", timeout=2) as response:
                    info = json.loads(response.read())
            except (OSError, ValueError):
                continue
            done, recent = info.get("batches_run", 0), info.get("recent_batch_sequences", [])
            for offset, size in enumerate(reversed(recent)):
                self.sizes.setdefault(done - offset, size)

    def summary(self) -> dict:
        sizes = [self.sizes[k] for k in sorted(self.sizes)]
        return {"batches_seen": len(sizes), "batches_run": max(self.sizes, default=0),
                "mean_sequences": statistics.fmean(sizes) if sizes else None,
                "median_sequences": statistics.median(sizes) if sizes else None,
                "share_under_16": sum(s < 16 for s in sizes) / len(sizes) if sizes else None}


def run_mode(args, mode: str, model_dir: str, work: Path, progress, bt) -> dict:
    out_dir = work / f"run_{mode}"
    overrides = [f"run.steps={args.steps}", "eval.every=0", f"checkpoint.hf_export_every={args.steps}",
                 "logging.wandb=disabled", f"run.output_dir={out_dir}", "checkpoint.every=0", f"model.path={model_dir}",
                 f"data.prompts_per_step={args.prompts}", f"rollout.n={args.n}", *mode_overrides(args, mode), *args.set]
    load_recipe(args.config, overrides)  # a bad override fails here, before any run starts
    cmd = [sys.executable, "-m", "megarl.cli", "train", str(args.config), *overrides]
    metrics = out_dir / "metrics.jsonl"
    log = work / f"{mode}.log"
    load = bt.load_average()
    with BatchWatcher(out_dir / "logs") as watcher:
        rc, wall = bt.run_child(mode, cmd, run_env(), log, metrics, args.steps, progress, bt.megarl_metric_steps,
                                bt.pinned_cores(args.threads))
    if rc != 0:
        raise SystemExit(f"bench_async: megarl train ({mode}) exited with {rc}; see {log}:\n{log.read_text()[-3000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "perf/step_s" in r]
    if len(steps) != args.steps:
        raise SystemExit(f"bench_async: expected {args.steps} steps in {metrics}, found {len(steps)}")
    final = out_dir / "hf" / f"step_{args.steps:06d}"
    return {"mode": mode, "command": "megarl train " + " ".join(cmd[4:]), "wall_s": wall, "load_average_before": load,
            "load_average_after": bt.load_average(), "per_step": steps, "final_model": str(final),
            "server_batches": watcher.summary(),
            **summarize(steps, args.warmup)}


def heldout_accuracy(args, cfg, model: str, tokenizer: str, work: Path, tag: str, bt) -> dict:
    """`megarl eval` of a model directory on the recipe's held-out sets with the recipe's eval settings."""
    out = work / f"eval_{tag}"
    benchmarks = []
    for name in cfg.eval.benchmarks:
        base = name.rsplit(":", 1)[0] if name.count(":") >= 2 else name
        benchmarks.append(f"{base}:{args.eval_problems}" if ":" in name else name)
    cmd = [sys.executable, "-m", "megarl.cli", "eval", "--model", model, "--tokenizer", tokenizer,
           "--benchmarks", ",".join(benchmarks), "--template", cfg.data.template, "--n", str(cfg.eval.n),
           "--temperature", str(cfg.eval.temperature), "--top-p", str(cfg.eval.top_p),
           "--max-new-tokens", str(cfg.eval.max_new_tokens), "--extraction", cfg.reward.extraction,
           "--engine", "builtin", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, bt.pinned_cores(args.threads)))
    if proc.returncode != 0:
        raise SystemExit(f"bench_async: megarl eval ({tag}) exited with {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {name: row["accuracy"] for name, row in summary.items()}


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.fmean(values) if values else None


def summarize(steps: list[dict], warmup: int) -> dict:
    measured = [r for r in steps if r["step"] > warmup] or steps
    step_s = [r["perf/step_s"] for r in measured]
    tokens = [r["perf/tokens"] for r in measured]
    out = {
        "measured_steps": len(measured),
        "step_s_mean": statistics.fmean(step_s),
        "step_s_median": statistics.median(step_s),
        "tokens_per_step": statistics.fmean(tokens),
        "tokens_per_s": sum(tokens) / sum(step_s),
        "stages_s_mean": {k: _mean(measured, f"perf/{k}") for k in STAGES if _mean(measured, f"perf/{k}") is not None},
        "rollout": {k: _mean(measured, k) for k in ROLLOUT_KEYS if _mean(measured, k) is not None},
        "server_idle_frac": next((_mean(measured, k) for k in IDLE_KEYS if _mean(measured, k) is not None), None),
        "staleness_max_all_steps": max((r.get("rollout/staleness_max", 0) for r in steps), default=0),
        "dropped_stale_all_steps": sum(r.get("rollout/dropped_stale", 0) for r in steps),
    }
    return out


# ---- what the model needs ------------------------------------------------------------------
def response_lengths(model_dir: str, prompts: list[str], n: int, max_new_tokens: int, seed: int = 0) -> list[int]:
    """Response tokens (eos included) of n samples per prompt at temperature 1 on the built-in engine."""
    import torch

    from megarl.rollout.engine import GenerationEngine, SequenceRequest
    from megarl.rollout.protocol import SamplingParams

    torch.set_num_threads(1)
    engine = GenerationEngine(model_dir, seed=seed)
    requests = []
    for i, prompt in enumerate(prompts):
        ids = engine.encode(prompt)
        for j in range(n):
            sampling = SamplingParams.from_request({"temperature": 1.0, "max_new_tokens": max_new_tokens,
                                                      "sampling_seed": seed * 1_000_003 + i * 64 + j})
            requests.append(SequenceRequest(input_ids=ids, sampling=sampling))
    lengths = []
    for start in range(0, len(requests), 128):
        lengths.extend(len(r.output_ids) for r in engine.generate(requests[start:start + 128]))
    return lengths


def calibrate_decode(model_dir: str, threads: int, prompt_tokens: int) -> dict:
    """Seconds per decode step of the built-in engine for a few (batch, length) points, and a least-squares
    fit of `step_s + per_seq_s * b + per_ctx_token_s * context` (tools/async_model.DecodeCost)."""
    import numpy as np
    import torch

    from megarl.rollout.engine import GenerationEngine, SequenceRequest
    from megarl.rollout.protocol import SamplingParams

    torch.set_num_threads(threads)
    engine = GenerationEngine(model_dir, seed=0)
    prompt = list(engine.encode("Tom has 23 apples. Then Tom buys 45 more, gives away 12. How many apples does Tom have now?\n"))
    prompt = (prompt * (prompt_tokens // len(prompt) + 1))[:prompt_tokens]
    points = []
    for batch, tokens in ((1, 64), (16, 64), (64, 64), (128, 64), (64, 256), (128, 256)):
        sampling = {"temperature": 1.0, "max_new_tokens": tokens, "ignore_eos": True}
        requests = [SequenceRequest(input_ids=prompt, sampling=SamplingParams.from_request(dict(sampling, sampling_seed=i)))
                    for i in range(batch)]
        engine.generate(requests[:1])  # warm
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            engine.generate(requests)
            best = min(best, time.perf_counter() - start)
        points.append({"batch": batch, "tokens": tokens, "seconds": best})
    # Each run: prefill (not separated here; small beside decode) + `tokens` steps of b rows whose
    # contexts sum to b * (prompt + i) at step i.
    rows, y = [], []
    for p in points:
        b, t = p["batch"], p["tokens"]
        rows.append([t, t * b, b * (prompt_tokens * t + t * (t - 1) / 2)])
        y.append(p["seconds"])
    coef, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(y), rcond=None)
    coef = [max(0.0, float(c)) for c in coef]
    return {"threads": threads, "points": points, "step_s": coef[0], "per_seq_s": coef[1], "per_ctx_token_s": coef[2]}


def fit_update_cost(steps: list[dict], warmup: int) -> dict:
    """Trainer seconds per step (log-probs + advantages + update) against tokens per step: least squares."""
    import numpy as np

    rows = [r for r in steps if r["step"] > warmup] or steps
    x = np.array([r["perf/tokens"] for r in rows], dtype=float)
    y = np.array([sum(r.get(f"perf/{k}", 0.0) for k in ("logprobs_s", "advantages_s", "update_s")) for r in rows])
    if len(rows) >= 3 and x.std() > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = y.sum() / x.sum(), 0.0
    if intercept < 0 or slope < 0:  # noise on a short run: per-token cost only
        slope, intercept = y.sum() / x.sum(), 0.0
    sync = statistics.fmean(r.get("perf/sync_s", 0.0) for r in rows)
    return {"update_per_token_s": float(slope), "update_fixed_s": float(intercept), "sync_s": sync}


def busy_per_step(sim) -> float:
    """A simulated run's server-busy seconds per measured step (all servers together)."""
    return sim.server_busy_s / sim.steps[-1].end_s * sim.step_s if sim.steps[-1].end_s > 0 else 0.0


def model_part(args, cfg, model_dir: str, result: dict, am, console) -> None:
    """Measure the model's inputs, replay the CPU runs with them, and predict the GPU layout."""
    from megarl.demo.builtins import toy_source_rows
    from megarl.demo.toy_task import format_prompt
    from megarl.rollout.fleet import builtin_thread_split

    if "values" not in result.get("base_lengths", {}):
        with console.status("response lengths of the base model at temperature 1"):
            train = [s for s in cfg.data.train if ":" in s][:1] or ["toy-arith-long:rl_train"]
            rows = toy_source_rows(f"{train[0].split(':')[0]}:rl_train:{args.length_prompts}")
            lengths = response_lengths(model_dir, [format_prompt(r["problem"]) for r in rows], 8, cfg.rollout.max_new_tokens)
        result["base_lengths"] = {**am.percentiles(lengths), "samples": len(lengths), "prompts": len(rows),
                                  "max_new_tokens": cfg.rollout.max_new_tokens, "source": train[0], "values": lengths}
    print_lengths(result["base_lengths"], console)
    if result.get("runs"):
        threads = builtin_thread_split(cfg.rollout.num_servers, False)[1]  # 1 in every mode on 2 cores
        with console.status("timing the built-in engine's decode steps"):
            decode = calibrate_decode(model_dir, threads, prompt_tokens=48)
        replay = model_replay(am, result["runs"], result["base_lengths"]["values"], decode, cfg, args)
        result["model_cpu_replay"] = {"decode_calibration": decode, **replay}
        print_replay(replay, console)

    layout = am.GpuLayout()
    zero_rl = am.ZeroRLLengths()
    with console.status("simulating the GPU layout"):
        prediction = am.predict(layout, zero_rl, max_staleness=args.max_staleness, steps=args.gpu_steps)
    info = am.length_percentiles(zero_rl)
    prediction["lengths"] = {"assumed": dataclasses.asdict(zero_rl), **info}
    result["gpu_prediction"] = prediction
    am.print_prediction(prediction, info, console, title="PREDICTION (model, not measured): SimpleRL-Zoo Qwen2.5-7B layout on H100s")


def model_replay(am, results: dict, lengths: list[int], decode: dict, cfg, args) -> dict:
    """The model fed with the measured costs, replaying each CPU run: predicted vs measured s/step.

    Trainer: cost per token and sync cost fitted on each mode's own steps. Decode: the engine's cost
    per step as timed alone (its shape in batch and context), scaled so that the simulated server is
    as busy per step as the measured one was (its `rollout/server_idle_frac`): inside the server,
    during training, decoding is slower than the engine alone, and in overlap and async slower still,
    because the trainer computes beside it on the same cores. What the model then gets wrong is the
    schedule, which is what it is for."""
    some_run = next(iter(results.values()))
    prompt_tokens = int(round(statistics.fmean(r["perf/tokens"] - r["response/length_mean"] * r["batch/sequences"]
                                               for r in some_run["per_step"]) / (args.prompts * args.n)))
    workload = am.Workload(args.prompts, args.n, prompt_tokens, am.empirical_lengths(lengths))
    out = {"prompt_tokens": prompt_tokens, "lengths": am.percentiles(lengths), "modes": {}}
    for mode, result in results.items():
        update = fit_update_cost(result["per_step"], args.warmup)
        schedule = am.Schedule(mode, True, args.max_staleness)

        def cluster_at(scale: float, update=update):
            return am.Cluster(
                servers=cfg.rollout.num_servers,
                decode=am.DecodeCost(*(decode[k] * scale for k in ("step_s", "per_seq_s", "per_ctx_token_s"))),
                update_per_token_s=update["update_per_token_s"], update_fixed_s=update["update_fixed_s"],
                sync_s=update["sync_s"], max_running=256, batching="static", resume="reprefill",  # megarl serve's defaults
            )

        def run(scale: float, schedule=schedule, cluster_at=cluster_at):
            return am.simulate(cluster_at(scale), workload, schedule, steps=max(args.steps, 8), seed=0, warmup=args.warmup)

        measured_idle = result["server_idle_frac"]
        scale = 1.0
        if measured_idle is not None:
            for _ in range(3):  # busy time is nearly linear in the decode cost: a few fixed-point rounds
                predicted_busy = busy_per_step(run(scale))
                if predicted_busy > 0:
                    scale *= (1 - measured_idle) * result["step_s_mean"] / predicted_busy
        sim = run(scale)
        cluster = cluster_at(scale)
        out["modes"][mode] = {"update_fit": update, "decode_scale": scale,
                              "cluster": dataclasses.asdict(cluster), "predicted": sim.summary(),
                              "measured_step_s": result["step_s_mean"],
                              "measured_server_idle_frac": measured_idle}
    return out


# ---- output ---------------------------------------------------------------------------------
def print_tables(result: dict, console) -> None:
    from rich.table import Table

    runs = result["runs"]
    table = Table(title=f"sync vs overlap vs async on {result['config']} ({result['steps']} steps x "
                        f"{result['prompts']} prompts x {result['n']} samples; first {result['warmup']} steps left out)")
    table.add_column("")
    for mode in runs:
        table.add_column(mode, justify="right")

    def row(label, fn):
        cells = []
        for r in runs.values():
            try:
                value = fn(r)
            except (KeyError, TypeError):
                value = None
            cells.append("-" if value is None else value)
        table.add_row(label, *cells)

    base = runs.get("sync")
    row("seconds per step (mean / median)", lambda r: f"{r['step_s_mean']:.2f} / {r['step_s_median']:.2f}")
    row("tokens/s (prompt + response)", lambda r: f"{r['tokens_per_s']:,.0f}")
    if base:
        row("speed-up vs sync (s/step)", lambda r: f"{base['step_s_mean'] / r['step_s_mean']:.2f}x")
    row("rollout / wait / update / sync s", lambda r: " / ".join(
        f"{r['stages_s_mean'].get(k, 0.0):.2f}" for k in ("rollout_s", "rollout_wait_s", "update_s", "sync_s")))
    row("server idle fraction", lambda r: f"{100 * r['server_idle_frac']:.0f}%")
    row("staleness mean / max", lambda r: f"{r['rollout'].get('rollout/staleness_mean', 0.0):.2f} / {r['staleness_max_all_steps']}")
    row("partial samples", lambda r: f"{100 * r['rollout'].get('rollout/partial_frac', 0.0):.1f}%")
    row("dropped stale groups", lambda r: str(r["dropped_stale_all_steps"]))
    row("server batches: count / mean rows", lambda r: f"{r['server_batches']['batches_run']} / "
                                                       f"{r['server_batches']['mean_sequences']:.0f}")
    row("response length mean / max", lambda r: f"{r['rollout']['response/length_mean']:.0f} / {r['rollout']['response/length_max']:.0f}")
    for bench, before in result.get("heldout_base", {}).items():
        row(f"held-out {bench}: base {100 * before:.1f}% ->", lambda r, b=bench: f"{100 * r['heldout'][b]:.1f}%")
    row("run wall time incl. start-up", lambda r: f"{r['wall_s']:.0f} s")
    console.print(table)


def print_lengths(lengths: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"base model response tokens at temperature 1 ({lengths['samples']} samples)")
    for col in ("mean", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{lengths[k]:.0f}" for k in ("mean", "p50", "p90", "p99", "max")))
    console.print(table)


def print_replay(replay: dict, console) -> None:
    from rich.table import Table

    table = Table(title="the model fed with the measured CPU costs, replaying the runs (a check of the model)")
    for col in ("mode", "s/step measured", "s/step predicted", "server idle measured", "predicted",
                "inputs: decode step + per seq + per context token; update per token + fixed; sync"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for mode, r in replay["modes"].items():
        d, c = r["cluster"]["decode"], r["cluster"]
        measured_idle = r["measured_server_idle_frac"]
        table.add_row(mode, f"{r['measured_step_s']:.2f}", f"{r['predicted']['step_s']:.2f}",
                      "-" if measured_idle is None else f"{100 * measured_idle:.0f}%",
                      f"{100 * r['predicted']['server_idle_frac']:.0f}%",
                      f"{1e3 * d['step_s']:.2f} ms + {1e6 * d['per_seq_s']:.1f} us + {1e9 * d['per_ctx_token_s']:.1f} ns "
                      f"(engine x {r['decode_scale']:.2f}); "
                      f"{1e6 * c['update_per_token_s']:.1f} us + {c['update_fixed_s']:.3f} s; "
                      f"{c['sync_s']:.3f} s")
    console.print(table)
    console.print(f"built-in server: static batches of up to 256; prompt {replay['prompt_tokens']} tokens; lengths drawn "
                  "from the base model's (above); decode cost: the engine timed alone, scaled to each run's measured "
                  "server busy time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="example:" + __doc__.split("example:")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="recipe (default configs/tiny_cpu_longtail.yaml)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=20, help="RL steps per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the means (default 2)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    parser.add_argument("--max-staleness", type=int, default=2, help="async: rollout.max_staleness (default 2)")
    parser.add_argument("--eval-problems", type=int, default=200, help="held-out problems evaluated before and after (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="cores every run is pinned to (default 2)")
    parser.add_argument("--length-prompts", type=int, default=64, help="prompts x 8 samples for the length distribution (default 64)")
    parser.add_argument("--gpu-steps", type=int, default=12, help="simulated steps per schedule for the GPU prediction (default 12)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for every mode")
    parser.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    parser.add_argument("--replay-from", type=Path, default=None,
                        help="skip the runs: redo the model's part on the measurements of an earlier --out JSON")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep run directories and logs here (default: a temporary directory)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        cfg = load_recipe(args.config, args.set)
        print(f"bench_async (dry run): {args.config} ({cfg.model.path}), modes {' '.join(args.modes)}, {args.steps} steps each "
              f"({args.warmup} warm-up), {args.prompts} prompts x {args.n} samples, max_staleness {args.max_staleness}, "
              f"{args.eval_problems} held-out problems, {args.threads} thread(s); results to {args.out or 'the console'}")
        return 0

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable in a log file
    bt, am = _bench_trl(), _load_tool("async_model")
    started = time.perf_counter()
    if args.replay_from:  # the model part again, on a saved run's measurements
        result = json.loads(args.replay_from.read_text())
        args.steps, args.warmup, args.prompts, args.n = result["steps"], result["warmup"], result["prompts"], result["n"]
        args.max_staleness = result["max_staleness"]
        cfg = load_recipe(REPO / result["config"], result["overrides"])
        for run in result["runs"].values():  # the summaries as this version of the tool makes them
            run.update(summarize(run["per_step"], args.warmup))
        print_tables(result, console)
        model_part(args, cfg, result["model_dir"], result, am, console)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            console.print(f"wrote {args.out}")
        return 0
    cfg = load_recipe(args.config, args.set)
    console.print(f"model: {cfg.model.path} (building on first use, cached)")
    model_dir = resolve_model(cfg)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_async_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
              "git_commit": bt.git_commit(), "model_dir": model_dir, "steps": args.steps, "warmup": args.warmup,
              "prompts": args.prompts, "n": args.n, "max_staleness": args.max_staleness, "threads": args.threads,
              "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}, "overrides": args.set,
              "runs": {}}

    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for mode in args.modes:
            result["runs"][mode] = run_mode(args, mode, model_dir, work, progress, bt)
    if args.eval_problems:
        with console.status("held-out accuracy (megarl eval): base model and each run's final weights"):
            result["heldout_base"] = heldout_accuracy(args, cfg, model_dir, model_dir, work, "base", bt)
            for mode, run in result["runs"].items():
                run["heldout"] = heldout_accuracy(args, cfg, run["final_model"], model_dir, work, mode, bt)
    print_tables(result, console)

    model_part(args, cfg, model_dir, result, am, console)
    result["wall_s"] = time.perf_counter() - started
    console.print(f"total {result['wall_s']:.0f} s; run directories and logs in {work}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
