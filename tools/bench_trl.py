"""Throughput of megarl's GRPO demo step against TRL's GRPOTrainer on the same toy model, prompts and settings.

Runs, one after the other in fresh processes pinned to the same --threads cores:
  1. megarl: `megarl train CONFIG run.steps=W+S eval.every=0 logging.wandb=disabled run.output_dir=TMP`,
     reading perf/* (seconds per step, tokens per step, time per stage) from TMP/metrics.jsonl;
  2. TRL: GRPOTrainer on the same cached toy model (`build_toy_model()`), the same prompts
     (`load_prompts(data.train)`), group size, prompts per step, max new tokens, temperature, lr,
     grad clip and Adam settings, one optimizer step per rollout batch, beta=0 (no KL, no reference
     model), no eval; reward = megarl's strict `\\boxed{}` grader. A TrainerCallback times each step
     and counts its prompt + completion tokens; generation and reward time are taken by timing
     the trainer's own generation and reward methods.
The first W steps of each are warm-up and left out; --rounds R repeats the pair R times, alternating which
side goes first. Load averages are recorded per side. Prints a table and writes JSON (--json).

example:
  python tools/bench_trl.py --steps 10 --warmup 2 --rounds 3 --threads 2 --json /tmp/bench_trl.json
  python tools/bench_trl.py --threads 1 --set actor.micro_batch_tokens=512   # a recipe variant, same on both sides
"""

from __future__ import annotations

import argparse
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
DEFAULT_CONFIG = REPO / "configs" / "tiny_cpu.yaml"


# ---- shared -----------------------------------------------------------------------------
def load_recipe(config: Path, overrides: list[str]):
    import megarl.demo  # noqa: F401  registers builtin: models and the toy sets, as the megarl command does
    from megarl.config import ConfigError, load_config

    try:
        cfg = load_config(str(config), list(overrides))
    except ConfigError as err:
        raise SystemExit(f"bench_trl: config error: {err}")
    if cfg.algorithm.name != "grpo":
        raise SystemExit(f"bench_trl: {config} uses algorithm.name={cfg.algorithm.name}; this benchmark compares GRPO, use a grpo recipe")
    if cfg.algorithm.kl_coef != 0.0:
        raise SystemExit(f"bench_trl: {config} has algorithm.kl_coef={cfg.algorithm.kl_coef}; the comparison runs without KL (beta=0), set it to 0")
    if cfg.algorithm.epochs * cfg.algorithm.mini_batches != 1:
        raise SystemExit("bench_trl: the comparison is one optimizer step per rollout batch; set algorithm.epochs=1 and algorithm.mini_batches=1")
    return cfg


