"""tools/gpu_check.sh on CPU: the dry run checks every GPU step (files, imports, arguments, recipes through
`megarl config`, the GPU lock for 3.11 and 3.12, the wheel list of each, the check model); GPU mode
without a GPU prints the installed-vs-lock table; the wheel plan, the download budget (real pip
against a local wheel folder), the carried-wheel checks and the log-prob bound."""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from megarl.runtime.device import on_gpu

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
_SPEC = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look their module up
_SPEC.loader.exec_module(gpu_check)


def _run(*args, cwd, env=None):
    env = {k: v for k, v in (env or os.environ).items() if k != "OUT"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_checks_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in result["steps"]}
    assert list(status) == ["files", "arguments", "locks", "wheels_py3.11", "wheels_py3.12", "environment", "imports",
                            "te_layers", "check_model", "check_moe_model", "recipe_grpo_sglang", "recipe_grpo_apart_sglang",
                            "recipe_colocated_sglang", "recipe_grpo_builtin", "recipe_grpo_apart_builtin",
                            "recipe_colocated_builtin", "recipe_optimizer_offload"]
    assert status.pop("te_layers") == "skipped"  # no transformer-engine on CPU: skipped, not passed
    assert set(status.values()) == {"pass"} and result["ok"]
    for version in ("3.11", "3.12"):  # megarl's run requirements lead the list; the image's CUDA stack is left out
        wheels = [w.split("==")[0] for w in result["info"][f"wheels_py{version}"]]
        assert wheels.index("megatron-core") < wheels.index("sglang") and "torch" not in wheels
    md = (out / "gpu_check.md").read_text()
    assert "| recipe_grpo_sglang | pass |" in md and "| package | locked | installed |" in md


def test_gpu_mode_without_a_gpu_says_what_is_missing(tmp_path):
    if on_gpu():
        pytest.skip("on a GPU machine this would start the real check")
    out = tmp_path / "o"
    proc = _run("--out", str(out), "--python", sys.executable, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"torch {torch.__version__} (CUDA build none) sees no GPU" in proc.stdout
    assert "package" in proc.stdout and "locked" in proc.stdout  # the table, not a bare refusal
    result = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in result["steps"]] == ["environment"] and not result["ok"]
    locked = gpu_check.read_lock(gpu_check.gpu_lock(f"3.{sys.version_info.minor}"))
    assert ["transformer-engine", locked["transformer-engine"], None] in result["versions"]


def test_bad_arguments_fail_clearly(tmp_path):
    proc = _run("--bogus", cwd=tmp_path)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
    proc = _run("--python", str(tmp_path / "nopython"), cwd=tmp_path)
    assert proc.returncode == 2 and "no Python interpreter" in proc.stderr
    proc = _run("--fetch-wheels", str(tmp_path / "w"), "--python-version", "3.10", "--plan", cwd=tmp_path)
    assert proc.returncode == 1 and "no GPU lock for Python '3.10'" in proc.stderr and "3.11, 3.12" in proc.stderr
    proc = _run("--fetch-wheels", str(tmp_path / "w"), "--only", "megatron-core,nosuch", "--plan", cwd=tmp_path)
    assert proc.returncode == 1 and "--only nosuch: not in gpu-py312.txt" in proc.stderr


def test_wheel_plan_follows_the_lock_of_each_python(tmp_path):
    for version in ("3.11", "3.12"):
        lock = gpu_check.gpu_lock(version)
        pins = gpu_check.read_lock(lock)
        plan = gpu_check.wheel_plan(lock)
        names = [n for n, _ in plan.want]
        assert ("megatron-core", pins["megatron-core"]) in plan.want  # 0.16.1 on 3.11, newer on 3.12
        assert set(plan.image) == {n for n in pins if gpu_check.IMAGE_STACK.match(n)} and "torch" in plan.image
        assert len(names) + len(plan.image) == len(pins)
        run = {n for n in gpu_check.setup_requirements()["run"] if n in names}
        assert names[:len(run)] == sorted(run)  # megarl's own requirements first
    have = tmp_path / "freeze.txt"
    have.write_text("numpy==2.5.2\npydantic==2.14.4\n")
    plan = gpu_check.wheel_plan(gpu_check.gpu_lock("3.12"), gpu_check.read_have(have), ["pydantic", "numpy", "math-verify"])
    assert [n for n, _ in plan.want] == ["math-verify"] and plan.have == ["numpy", "pydantic"]


