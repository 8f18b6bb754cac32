"""The console of a run (megarl.monitoring.console): step lines, held-out lines, sample tables every
N steps, plain progress lines when piped, the banner, the cache root, quiet third parties."""

import io
import json
import os
import subprocess
import sys
import textwrap

from rich.console import Console

from megarl.config import load_config
from megarl.monitoring.console import Progress, banner, step_line
from megarl.monitoring.metrics import MetricsLogger

STEP = {"reward/mean": 0.5234, "reward/accuracy": 0.5, "reward/has_answer": 0.625, "response/length_mean": 24.43,
        "response/truncated": 0.0, "actor/entropy": 0.0886, "actor/grad_norm": 0.276, "perf/step_s": 0.652,
        "perf/tokens_per_s": 4960.0}


def test_step_line_is_one_short_line():
    line = step_line(12, 30, STEP)
    assert line == "step 12/30  reward 0.52  acc 50%  answered 62%  len 24.4  entropy 0.089  grad 0.276  0.65 s  5.0k tok/s"
    assert "truncated" not in line and "kl" not in line  # zero or not logged
    assert "truncated 25%" in step_line(1, 2, {**STEP, "response/truncated": 0.25})


def _logger(tmp_path, width=60, samples_every=10):
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False)
    return MetricsLogger(tmp_path, {}, wandb_mode="disabled", total_steps=30, samples_every=samples_every, console=console), out


def test_logger_prints_a_line_per_step_eval_lines_and_tables_every_n_steps(tmp_path):
    logger, out = _logger(tmp_path, samples_every=10)
    sample = {"prompt": "Tom has 2 apples.", "response": "The answer is \\boxed{4}.", "gold": "4", "reward": 1.0}
    logger.log(0, {"eval/toy:heldout/accuracy": 0.0})
    for step in range(1, 21):
        metrics = dict(STEP)
        if step % 10 == 0:
            metrics["eval/toy:heldout/accuracy"] = step / 40
        logger.log(step, metrics, samples=[sample, sample])
    lines = out.getvalue().splitlines()
    assert "step 0" not in lines
    assert lines[0] == "held out before training (step 0): toy:heldout 0.0%"
    assert len([line for line in lines if line.startswith("step ")]) == 20
    assert all(len(line) > 60 for line in lines if line.startswith("step "))  # not wrapped at the pipe's width
    assert "held out at step 10: toy:heldout 25.0% (+25.0 points since step 0)" in lines
    assert "held out at step 20: toy:heldout 50.0% (+50.0 points since step 0)" in lines
    assert [line.strip() for line in lines if "samples at step" in line] == ["samples at step 10", "samples at step 20"]
    assert len(lines) < 20 + 3 + 2 * 16  # 20 step lines, 3 held-out lines, two small tables
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and rows[0]["step"] == 1  # the file still gets every step's samples
    logger.checkpoint_saved(20, tmp_path / "checkpoints" / "step_000020")
    assert out.getvalue().splitlines()[-1] == f"checkpoint at step 20: {tmp_path / 'checkpoints' / 'step_000020'}"


def test_samples_every_zero_prints_no_table(tmp_path):
    logger, out = _logger(tmp_path, samples_every=0)
    logger.log(10, STEP, samples=[{"prompt": "p", "response": "r", "gold": "1", "reward": 0.0}])
    assert "samples at step" not in out.getvalue()


