"""`megarl plot RUN_DIR`: PNG curves of a run's metrics (reward, accuracy, length, reflection,
KL, entropy, and evaluation accuracy when present; for off-policy runs the rollout's staleness, partial
samples, tokens by policy lag, server idle fraction and the behaviour/recomputed log-prob mismatch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from megarl.monitoring.metrics import read_metrics

PANELS = (
    ("reward/mean", "reward"), ("reward/accuracy", "train accuracy"), ("response/length_mean", "response length"),
    ("response/reflection_rate", "reflection rate"), ("actor/kl", "KL to reference"), ("actor/entropy", "entropy"),
)
# Drawn when the run logged them (rollout.mode=overlap/async); a tuple of keys shares one panel.
ROLLOUT_PANELS = (
    (("rollout/staleness_mean", "rollout/staleness_max"), "staleness (steps)"), ("rollout/partial_frac", "partial samples"),
    ("rollout/tokens_lag*", "tokens by policy lag"), ("perf/server_idle_frac", "server idle fraction"),
    ("mismatch/logp_abs_mean", "|behaviour - recomputed log-prob|"),
)


def panels_for(rows: list[dict]) -> list[tuple]:
    """(key or keys, title) of each panel: the fixed ones, the rollout ones the run logged, evaluations."""
    present = {k for r in rows for k in r}
    eval_keys = sorted(k for k in present if k.startswith("eval/") and k.endswith("/accuracy"))
    lag_keys = tuple(sorted((k for k in present if k.startswith("rollout/tokens_lag")), key=lambda k: int(k.rsplit("lag", 1)[1])))
    rollout = [(lag_keys if keys == "rollout/tokens_lag*" else keys, title) for keys, title in ROLLOUT_PANELS]
    rollout = [(keys, title) for keys, title in rollout if keys and set((keys,) if isinstance(keys, str) else keys) & present]
    return list(PANELS) + rollout + [(k, k.removeprefix("eval/")) for k in eval_keys]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows yet")
    panels = panels_for(rows)
    cols = 3
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (keys, title) in zip(axes.flat, panels):
        for key in (keys,) if isinstance(keys, str) else keys:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 40 else None, markersize=3, label=key.rsplit("/", 1)[1])
        if not isinstance(keys, str):
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
    parser = argparse.ArgumentParser(prog="megarl plot", description=__doc__, epilog="example: megarl plot runs/tiny_cpu")
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"megarl plot: {err}")
        return 2
    print(path)
    return 0
