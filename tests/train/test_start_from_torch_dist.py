"""`megarl train` starts from a torch_dist checkpoint in Megatron-LM's layout (as Megatron-LM or
Megatron-Bridge write it; here written by tools/convert_hf_to_megatron.py) and trains exactly as
from the HF directory it was made from: identical first-step metrics. The HF directory the rollout
servers start from is the live actor exported (streamed, no staging copy): the original weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_e2e import _metrics, _train

ROOT = Path(__file__).resolve().parents[2]


def test_training_from_a_megatron_lm_checkpoint_equals_training_from_hf(write_recipe, toy_model, tmp_path):
    root = tmp_path / "toy_mcore"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_to_megatron.py"), "--hf-dir", str(toy_model),
                           "--out", str(root), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe, run_dir = write_recipe("from_hf", run={"steps": 1}, reward={"custom": "toy_rewards:mentions_seven"})
    _train(recipe)
    recipe2, run_dir2 = write_recipe("from_mcore", run={"steps": 1}, reward={"custom": "toy_rewards:mentions_seven"},
                                     model={"path": str(root)})
    _train(recipe2)
    assert (run_dir2 / "initial_hf" / "config.json").is_file()  # what the rollout servers started from
    exported = {}
    for path in sorted((run_dir2 / "initial_hf").glob("*.safetensors")):
        exported.update(load_file(path))
    original = {}
    for path in sorted(Path(toy_model).glob("*.safetensors")):
        original.update(load_file(path))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor.to(exported[name].dtype)), name
    assert not list(run_dir2.glob("initial_hf.*"))  # no staging directory left beside it
    want, have = _metrics(run_dir)[0], _metrics(run_dir2)[0]
    for key, value in want.items():
        if key.startswith("mismatch/"):  # the server's own log-probs carry batching-dependent float noise
            assert have[key] == pytest.approx(value, abs=1e-6), key
        elif not key.startswith("perf/"):  # wall-clock
            assert have[key] == value, (key, value, have[key])