def test_progress_piped_prints_plain_lines():
    out = io.StringIO()
    with Progress("pretraining toy model", total=4, unit="steps", terminal=False, every_s=0.0, stream=out) as bar:
        for i in range(4):
            bar.update(1, detail=f"loss {1.0 / (i + 1):.3f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "pretraining toy model: 4 steps ..."
    assert lines[1].startswith("pretraining toy model: 1/4 steps (25%), loss 1.000, 0 s elapsed, about 0 s left")
    assert len(lines) == 5 and lines[-1].startswith("pretraining toy model: 4/4 steps done in ") and lines[-1].endswith("loss 0.250")
    quiet = io.StringIO()
    with Progress("x", total=2, terminal=False, enabled=False, stream=quiet) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""


def test_toy_model_pretraining_shows_progress_when_piped(tmp_path, capfd):
    from megarl.demo.toy_model import build_toy_model

    build_toy_model(tmp_path, steps=3, hidden_size=32, intermediate_size=64, tokenizer_corpus_size=200)
    out = capfd.readouterr().out
    assert "pretraining toy model (once, then cached): 3 steps ...\n" in out  # at the start, not only at the end
    assert "pretraining toy model (once, then cached): 3/3 steps done in " in out
    assert "━" not in out  # no rich bar in a pipe


def test_cache_root_honours_megarl_cache_dir_then_xdg(tmp_path, monkeypatch):
    from megarl.demo.builtins import builtin_model_dir
    from megarl.runtime.cache import cache_root

    monkeypatch.delenv("MEGARL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "megarl"
    assert builtin_model_dir("toy-arith", build=False).parent == tmp_path / "xdg" / "megarl"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # invalid per the XDG spec: ignored
    assert str(cache_root()) == os.path.join(os.path.expanduser("~"), ".cache", "megarl")
    monkeypatch.setenv("MEGARL_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert builtin_model_dir("toy-arith", build=False).parent == tmp_path / "mine"


def test_banner_says_new_or_resumed_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGARL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config("configs/tiny_cpu.yaml", [f"run.output_dir={tmp_path / 'run'}"])
    fresh = banner(cfg, resume_step=None, model_note="toy-arith is cached").splitlines()
    assert fresh[0] == "megarl train: tiny_cpu, 30 steps of grpo on builtin:toy-arith"
    assert f"  run dir     {tmp_path / 'run'} (new run)" in fresh
    assert f"  cache       {tmp_path / 'cache'} (toy-arith is cached)" in fresh
    assert "  samples     a table every 10 steps; all in " + str(tmp_path / "run" / "samples.jsonl") in fresh
    resumed = banner(cfg, resume_step=20)
    assert f"{tmp_path / 'run'} (resuming from the checkpoint at step 20)" in resumed


SAVE_TINY_MODEL = textwrap.dedent("""
    import os, sys, warnings
    from megarl.monitoring.console import quiet_third_party
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2))
    quiet_third_party()  # MEGARL_VERBOSE=1: does nothing
    model.save_pretrained(sys.argv[1] + "/a")
    warnings.warn("library deprecation", FutureWarning)
    print("== quiet ==", file=sys.stderr, flush=True)
    del os.environ["MEGARL_VERBOSE"]
    quiet_third_party()  # transformers is imported already: turned off in place
    model.save_pretrained(sys.argv[1] + "/b")
    warnings.warn("library deprecation", FutureWarning)
""")


def test_third_party_bars_and_warnings_are_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                            "TRANSFORMERS_VERBOSITY", "MEGARL_VERBOSE")}
    proc = subprocess.run([sys.executable, "-c", SAVE_TINY_MODEL, str(tmp_path)], env={**env, "MEGARL_VERBOSE": "1"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loud, quiet = proc.stderr.split("== quiet ==\n")
    assert "Writing model shards" in loud and "FutureWarning: library deprecation" in loud
    assert quiet == "" and proc.stdout == ""


def test_conversion_and_pass_rate_progress_are_plain_lines_in_a_pipe(capfd):
    from megarl.checkpoint.progress import TransferProgress
    from megarl.data.loading import PromptRecord
    from megarl.data.pass_rate import measure_pass_rates

    with TransferProgress("HF->Megatron 1x1", total_bytes=3 * 10**6) as bar:
        for _ in range(3):
            bar.advance(10**6)
    err = capfd.readouterr().err
    assert err.startswith("HF->Megatron 1x1: 3 MB ...\n"), err
    assert "HF->Megatron 1x1: 3/3 MB done in 0 s, 3 tensors" in err and "━" not in err

    records = [PromptRecord(id=str(i), problem=f"{i} + 1?", answer=str(i + 1)) for i in range(3)]
    rates = measure_pass_rates(records, lambda prompts, k: [[f"\\boxed{{{p.split()[0]}}}"] * k for p in prompts], k=2,
                               template="none")
    assert [r.correct for r in rates] == [0, 0, 0]
    out = capfd.readouterr().out
    assert "sampling and grading: 3 prompts ...\n" in out and "sampling and grading: 3/3 prompts done in " in out
