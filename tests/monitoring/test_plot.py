"""`megarl plot`: the panels follow what the run logged (rollout panels only for off-policy runs,
reflection and KL only when not flat zero), and each run is its own line."""

import json

import matplotlib
import pytest

from megarl.monitoring.plot import main, panels_for, plot_run, read_runs


def _write(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _demo_row(step):
    """What the CPU demo logs: no KL (kl_coef 0), reflection rate flat zero."""
    return {"step": step, "reward/mean": 0.02 * step, "reward/accuracy": 0.02 * step, "reward/has_answer": 0.3 + 0.01 * step,
            "response/length_mean": 24.0, "response/reflection_rate": 0.0, "actor/entropy": 0.09}


def test_async_runs_get_rollout_panels(tmp_path):
    sync = [{"step": 1, "reward/mean": 0.1}]
    rows = [{"step": s, "reward/mean": 0.1 * s, "rollout/staleness_mean": 0.5, "rollout/staleness_max": 2,
             "rollout/partial_frac": 0.25, "rollout/tokens_lag0": 100, "rollout/tokens_lag1": 40, "rollout/tokens_lag10": 1,
             "perf/server_idle_frac": 0.05, "eval/toy/accuracy": 0.5} for s in (1, 2, 3)]
    assert [t for _, t in panels_for(sync)] == ["reward"]
    panels = dict((title, keys) for keys, title in panels_for(rows))
    assert panels["staleness (steps)"] == ("rollout/staleness_mean", "rollout/staleness_max")
    assert panels["tokens by policy lag"] == ("rollout/tokens_lag0", "rollout/tokens_lag1", "rollout/tokens_lag10")
    assert "server idle fraction" in panels and "partial samples" in panels and "toy/accuracy" in panels
    assert "|behaviour - recomputed log-prob|" not in panels  # not logged
    _write(tmp_path, rows)
    assert main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").stat().st_size > 10_000


def test_demo_panels_draw_what_it_learns_and_drop_flat_zero_ones():
    titles = [t for _, t in panels_for([_demo_row(s) for s in range(1, 4)] + [{"step": 0, "eval/toy:heldout/accuracy": 0.0}])]
    assert titles == ["reward", "train accuracy", "answered (a final answer found)", "response length", "entropy",
                      "toy:heldout/accuracy"]
    with_kl = [{**_demo_row(1), "actor/kl": 0.01, "response/reflection_rate": 0.05}]
    assert {"KL to reference", "reflection rate"} <= {t for _, t in panels_for(with_kl)}


def _drawn_lines(monkeypatch, path):
    """{panel title: [(label, x values)]} of the figure plot_run draws."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_run(path, path / "out.png" if path.is_dir() else None)
    return {ax.get_title(): [(line.get_label(), list(line.get_xdata())) for line in ax.get_lines()]
            for ax in figures[0].axes if ax.get_title()}


def test_restarts_in_one_file_are_separate_lines(tmp_path, monkeypatch):
    """metrics.jsonl holding steps 0..30, 0..19, 0..30 (a run started again twice): three lines, none
    drawn back to step 0; a resumed run (steps continue) and the final evaluation row stay one run."""
    matplotlib.use("Agg")
    rows = []
    for last in (30, 19, 30):
        rows += [_demo_row(s) for s in range(1, last + 1)] + [{"step": last, "eval/toy/accuracy": 0.5}]
    _write(tmp_path / "tiny_cpu", rows)
    runs = read_runs(tmp_path / "tiny_cpu")
    assert [(label, rows[0]["step"], rows[-1]["step"]) for label, rows in runs] == [
        ("tiny_cpu (1 of 3)", 1, 30), ("tiny_cpu (2 of 3)", 1, 19), ("tiny_cpu (3 of 3)", 1, 30)]
    lines = _drawn_lines(monkeypatch, tmp_path / "tiny_cpu")
    reward = lines["reward"]
    assert len(reward) == 3 and all(xs == sorted(xs) for _, xs in reward), reward
    assert [label for label, _ in reward] == ["tiny_cpu (1 of 3)", "tiny_cpu (2 of 3)", "tiny_cpu (3 of 3)"]


def test_a_directory_of_runs_draws_one_line_per_run(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    _write(tmp_path / "runs" / "sync", [_demo_row(s) for s in range(1, 6)])
    _write(tmp_path / "runs" / "async", [_demo_row(s) for s in range(1, 4)])
    (tmp_path / "runs" / "not_a_run").mkdir()
    lines = _drawn_lines(monkeypatch, tmp_path / "runs")
    assert [(label, xs) for label, xs in lines["answered (a final answer found)"]] == [("async", [1, 2, 3]), ("sync", [1, 2, 3, 4, 5])]


def test_missing_metrics_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().out
