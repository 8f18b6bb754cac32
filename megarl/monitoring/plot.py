"""`megarl plot RUN_DIR`: PNG curves of a run's metrics, one panel per metric the run logged (reward,
accuracy, answered, response length, entropy; reflection and KL when not flat zero; evaluation
accuracy; for off-policy runs the rollout's staleness, partial samples, tokens by policy lag, server
idle fraction and the behaviour/recomputed log-prob mismatch).

One line per run: a metrics.jsonl that holds several runs (a restart from step 0 appended to it)
draws each as its own line, and a directory of run directories (`megarl plot runs`) draws every run."""

from __future__ import annotations

import argparse
from pathlib import Path

from megarl.monitoring.metrics import read_metrics

# (key, title, drawn when flat zero): a panel is drawn when the run logged its key; the optional ones
# (off unless the recipe turns them on) only when some value is not zero.
PANELS = (
    ("reward/mean", "reward", True), ("reward/accuracy", "train accuracy", True),
    ("reward/has_answer", "answered (a final answer found)", True), ("response/length_mean", "response length", True),
    ("response/reflection_rate", "reflection rate", False), ("actor/kl", "KL to reference", False),
    ("actor/entropy", "entropy", True),
)
# Drawn when the run logged them (rollout.mode=overlap/async); a tuple of keys shares one panel.
ROLLOUT_PANELS = (
    (("rollout/staleness_mean", "rollout/staleness_max"), "staleness (steps)"), ("rollout/partial_frac", "partial samples"),
    ("rollout/tokens_lag*", "tokens by policy lag"), ("perf/server_idle_frac", "server idle fraction"),
    ("mismatch/logp_abs_mean", "|behaviour - recomputed log-prob|"),
)


def panels_for(rows: list[dict]) -> list[tuple]:
    """(key or keys, title) of each panel the rows have data for: the training metrics, the rollout
    ones, evaluations."""
    present = {k for r in rows for k, v in r.items() if v is not None}
    nonzero = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and v != 0}
    fixed = [(key, title) for key, title, when_zero in PANELS if key in (present if when_zero else nonzero)]
    eval_keys = sorted(k for k in present if k.startswith("eval/") and k.endswith("/accuracy"))
    lag_keys = tuple(sorted((k for k in present if k.startswith("rollout/tokens_lag")), key=lambda k: int(k.rsplit("lag", 1)[1])))
    rollout = [(lag_keys if keys == "rollout/tokens_lag*" else keys, title) for keys, title in ROLLOUT_PANELS]
    rollout = [(keys, title) for keys, title in rollout if keys and set((keys,) if isinstance(keys, str) else keys) & present]
    return fixed + rollout + [(k, k.removeprefix("eval/")) for k in eval_keys]


def split_restarts(rows: list[dict]) -> list[list[dict]]:
    """The runs in one metrics file, in order: a new one begins where the step goes back (a run
    started again from step 0 and appended). A resumed run continues its predecessor's steps and
    stays one run; a row at the same step (the final evaluation) belongs to the run before it."""
    runs: list[list[dict]] = []
    for row in rows:
        if not runs or row["step"] < runs[-1][-1]["step"]:
            runs.append([])
        runs[-1].append(row)
    return runs


def read_runs(path: str | Path) -> list[tuple[str, list[dict]]]:
    """(label, rows) of each run under `path`: a run directory, or a directory of run directories."""
    path = Path(path)
    if (path / "metrics.jsonl").exists():
        sources = [path]
    else:
        sources = sorted(p for p in path.iterdir() if (p / "metrics.jsonl").exists()) if path.is_dir() else []
        if not sources:
            read_metrics(path)  # raises the error that names the missing file
    runs = []
    for source in sources:
        parts = [part for part in split_restarts(read_metrics(source)) if part]
        for i, part in enumerate(parts):
            runs.append((source.name if len(parts) == 1 else f"{source.name} ({i + 1} of {len(parts)})", part))
    return runs


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read_runs(run_dir)
    if not any(rows for _, rows in runs):
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows yet")
    panels = panels_for([r for _, rows in runs for r in rows])
    cols = 3
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (keys, title) in zip(axes.flat, panels):
        keys = (keys,) if isinstance(keys, str) else keys
        styles = ("-", "--", ":", "-.")
        for r, (label, rows) in enumerate(runs):
            for k, key in enumerate(keys):
                pts = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
                if not pts:
                    continue
                names = ([label] if len(runs) > 1 else []) + ([key.rsplit("/", 1)[1]] if len(keys) > 1 else [])
                ax.plot(*zip(*pts), marker="o" if len(pts) < 40 else None, markersize=3, label=": ".join(names) or None,
                        color=colors[(r if len(runs) > 1 else k) % len(colors)], linestyle=styles[k % len(styles)] if len(runs) > 1 else "-")
        if len(keys) > 1 or len(runs) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megarl plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  megarl plot runs/tiny_cpu\n  megarl plot runs --out all_runs.png")
    parser.add_argument("run_dir", help="a run directory, or a directory of run directories (one line per run)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"megarl plot: {err}")
        return 2
    print(path)
    return 0