def _wheel(folder: Path, name: str, version: str, payload_bytes: int) -> Path:
    """A real (tiny) wheel, as pip reads one."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
        z.writestr(f"{name.replace('-', '_')}/data.bin", os.urandom(payload_bytes))
    return path


def test_fetch_wheels_keeps_to_the_budget(tmp_path, monkeypatch):
    """Real pip downloads from a local index folder: the first wheel fits, the second would pass the budget."""
    index, dest = tmp_path / "index", tmp_path / "dest"
    index.mkdir()
    lock = gpu_check.gpu_lock("3.12")
    pins = gpu_check.read_lock(lock)
    _wheel(index, "math-verify", pins["math-verify"], 300_000)
    _wheel(index, "pydantic", pins["pydantic"], 300_000)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    plan = gpu_check.wheel_plan(lock, only=["pydantic", "math-verify", "annotated-types"])
    report = gpu_check.fetch_wheels(plan, dest, "3.12", 0.5, [sys.executable, "-m", "pip"])
    assert report["fetched"] == [f"math-verify=={pins['math-verify']}"]
    assert report["over_budget"][0].startswith(f"pydantic=={pins['pydantic']}")
    assert report["no_wheel"] == [f"annotated-types=={pins['annotated-types']}"]
    assert [p.name.split("-")[0] for p in dest.glob("*.whl")] == ["math_verify"]
    assert gpu_check.check_wheels(dest, lock) == []


def test_carried_wheels_checked_against_the_lock(tmp_path):
    lock = gpu_check.gpu_lock("3.12")
    assert gpu_check.check_wheels(tmp_path, lock)[0].startswith("no wheels in")
    _wheel(tmp_path, "pydantic", "1.0", 10)
    _wheel(tmp_path, "pydantic", gpu_check.read_lock(lock)["pydantic"], 10)
    problems = gpu_check.check_wheels(tmp_path, lock)
    assert any("two wheels" in p for p in problems) and any(p.startswith("pydantic 1.0: gpu-py312.txt pins") for p in problems)


def test_step_limits_fit_eight_minutes(tmp_path):
    assert sum(gpu_check.STEP_LIMITS.values()) <= gpu_check.TOTAL_LIMIT_S <= 8 * 60
    steps = gpu_check.Steps(tmp_path, dict(os.environ))
    rc, text, _ = steps.run("sleep", 5, ["sleep", "30"])
    assert rc == 124  # killed at its own limit
    steps.deadline = gpu_check.time.monotonic()  # the check's 8 minutes are spent: later steps do not start
    assert steps.run("echo", 60, ["echo", "hi"])[0] == 124
    assert "timed out after 5 s" in gpu_check.failure(124, 5, "")


def test_logprob_check_holds_the_stated_bound(tmp_path):
    metrics = tmp_path / "metrics.jsonl"

    def write(*means):
        metrics.write_text("".join(json.dumps({"step": i, "mismatch/logp_abs_mean": m, "mismatch/logp_abs_max": 0.5})
                                   + "\n" for i, m in enumerate(means)))
        return gpu_check.check_logprobs(metrics, 3)[0]

    bound = gpu_check.MISMATCH_BOUND
    assert write(0.01, 0.02, bound) == "pass"
    assert write(0.01, bound * 1.01, 0.01) == "fail"  # e.g. a push the server did not apply
    assert write(0.01, 0.02) == "fail"  # a step missing
    metrics.write_text('{"step": 0}\n' * 3)
    assert gpu_check.check_logprobs(metrics, 3)[:2] == ("fail", "a step logged no mismatch/logp_abs_mean (no behaviour log-probs from the server)")
    assert gpu_check.check_logprobs(tmp_path / "none.jsonl", 3)[0] == "fail"


def test_kernel_tests_skipped_on_a_gpu_machine_fail_the_row(tmp_path):
    """The check runs tests/kernels/test_gpu_compiled.py with compiled Triton (TRITON_INTERPRET empty, which
    tests/conftest.py keeps); tests that skip anyway (here: no GPU) fail the row instead of passing it."""
    steps = gpu_check.Steps(tmp_path, gpu_check.python_env(None))
    assert steps.env["TRITON_INTERPRET"] == ""
    row = gpu_check.kernel_tests(steps)
    if on_gpu():
        assert row.status == "pass", row.detail
    else:
        assert row.status == "fail" and "skipped on a GPU machine" in row.detail, row.detail