def thread_env(threads: int, overlap: bool = False) -> dict:
    """Thread counts for one side on `threads` cores. megarl with rollout.mode=overlap runs its trainer
    and its server at the same time, so they split the cores (as `megarl train` does by itself);
    otherwise every process gets all of them (megarl's trainer and server take turns)."""
    trainer, server = threads, threads
    if overlap:
        server = max(1, threads // 2)
        trainer = max(1, threads - server)
    return dict(os.environ, OMP_NUM_THREADS=str(trainer), MKL_NUM_THREADS=str(trainer),
                MEGARL_SERVER_THREADS=str(server), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")


def pinned_cores(threads: int) -> set[int]:
    """The first `threads` cores this process may use: both sides are pinned to the same ones."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads > len(allowed):
        raise SystemExit(f"bench_trl: --threads {threads} but only {len(allowed)} cores are available")
    return set(allowed[:threads])


def git_commit() -> str | None:
    """HEAD of the megarl checkout, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def count_lines(path: Path) -> int:
    try:
        with path.open() as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def run_child(label: str, cmd: list[str], env: dict, log: Path, steps_file: Path, total_steps: int, progress, count_fn,
              cores: set[int]) -> tuple[int, float]:
    """Run one side as a subprocess pinned to `cores` (its children inherit the pinning; output to
    `log`), advancing a progress bar as steps are recorded."""
    task = progress.add_task(label, total=total_steps)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
        while proc.poll() is None:
            progress.update(task, completed=count_fn(steps_file))
            time.sleep(0.5)
    progress.update(task, completed=count_fn(steps_file))
    return proc.returncode, time.perf_counter() - start


def summarize(rows: list[dict], stage_keys: list[str]) -> dict:
    """rows: per measured step {step_s, tokens, <stage>_s...} -> means and aggregate tokens/s."""
    step_s = [r["step_s"] for r in rows]
    tokens = [r["tokens"] for r in rows]
    out = {
        "steps": len(rows),
        "step_s_mean": statistics.fmean(step_s),
        "step_s_median": statistics.median(step_s),
        "step_s_min": min(step_s),
        "step_s_max": max(step_s),
        "tokens_per_step": statistics.fmean(tokens),
        "response_tokens_per_step": statistics.fmean(r["response_tokens"] for r in rows),
        "tokens_per_s": sum(tokens) / sum(step_s),
        "tokens_per_s_median_step": statistics.median(t / s for t, s in zip(tokens, step_s)),
        "stages_s_mean": {k: statistics.fmean(r[k] for r in rows) for k in stage_keys if all(k in r for r in rows)},
    }
    return out


# ---- megarl side ------------------------------------------------------------------------
MEGARL_STAGES = ["rollout_s", "logprobs_s", "advantages_s", "update_s", "rollout_wait_s", "sync_s"]


def megarl_metric_steps(path: Path) -> int:
    n = 0
    try:
        with path.open() as f:
            for line in f:
                if line.strip() and "perf/step_s" in json.loads(line):
                    n += 1
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    return n


def run_megarl(args, work: Path, progress, tag: str) -> dict:
    out_dir = work / f"megarl_run_{tag}"
    total = args.warmup + args.steps
    cmd = [sys.executable, "-m", "megarl.cli", "train", str(args.config), f"run.steps={total}", "eval.every=0",
           "logging.wandb=disabled", f"run.output_dir={out_dir}", "checkpoint.every=0", *args.set]
    metrics = out_dir / "metrics.jsonl"
    log = work / f"megarl_{tag}.log"
    load = load_average()
    overlap = load_recipe(args.config, args.set).rollout.off_policy
    rc, wall = run_child(f"megarl ({tag})", cmd, thread_env(args.threads, overlap), log, metrics, total, progress,
                         megarl_metric_steps, pinned_cores(args.threads))
    if rc != 0:
        raise SystemExit(f"bench_trl: megarl train exited with {rc}; see {log}:\n{log.read_text()[-3000:]}")
    rows = []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "perf/step_s" not in rec or rec["step"] <= args.warmup:
            continue
        rows.append({
            "step": rec["step"], "step_s": rec["perf/step_s"], "tokens": rec["perf/tokens"],
            "response_tokens": rec["response/length_mean"] * rec["batch/sequences"],
            **{k: rec[f"perf/{k}"] for k in MEGARL_STAGES if f"perf/{k}" in rec},
        })
    if len(rows) != args.steps:
        raise SystemExit(f"bench_trl: expected {args.steps} measured megarl steps in {metrics}, found {len(rows)}")
    return {"command": " ".join(["megarl", *cmd[3:]]), "wall_s": wall, "load_average_before": load,
            "load_average_after": load_average(), "per_step": rows, **summarize(rows, MEGARL_STAGES)}


# ---- TRL side ---------------------------------------------------------------------------
TRL_STAGES = ["generate_s", "reward_s", "rollout_s", "train_s"]


def run_trl(args, work: Path, progress, tag: str) -> dict:
    steps_file = work / f"trl_steps_{tag}.jsonl"
    total = args.warmup + args.steps
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config), "--threads", str(args.threads),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--trl-worker", str(steps_file),
           *[f"--set={kv}" for kv in args.set]]
    log = work / f"trl_{tag}.log"
    load = load_average()
    rc, wall = run_child(f"TRL GRPOTrainer ({tag})", cmd, thread_env(args.threads), log, steps_file, total, progress, count_lines,
                         pinned_cores(args.threads))
    if rc != 0:
        raise SystemExit(f"bench_trl: the TRL run exited with {rc}; see {log}:\n{log.read_text()[-3000:]}")
    rows = [json.loads(x) for x in steps_file.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["step"] > args.warmup]
    if len(rows) != args.steps:
        raise SystemExit(f"bench_trl: expected {args.steps} measured TRL steps in {steps_file}, found {len(rows)}")
    import trl

    return {"trl_version": trl.__version__, "wall_s": wall, "load_average_before": load,
            "load_average_after": load_average(), "per_step": rows, **summarize(rows, TRL_STAGES)}


