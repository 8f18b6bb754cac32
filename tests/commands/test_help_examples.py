"""Every example in the `--help` of every megarl subcommand and of every tools/*.py runs as written:
in a scratch directory holding tiny stand-ins for the files the examples name (the demo's run
directory, a checkpoint, `~/models/...`), with `--dry-run` where the real thing is a cluster job,
a benchmark or a long run (`megarl train` examples are loaded and validated as `megarl train`
loads them). A new example must be added to HOW below, so that it is run too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megarl import cli

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p for p in (REPO / "tools").glob("*.py"))
PROGRAM = re.compile(r"^(megarl |python tools/|torchrun |echo )")

# example -> how it runs: "run" (as written), "dry" (as written plus --dry-run; evaluations run for real in
# tests/train/test_console_e2e.py and tests/commands/test_eval_and_filter_cli.py), "train" (the recipe
# and overrides loaded and validated as `megarl train` does), "serve" (started, answers /health, stopped).
HOW = {
    "megarl train configs/tiny_cpu.yaml": "train",
    "megarl train configs/tiny_cpu.yaml actor.tp=2 run.steps=5": "train",
    "torchrun --nproc-per-node 4 -m megarl.cli train configs/tiny_cpu.yaml actor.tp=2 actor.pp=2": "train",
    "megarl eval --model builtin:toy-arith --benchmarks toy-arith:heldout:200 --template none --max-new-tokens 48": "dry",
    "megarl eval --model builtin:toy-arith --benchmarks math500,gsm8k_test --template qwen-boxed --limit 50 --dry-run": "run",
    "megarl eval --model runs/tiny_cpu/hf/step_000030 --benchmarks toy-arith:heldout:200 --template none --max-new-tokens 48": "dry",
    "megarl eval --model MODEL_DIR --template qwen-boxed --protocol simplerl-zoo --extraction qwen-math": "dry",
    "megarl serve --model builtin:toy-arith --port 0": "serve",
    "megarl serve --model runs/tiny_cpu/hf/step_000030 --port 0": "serve",
    "megarl submit configs/simplerl_zoo_qwen2.5_7b.yaml --nodes 2 --rollout-nodes 1 --partition gpu --time 24:00:00 --requeue":
        "dry",
    "megarl submit configs/tiny_cpu.yaml --nodes 2 --rollout-nodes 1 --gpus-per-node 0 run.steps=3 rollout.transport=distributed":
        "dry",
    "megarl submit configs/simplerl_zoo_qwen2.5_32b.yaml --nodes 8 --rollout-nodes 4 --dry-run": "run",
    "megarl grade rollouts.jsonl --out graded.jsonl --timeout 5 --template qwen-boxed": "run",
    "megarl grade rollouts.jsonl --extraction qwen-math": "run",
    "megarl grade runs/tiny_cpu/samples.jsonl --template none": "run",
    """echo '{"id": 1, "response": "so \\\\boxed{\\\\frac12}", "answer": "0.5"}' | megarl grade -""": "run",
    "megarl data list": "run",
    "megarl data select hard --out train.jsonl": "run",
    "megarl data select math_lvl1to4_train --levels 3-4 --out lvl34.jsonl": "run",
    "megarl data overlap my_train.jsonl --drop-out my_train_clean.jsonl": "run",
    "megarl plot runs/tiny_cpu": "run",
    "megarl plot runs --out all_runs.png": "run",
    "megarl config configs/tiny_cpu.yaml actor.tp=2 rollout.n=8": "run",
    "megarl doctor --lock cpu": "run",
    "megarl sandbox run solve.py --timeout 5 --memory-mb 512": "run",
    "python tools/bench_sandbox.py --calls 20 --workers 2": "dry",
    "python tools/async_model.py --rollout-gpus 16 --train-gpus 16 --max-staleness 2 --json async_model.json": "dry",
    "python tools/bench_async.py --out /tmp/bench_async.json": "dry",
    "python tools/bench_async.py --steps 6 --modes sync async --eval-problems 50": "dry",
    "python tools/bench_async.py --set rollout.max_staleness=1 --out /tmp/k1.json": "dry",
    "python tools/bench_convert.py --shape qwen2.5-7b --repeats 3 --json bench_convert.json": "dry",
    "python tools/bench_grading.py --workers 2 --timeout 5 --json-out bench_grading.json": "dry",
    "python tools/bench_kernels.py --kernels logprob --vocabs 151936 --tokens 1024,4096 --json bench.json": "dry",
    "python tools/bench_sync.py --shape qwen2.5-0.5b --bucket-mb 64 256 1024 --json runs/bench_sync.json": "dry",
    "python tools/bench_sync.py --shape tiny --sections transport megatron --repeats 1": "dry",
    "python tools/bench_trl.py --steps 10 --warmup 2 --rounds 3 --threads 2 --json /tmp/bench_trl.json": "dry",
    "python tools/bench_trl.py --threads 1 --set actor.micro_batch_tokens=512": "dry",
    "python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_tp2 --tp 2 --dtype bf16 --verify":
        "run",
    "python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_mcore --iteration 500": "run",
    "python tools/convert_megarl_layout_to_torch_dist.py --in old_ckpt/qwen1.5b_tp2pp1 --out ckpt/qwen1.5b_migrated": "run",
    "python tools/convert_megatron_to_hf.py --megatron-dir ckpt/step_500 --out hf/qwen1.5b_step500 --max-shard-size 4GB --verify":
        "run",
    "python tools/convert_megatron_to_hf.py --megatron-dir mlm_ckpt/ --hf-assets ~/models/Qwen2.5-7B --out hf/qwen7b_mlm": "run",
}


def _strip(line: str) -> str:
    """The command of an example line, without a trailing `# comment` or `   (note)`."""
    line = re.sub(r"\s{2,}\(.*\)$", "", line.strip())
    if not line.startswith("echo "):
        line = re.sub(r"\s+#.*$", "", line)
    return line.strip()


def _help_text(main, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue()


def _load_tool(path: Path):
    name = f"megarl_tool_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the tool loads
        spec.loader.exec_module(module)
    return sys.modules[name]


def collect_examples() -> dict[str, str]:
    """{example: where it was found} over every subcommand's and tool's --help."""
    found = {}
    texts = {f"megarl {name}": _help_text(cli.main, [name, "--help"]) for name in cli.SUBCOMMANDS}
    texts.update({f"tools/{path.name}": _help_text(_load_tool(path).main, ["--help"]) for path in TOOLS})
    for where, text in texts.items():
        assert "example" in text.lower(), f"{where} --help shows no example"
        section = False
        for line in text.splitlines():
            header = re.match(r"^\s*examples?:\s*(.*)$", line, re.IGNORECASE)
            if header:
                section, line = True, header.group(1)
            elif not line.strip() or not line[:1].isspace():
                section = False  # a blank or unindented line ends the examples
            if section and PROGRAM.match(line.strip()):
                found[_strip(line)] = where
    return found


def test_every_help_example_is_covered():
    examples = collect_examples()
    assert set(examples) == set(HOW), {"not run by this test": sorted(set(examples) - set(HOW)),
                                        "no longer in any --help": sorted(set(HOW) - set(examples))}


# ---- the scratch directory -------------------------------------------------------------------
def _tiny_hf_model(toy_model: Path, out: Path) -> Path:
    """A random 2-layer Qwen2 with 4 query and 4 KV heads and the toy tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(toy_model)
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 2, 4, 4
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for name in os.listdir(toy_model):
        if name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(toy_model / name, out / name)
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, toy_model):
    """A directory as a user has it after the demo and with their own models, in miniature."""
    from megarl.demo.builtins import builtin_model_dir

    root = tmp_path_factory.mktemp("help_examples")
    home, cache = root / "home", root / "cache"
    (root / "configs").symlink_to(REPO / "configs")
    (root / "tools").symlink_to(REPO / "tools")
    cache.mkdir()
    env = {"HOME": str(home), "MEGARL_CACHE_DIR": str(cache)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGARL_CACHE_DIR", str(cache))
        (cache / builtin_model_dir("toy-arith", build=False).name).symlink_to(toy_model)  # builtin:toy-arith, cached
    model = _tiny_hf_model(Path(toy_model), home / "models" / "Qwen2.5-1.5B")
    (home / "models" / "Qwen2.5-7B").symlink_to(model)
    (root / "MODEL_DIR").symlink_to(model)
    run = root / "runs" / "tiny_cpu"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "step_000030").symlink_to(toy_model)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 10, "reward/has_answer": s / 5}) + "\n"
                                               for s in range(1, 4)))
    convert = _load_tool(REPO / "tools" / "convert_hf_to_megatron.py").main
    with contextlib.redirect_stdout(io.StringIO()):
        assert convert(["--hf-dir", str(model), "--out", str(root / "ckpt" / "step_500"), "--no-progress"]) == 0
        assert convert(["--hf-dir", str(model), "--out", str(root / "mlm_ckpt"), "--no-progress"]) == 0
    spec = importlib.util.spec_from_file_location("ckpt_helpers", REPO / "tests" / "checkpoint" / "ckpt_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.write_old_megarl_layout(model, root / "old_ckpt" / "qwen1.5b_tp2pp1", tp=2, pp=1)  # megarl's retired layout
    rows = [{"id": 1, "response": "so \\boxed{4}", "answer": "4"}, {"id": 2, "response": "it is 7", "answer": "8"}]
    (root / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "solve.py").write_text("print(6 * 7)\n")
    from megarl.monitoring.metrics import MetricsLogger

    MetricsLogger(run, {}, wandb_mode="disabled").record_samples(  # samples.jsonl as a training run writes it
        3, [{"prompt": "1+1=", "response": "\\boxed{2}", "gold": "2", "reward": 1.0}])
    (root / "my_train.jsonl").write_text(json.dumps({"problem": "What is 17 + 25?", "answer": "42"}) + "\n")
    return root, env


def _argv(example: str, how: str) -> list[str]:
    argv = shlex.split(example)
    if how == "dry" and "--dry-run" not in argv:
        argv.append("--dry-run")
    return argv


def _run(example: str, how: str, root: Path, env: dict, monkeypatch) -> tuple[int, str]:
    """(exit code, output) of an example, run in this process (a shell for a pipe)."""
    if example.startswith("echo "):
        proc = subprocess.run(["bash", "-c", example], cwd=root, env=dict(os.environ, **env), capture_output=True, text=True,
                              timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    argv = [a.replace("~", env["HOME"], 1) if a.startswith("~") else a for a in _argv(example, how)]
    if how == "train":  # what `megarl train` loads, validated (the run itself is the e2e tests' job)
        argv = ["megarl", "config", *argv[argv.index("train") + 1:]]
    monkeypatch.chdir(root)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = _load_tool(root / argv[1]).main(argv[2:]) if argv[0] == "python" else cli.main(argv[1:])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            print(exit_.code, file=out)
    return int(code or 0), out.getvalue()


def _serve(example: str, root: Path, env: dict) -> None:
    argv = [sys.executable, "-m", "megarl.cli", *shlex.split(example)[1:]]
    with open(root / "serve.log", "w+") as log:
        proc = subprocess.Popen(argv, cwd=root, env=dict(os.environ, **env, OMP_NUM_THREADS="1"), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                log.seek(0)
                match = re.search(r"listening on (http://\S+)", log.read())
                if match:
                    import urllib.request

                    with urllib.request.urlopen(match.group(1) + "/health", timeout=10) as reply:
                        assert reply.status == 200
                    return
                time.sleep(0.2)
            log.seek(0)
            raise AssertionError(f"{example}: no 'listening' line (exit {proc.poll()}):\n{log.read()[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


@pytest.mark.parametrize("example", list(HOW))
def test_example_runs(example, workspace, monkeypatch):
    root, env = workspace
    how = HOW[example]
    if how == "serve":
        _serve(example, root, env)
        return
    code, output = _run(example, how, root, env, monkeypatch)
    assert code == 0, f"{example}\nexit {code}\n{output[-3000:]}"
