"""`megarl plot RUN_DIR`: PNG curves of a run's metrics (reward, accuracy, length, reflection,
KL, entropy, and evaluation accuracy when present)."""

from __future__ import annotations

import argparse
from pathlib import Path

from megarl.monitoring.metrics import read_metrics

PANELS = (
    ("reward/mean", "reward"), ("reward/accuracy", "train accuracy"), ("response/length_mean", "response length"),
    ("response/reflection_rate", "reflection rate"), ("actor/kl", "KL to reference"), ("actor/entropy", "entropy"),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows yet")
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/accuracy")})
    panels = list(PANELS) + [(k, k.removeprefix("eval/")) for k in eval_keys]
    cols = 3
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 40 else None, markersize=3)
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
