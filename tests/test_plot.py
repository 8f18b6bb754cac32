"""`megarl plot`: the panels follow what the run logged (rollout panels only for off-policy runs)."""

import json

from megarl.monitoring.plot import main, panels_for


def test_async_runs_get_rollout_panels(tmp_path):
    sync = [{"step": 1, "reward/mean": 0.1}]
    rows = [{"step": s, "reward/mean": 0.1 * s, "rollout/staleness_mean": 0.5, "rollout/staleness_max": 2,
             "rollout/partial_frac": 0.25, "rollout/tokens_lag0": 100, "rollout/tokens_lag1": 40, "rollout/tokens_lag10": 1,
             "perf/server_idle_frac": 0.05, "eval/toy/accuracy": 0.5} for s in (1, 2, 3)]
    assert [t for _, t in panels_for(sync)] == [t for _, t in panels_for([])]
    panels = dict((title, keys) for keys, title in panels_for(rows))
    assert panels["staleness (steps)"] == ("rollout/staleness_mean", "rollout/staleness_max")
    assert panels["tokens by policy lag"] == ("rollout/tokens_lag0", "rollout/tokens_lag1", "rollout/tokens_lag10")
    assert "server idle fraction" in panels and "partial samples" in panels and "toy/accuracy" in panels
    assert "|behaviour - recomputed log-prob|" not in panels  # not logged
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").stat().st_size > 10_000
