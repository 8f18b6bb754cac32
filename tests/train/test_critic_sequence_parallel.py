"""A critic under tensor parallelism with sequence parallelism computes what a TP=1 critic computes:
the same values for every response token and, after one SGD step on the same batch, the same grad
norm and new values (real torchrun over gloo, megarl's ModelWorker and trainer packing).

Before the fix the value head took the sequence-sharded hidden states of its TP rank and the
worker indexed them with positions in the whole row: at TP=2 + SP `IndexError: index 13 is out of
bounds for dimension 0 with size 12`."""

import json

import pytest
from dist_utils import torchrun


@pytest.fixture(scope="module")
def critic_runs(tiny_hf_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("critic_sp") / "runs.json"
    torchrun(["tests/train/critic_sp_job.py", "--hf-dir", str(tiny_hf_models["qwen2"]), "--out", str(out)], nproc=2)
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", ["tp2", "tp2sp"])
def test_critic_matches_tp1(critic_runs, layout):
    import torch

    base, other = critic_runs["tp1"], critic_runs[layout]
    assert [len(v) for v in other["values"]] == [len(v) for v in base["values"]] == [7, 5, 6, 3]
    for key in ("values", "values_after"):
        for a, b in zip(base[key], other[key]):
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-5, msg=f"{layout} {key}")
    assert abs(other["loss"] - base["loss"]) < 1e-5
    assert abs(other["grad_norm"] - base["grad_norm"]) < 1e-4 * base["grad_norm"]
    moved = max(abs(x - y) for a, b in zip(base["values"], base["values_after"]) for x, y in zip(a, b))
    assert moved > 1e-2, "the SGD step did not change the values"