def trl_worker(args) -> int:
    """Child process: GRPOTrainer on the recipe's model/prompts/settings, one JSON line per step."""
    import torch

    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from megarl.data import load_prompts
    from megarl.demo.toy_model import build_toy_model
    from megarl.rewards.schemes import compute_rewards

    cfg = load_recipe(args.config, args.set)
    if cfg.data.template != "none":
        raise SystemExit(f"bench_trl: the TRL side feeds record.problem as the raw prompt; it needs data.template=none, got {cfg.data.template}")
    if not cfg.model.path.startswith("builtin:"):
        raise SystemExit(f"bench_trl: model.path={cfg.model.path}; this benchmark uses the built-in toy model (builtin:toy-arith)")
    model_dir = build_toy_model()
    rows = []
    for item in cfg.data.train:
        rows.extend(load_prompts(item))
    dataset = Dataset.from_list([{"prompt": r.problem, "answer": r.answer} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def boxed_reward(prompts, completions, answer, **kwargs) -> list[float]:
        return [g.reward for g in compute_rewards(completions, answer, cfg.reward, template=cfg.data.template)]

    n, prompts_per_step = cfg.rollout.n, cfg.data.prompts_per_step
    grpo = GRPOConfig(
        output_dir=str(Path(args.trl_worker).parent / "trl_out"),
        use_cpu=True, bf16=False, fp16=False, seed=cfg.run.seed, data_seed=cfg.run.seed,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=prompts_per_step * n, gradient_accumulation_steps=1,
        num_generations=n, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=max(cfg.rollout.top_k, 0),  # megarl: -1 = off; TRL: 0 = off
        beta=0.0, num_iterations=1, epsilon=cfg.algorithm.clip_low, epsilon_high=cfg.algorithm.clip_high,
        loss_type="dapo",  # token mean over the batch, as megarl's loss_agg: token-mean
        scale_rewards="group",  # GRPO's std-normalized group advantages
        learning_rate=cfg.actor.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=cfg.actor.weight_decay, adam_beta1=cfg.actor.adam_beta1, adam_beta2=cfg.actor.adam_beta2,
        adam_epsilon=cfg.actor.adam_eps, max_grad_norm=cfg.actor.clip_grad, optim="adamw_torch",
        use_vllm=False, eval_strategy="no", save_strategy="no", report_to="none",
        logging_steps=1, log_completions=False, dataloader_num_workers=0, disable_tqdm=True,
    )

    timings = {"generate_s": 0.0, "reward_s": 0.0, "rollout_s": 0.0}
    counts = {"tokens": 0, "response_tokens": 0}

    class StepClock(TrainerCallback):
        """Times each optimizer step (rollout + loss + backward + optimizer) and writes it with its token count."""

        def on_step_begin(self, args_, state, control, **kw):
            for key in timings:
                timings[key] = 0.0
            counts["tokens"] = counts["response_tokens"] = 0
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            step_s = time.perf_counter() - self.start
            rec = {"step": state.global_step, "step_s": step_s, **counts, **timings,
                   "train_s": step_s - timings["rollout_s"], "tokens_per_s": counts["tokens"] / step_s}
            with open(args.trl_worker, "a") as f:
                f.write(json.dumps(rec) + "\n")

    trainer = GRPOTrainer(model=model, reward_funcs=boxed_reward, args=grpo, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepClock()])

    def timed(method, key, after=None):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = method(*a, **kw)
            timings[key] += time.perf_counter() - t
            if after is not None:
                after(out)
            return out
        return wrapper

    def count_tokens(batch):
        counts["tokens"] += int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())
        counts["response_tokens"] += int(batch["completion_mask"].sum())

    # Instrument the trainer's own stages (generation, reward, whole rollout) on this instance.
    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generate_s")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward_s")
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "rollout_s", count_tokens)
    Path(args.trl_worker).write_text("")
    trainer.train()
    return 0


