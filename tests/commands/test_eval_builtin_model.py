"""`megarl eval --model builtin:toy-arith`: the `builtin:` scheme the demo registers with megarl.model_source
(loaded by the `megarl` command), resolved to the cached toy model and evaluated through the built-in server."""

import os
import subprocess
import sys


def test_eval_of_a_builtin_model_as_the_demo_readme_runs_it(toy_model, tmp_path, monkeypatch):
    from megarl.demo.builtins import builtin_model_dir
    from megarl.runtime.cache import CACHE_ENV

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    (cache / builtin_model_dir("toy-arith", build=False).name).symlink_to(toy_model)  # cached: no pretraining here
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "megarl.cli", "eval", "--model", "builtin:toy-arith", "--benchmarks",
                           "toy-arith:heldout:20", "--template", "none", "--max-new-tokens", "48", "--extraction", "answer_is",
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "toy-arith:heldout:20" in proc.stdout and "not an HF model directory" not in proc.stderr
    assert (tmp_path / "eval" / "summary.json").is_file()
