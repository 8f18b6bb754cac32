"""Per-step metrics: a JSON Lines file (the source of truth), wandb (offline by default) and the
console (megarl.monitoring.console): one line per step, held-out results at each evaluation, a
table of sample responses every `samples_every` steps."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from megarl.monitoring.console import eval_line, eval_results, step_line


class MetricsLogger:
    def __init__(self, run_dir: Path, config: dict, *, wandb_mode: str = "offline", project: str = "megarl",
                 run_name: str = "run", total_steps: int | None = None, samples_every: int = 10, console=None):
        from rich.console import Console

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.console = console or Console(stderr=False)
        self.total_steps = total_steps
        self.samples_every = samples_every
        self.wandb = None
        if wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self.wandb = wandb.init(
                    project=project, name=run_name, dir=str(self.run_dir), config=config, mode=wandb_mode,
                    resume="allow", id=_wandb_id(self.run_dir),
                )
            except Exception as err:  # wandb is optional; the JSONL file is the record
                self.console.print(f"[yellow]wandb disabled ({err}); metrics still go to {self.path}[/]")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines for steps after the checkpoint (they will be recomputed)."""
        for path in (self.path, self.run_dir / "prompts.jsonl"):
            if path.exists():
                keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
                path.write_text("".join(line + "\n" for line in keep))

    def log_prompts(self, step: int, prompt_ids: list[str]) -> None:
        """Which prompts step `step` trained on (prompts.jsonl; truncated with the metrics on resume)."""
        with (self.run_dir / "prompts.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "ids": prompt_ids}) + "\n")

    def log(self, step: int, metrics: dict[str, Any], samples: list[dict] | None = None) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        if any(not k.startswith("eval/") for k in metrics):
            self.say(step_line(step, self.total_steps, row))
        results = eval_results(row)
        if results:
            self.say(eval_line(step, results, self._first_eval(step)))
        if samples:
            self.record_samples(step, samples)
            if self.samples_every and step % self.samples_every == 0:
                self.print_samples(step, samples)

    def say(self, line: str) -> None:
        """One plain line (no markup, no wrapping at the width of a pipe)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def checkpoint_saved(self, step: int, path: Path, background: bool = False) -> None:
        self.say(f"checkpoint at step {step}: {path}" + (" (being written in the background)" if background else ""))

    def _first_eval(self, step: int) -> tuple[int, dict[str, float]] | None:
        """(step, results) of the run's first evaluation when earlier than `step` (what later ones are compared with)."""
        for row in read_metrics(self.run_dir):
            results = eval_results(row)
            if results:
                return (row["step"], results) if row["step"] < step else None
        return None

    def record_samples(self, step: int, samples: list[dict]) -> None:
        with (self.run_dir / "samples.jsonl").open("a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}) + "\n")

    def print_samples(self, step: int, samples: list[dict]) -> None:
        from rich.table import Table

        table = Table(title=f"samples at step {step}", show_lines=True)
        for col in ("prompt", "response", "gold", "reward"):
            table.add_column(col, overflow="fold")
        for s in samples:
            table.add_row(s["prompt"][-200:], s["response"][:400], str(s["gold"]), f"{s['reward']:.2f}")
        self.console.print(table)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def _wandb_id(run_dir: Path) -> str:
    id_file = run_dir / "wandb_id.txt"
    if id_file.exists():
        return id_file.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return run_id


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory written by `megarl train`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
