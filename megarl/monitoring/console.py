"""What a person reads while megarl works: the startup banner of a run, one line per RL step,
held-out results, saved checkpoints, progress of long work that stays visible when the output is
piped (plain lines instead of a rich bar), and third-party bars and warnings kept quiet.

`MEGARL_VERBOSE=1` lets the third-party output through (Hugging Face bars, transformers'
deprecation warnings); it is read from the environment, so servers a run starts inherit it.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

VERBOSE_ENV = "MEGARL_VERBOSE"

# The step line: (metric, label, format, shown when zero). Rates print as percentages.
STEP_FIELDS = (
    ("reward/mean", "reward", "{:.2f}", True),
    ("reward/accuracy", "acc", "{:.0%}", True),
    ("reward/has_answer", "answered", "{:.0%}", True),
    ("response/length_mean", "len", "{:.1f}", True),
    ("response/truncated", "truncated", "{:.0%}", False),
    ("tool/calls_per_sample", "tool calls", "{:.2f}", True),  # only multi-turn runs have it
    ("actor/kl", "kl", "{:.3g}", False),
    ("actor/entropy", "entropy", "{:.3f}", True),
    ("actor/grad_norm", "grad", "{:.3g}", True),
    ("rollout/staleness_mean", "stale", "{:.2f}", False),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_third_party() -> None:
    """Unless verbose: no Hugging Face progress bars ("Loading weights", "Writing model shards") and
    no deprecation chatter from libraries, here and in the processes this one starts."""
    if verbose():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "PYTHONWARNINGS" not in os.environ:  # child processes: the same filters from their first import
        os.environ["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::DeprecationWarning"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "transformers" in sys.modules:  # already imported: the variables above came too late for it
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _value(fmt: str, value) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def step_line(step: int, total: int | None, metrics: dict) -> str:
    """`step 12/30  reward 0.52  acc 52%  answered 60%  len 24.4  entropy 0.089  grad 0.28  0.65 s  5.0k tok/s`."""
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for key, label, fmt, when_zero in STEP_FIELDS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and (when_zero or value != 0):
            parts.append(f"{label} {_value(fmt, value)}")
    if isinstance(metrics.get("perf/step_s"), (int, float)):
        parts.append(f"{metrics['perf/step_s']:.2f} s")
    if isinstance(metrics.get("perf/tokens_per_s"), (int, float)):
        parts.append(f"{metrics['perf/tokens_per_s'] / 1000:.1f}k tok/s")
    skipped = metrics.get("train/skipped_updates")
    if isinstance(skipped, (int, float)) and skipped:
        parts.append(f"skipped updates {skipped:g}")
    return "  ".join(parts)


def eval_results(metrics: dict) -> dict[str, float]:
    """{benchmark: accuracy} of the held-out results in a metrics row."""
    return {k[len("eval/"):-len("/accuracy")]: v for k, v in metrics.items()
            if k.startswith("eval/") and k.endswith("/accuracy") and isinstance(v, (int, float))}


def eval_line(step: int, results: dict[str, float], first: tuple[int, dict[str, float]] | None = None) -> str:
    """`held out at step 10: toy-arith:heldout:200 71.5% (+71.5 since step 0)`; `first` is (step,
    results) of an earlier evaluation to compare with."""
    when = "before training (step 0)" if step == 0 else f"at step {step}"
    items = []
    for name, acc in sorted(results.items()):
        item = f"{name} {100 * acc:.1f}%"
        if first is not None and name in first[1]:
            item += f" ({100 * (acc - first[1][name]):+.1f} points since step {first[0]})"
        items.append(item)
    return f"held out {when}: " + ", ".join(items)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Progress:
    """Progress of long work: a rich bar on a terminal; when the output is piped (a log file,
    `| tee`), a plain line at most every `every_s` seconds and one at the end.

        with Progress("pretraining toy model", total=1500, unit="steps") as bar:
            for ...: bar.update(1, detail=f"loss {loss:.3f}")
    """

    def __init__(self, label: str, total: int, *, unit: str = "", enabled: bool = True, every_s: float = 10.0,
                 terminal: bool | None = None, stream=None):
        from rich.console import Console

        self.label, self.total, self.unit, self.enabled, self.every_s = label, total, unit, enabled, every_s
        self.stream = stream
        self.terminal = Console(file=stream).is_terminal if terminal is None else terminal
        self.done = 0
        self.detail = ""
        self._bar = self._task = None
        self._started = self._last = 0.0

    def __enter__(self) -> "Progress":
        self._started = self._last = time.monotonic()
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn(self.label), BarColumn(), TextColumn("{task.completed}/{task.total} "
                                     + self.unit + "  {task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(file=self.stream))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, detail="")
        elif self.enabled:
            self._say(f"{self.label}: {self.total} {self.unit}".rstrip() + " ...")
        return self

    def update(self, advance: int = 1, detail: str = "") -> None:
        self.done += advance
        self.detail = detail or self.detail
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, detail=self.detail)
        elif self.enabled and time.monotonic() - self._last >= self.every_s and self.done < self.total:
            self._last = time.monotonic()
            self._say(self._plain())

    def _plain(self) -> str:
        elapsed = time.monotonic() - self._started
        line = f"{self.label}: {self.done}/{self.total} {self.unit}".rstrip() + f" ({self.done / max(1, self.total):.0%})"
        if self.detail:
            line += f", {self.detail}"
        line += f", {_duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            line += f", about {_duration(elapsed * (self.total - self.done) / self.done)} left"
        return line

    def _say(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and exc[0] is None:
            took = _duration(time.monotonic() - self._started)
            self._say(f"{self.label}: {self.done}/{self.total} {self.unit}".rstrip() + f" done in {took}"
                      + (f", {self.detail}" if self.detail else ""))


def banner(cfg, *, resume_step: int | None, model_note: str = "") -> str:
    """The lines a run prints before anything starts: what runs, where it writes, whether it is new
    or continues a checkpoint, and the cache it reads."""
    from megarl.runtime.cache import cache_root

    run_dir = Path(cfg.run.output_dir)
    if resume_step is not None and cfg.run.resume:
        state = f"resuming from the checkpoint at step {resume_step}"
    else:
        state = "new run"
    every = cfg.logging.samples_every
    lines = [
        f"megarl train: {cfg.run.name}, {cfg.run.steps} steps of {cfg.algorithm.name} on {cfg.model.path}",
        f"  run dir     {run_dir} ({state})",
        f"  cache       {cache_root()}" + (f" ({model_note})" if model_note else ""),
        f"  rollout     {cfg.data.prompts_per_step} prompts x {cfg.rollout.n} samples, {cfg.rollout.engine} engine, "
        f"mode {cfg.rollout.mode}",
        "  held out    " + (f"every {cfg.eval.every} steps on {', '.join(cfg.eval.benchmarks)}"
                             if cfg.eval.every and cfg.eval.benchmarks else "off"),
        "  checkpoints " + (f"every {cfg.checkpoint.every} steps in {run_dir / 'checkpoints'}" if cfg.checkpoint.every
                             else "off (checkpoint.every=0); a stop still checkpoints"),
        "  samples     " + (f"a table every {every} steps; all in {run_dir / 'samples.jsonl'}" if every
                             else f"in {run_dir / 'samples.jsonl'}"),
        f"  metrics     {run_dir / 'metrics.jsonl'}",
    ]
    return "\n".join(lines)