# ---- report -----------------------------------------------------------------------------
def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m, t = result["megarl"], result["trl"]
    table = Table(title=f"GRPO step throughput, {result['settings']['rounds']} x {result['settings']['steps']} steps after {result['settings']['warmup']} warm-up "
                        f"({result['settings']['threads']} threads, load {result['load_average_before'][0]} -> {result['load_average_after'][0]})")
    for col in ("", "megarl", f"TRL {t['trl_version']}", "megarl / TRL"):
        table.add_column(col, justify="left" if not col else "right")

    def row(label, a, b, fmt, ratio_of="a/b"):
        ratio = (a / b) if ratio_of == "a/b" else (b / a)
        table.add_row(label, fmt.format(a), fmt.format(b), f"{ratio:.2f}x")

    row("tokens/s (prompt + generated)", m["tokens_per_s"], t["tokens_per_s"], "{:.0f}")
    row("tokens/s at the median step", m["tokens_per_s_median_step"], t["tokens_per_s_median_step"], "{:.0f}")
    row("seconds per step (mean)", m["step_s_mean"], t["step_s_mean"], "{:.2f}", ratio_of="b/a")
    row("seconds per step (median)", m["step_s_median"], t["step_s_median"], "{:.2f}", ratio_of="b/a")
    table.add_row("tokens per step", f"{m['tokens_per_step']:.0f}", f"{t['tokens_per_step']:.0f}", "")
    table.add_row("generated tokens per step", f"{m['response_tokens_per_step']:.0f}", f"{t['response_tokens_per_step']:.0f}", "")
    table.add_row("process wall time incl. start-up (s, mean)", f"{m['wall_s']:.1f}", f"{t['wall_s']:.1f}", "")
    console = Console()
    console.print(table)

    stages = Table(title="where a step goes (mean seconds)")
    stages.add_column("megarl stage")
    stages.add_column("s", justify="right")
    stages.add_column("TRL stage")
    stages.add_column("s", justify="right")
    ms = list(m["stages_s_mean"].items())
    ts = [("generate (HF generate)", t["stages_s_mean"].get("generate_s", 0.0)),
          ("reward (grader)", t["stages_s_mean"].get("reward_s", 0.0)),
          ("rollout total (generate+reward+adv.)", t["stages_s_mean"].get("rollout_s", 0.0)),
          ("train (fwd+bwd+optimizer)", t["stages_s_mean"].get("train_s", 0.0))]
    for i in range(max(len(ms), len(ts))):
        a = ms[i] if i < len(ms) else ("", None)
        b = ts[i] if i < len(ts) else ("", None)
        stages.add_row(a[0].removesuffix("_s"), "" if a[1] is None else f"{a[1]:.2f}", b[0], "" if b[1] is None else f"{b[1]:.2f}")
    console.print(stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="megarl GRPO recipe (default configs/tiny_cpu.yaml)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per side (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps left out (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat megarl + TRL this many times, alternating which goes first (default 1)")
    parser.add_argument("--threads", type=int, default=2,
                        help="cores for each side (default 2): both sides are pinned to the same cores; every process "
                             "gets that many torch threads, except megarl with rollout.mode=overlap, whose trainer and "
                             "server compute at once and split them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for both sides (repeatable), e.g. --set actor.micro_batch_tokens=512")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep run directories and logs here (default: a temporary directory)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    parser.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)  # internal: run the TRL side, write steps here
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be >= 1")
    if not args.config.exists():
        parser.error(f"--config {args.config} does not exist")
    if args.trl_worker:
        return trl_worker(args)
    if args.dry_run:
        cfg = load_recipe(args.config, args.set)
        trl = "installed" if importlib.util.find_spec("trl") is not None else "NOT installed (pip install -e .[bench])"
        print(f"bench_trl (dry run): {args.config}, {args.rounds} round(s) of megarl and TRL GRPO, {args.steps} measured + "
              f"{args.warmup} warm-up steps each, {cfg.data.prompts_per_step} prompts x {cfg.rollout.n} samples, "
              f"{args.threads} thread(s); trl {trl}; results to {args.json or 'the console'}")
        return 0

    if importlib.util.find_spec("trl") is None:
        raise SystemExit("bench_trl: TRL is not installed; `pip install -e .[bench]` (or `pip install trl`)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = load_recipe(args.config, args.set)
    from megarl.demo.toy_model import build_toy_model

    model_dir = build_toy_model()  # built (or found cached) before either side is timed
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    runs = {"megarl": [], "trl": []}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        for r in range(args.rounds):
            # Alternate the order each round so a drift in machine load does not always favour one side.
            order = ("megarl", "trl") if r % 2 == 0 else ("trl", "megarl")
            for side in order:
                run = run_megarl if side == "megarl" else run_trl
                runs[side].append(run(args, work, progress, tag=f"round{r + 1}"))
    load_after = load_average()

    def combine(side_runs: list[dict], stages: list[str]) -> dict:
        rows = [dict(row, round=i + 1) for i, run in enumerate(side_runs) for row in run["per_step"]]
        extra = {k: v for k, v in side_runs[0].items() if k in ("command", "trl_version")}
        return {**extra, "wall_s": statistics.fmean(x["wall_s"] for x in side_runs),
                "rounds": [{k: v for k, v in x.items() if k != "per_step"} for x in side_runs],
                "per_step": rows, **summarize(rows, stages)}

    megarl_result, trl_result = combine(runs["megarl"], MEGARL_STAGES), combine(runs["trl"], TRL_STAGES)
    per_round = [m["tokens_per_s"] / t["tokens_per_s"] for m, t in zip(runs["megarl"], runs["trl"])]
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": sys.platform, "uname": " ".join(os.uname())},
        "megarl_commit": git_commit(),
        "load_average_before": load_before, "load_average_after": load_after,
        "settings": {
            "config": str(args.config), "model_dir": str(model_dir), "steps": args.steps, "warmup": args.warmup,
            "rounds": args.rounds, "threads": args.threads, "mode": cfg.rollout.mode, "n": cfg.rollout.n, "prompts_per_step": cfg.data.prompts_per_step,
            "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature, "lr": cfg.actor.lr,
            "data": list(cfg.data.train), "overrides": list(args.set), "micro_batch_tokens": cfg.actor.micro_batch_tokens,
        },
        "megarl": megarl_result, "trl": trl_result,
        "speedup_tokens_per_s": megarl_result["tokens_per_s"] / trl_result["tokens_per_s"],
        "speedup_step_s": trl_result["step_s_mean"] / megarl_result["step_s_mean"],
        "speedup_tokens_per_s_by_round": per_round,
        "work_dir": str(work),
    }
    print_table(result)
    by_round = ", ".join(f"{x:.2f}x" for x in per_round)
    print(f"megarl is {result['speedup_tokens_per_s']:.2f}x TRL's tokens/s (goal: >= 1.5x; by round: {by_round}); logs in {work}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
