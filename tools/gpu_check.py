"""One-GPU check of what megarl's GPU recipes run, and its CPU dry run (the engine of tools/gpu_check.sh).

On one H100/H200 (Python 3.11 or 3.12, CUDA torch and triton installed, no network), within 8 minutes:

  install          the carried wheels (--wheels DIR, made by --fetch-wheels) into a private site folder
  environment      every package of the GPU lock for this Python against what is installed: a table of
                   package, locked version, installed version (gpu_check.md); torch must see a GPU
  kernel_tests     the compiled Triton kernels against their torch references
  check_model      a Qwen2 model with Qwen2.5-0.5B's layer shapes (hidden 896, 14 heads of 64, 2 KV heads,
                   MLP 4864, tied embeddings), 4 layers, random weights in bf16, the toy task's tokenizer
  sglang           SGLang 0.5.23 importable (its HTTP server module); else the run rows use megarl's
                   built-in server and every SGLang row is marked skipped, never passed
  te_layers        megarl builds Transformer Engine layers (skipped when transformer-engine does not import)
  grpo_<engine>    three GRPO steps, model.dtype=bf16, THD packing, rollout.mode=sync so every step generates
                   with the weights the last step pushed. With two GPUs or more: rollout.transport=distributed
                   (the NCCL update group and SGLang's weight-update session), the server on GPU 1 started by
                   megarl's node launcher as in a split Slurm job, the trainer on GPU 0. With one GPU, NCCL refuses
                   a communicator with two ranks on one device, so `distributed_<engine>` is skipped (saying so)
                   and the run pushes by the tensor transport (CUDA IPC) to a server on the same GPU
  logprobs_<engine> every step's mismatch/logp_abs_mean (the trainer's log-prob of each sampled token minus
                   the server's, megarl/train/stages/metrics.py) at most MISMATCH_BOUND; every step generates
                   with weights the trainer pushed (version 0 at the start, then after each update), so a lost
                   or corrupted push shows here
  colocated_<engine> one colocated step (trainer offloads weights, gradients and optimizer state while the
                   server generates; transport tensor, as colocated GPUs share one device), with the device
                   memory allocated before, after and at peak
  optimizer_offload one step with the optimizer state in host memory (HybridDeviceOptimizer, built-in server)

`--dry-run` checks all of it on a CPU machine: the files, the imports that work on CPU, the arguments,
every recipe override through `megarl config`, the GPU lock chosen for 3.11 and 3.12, the wheel list
computed from each, the check model written, the installed-vs-lock table. Results: gpu_check.json
and gpu_check.md in --out, step logs in gpu_check.log.

  python tools/gpu_check.py --dry-run --out /tmp/gc
  python tools/gpu_check.py --fetch-wheels .whl --python-version 3.12 --budget-mb 48 --have image-freeze.txt
  python tools/gpu_check.py --wheels .whl --out results
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megarl.doctor import LOCKS, RUN_IMPORTS, installed_versions, normalize, read_lock, same_version  # noqa: E402

SGLANG_VERSION = "0.5.23"
# Mean |trainer log-prob - served log-prob| per sampled token (nats), bf16 weights on both sides and
# different kernels: a chosen allowance until a GPU run measures the gap (docs/benchmarks.md).
MISMATCH_BOUND = 0.05
GRPO_STEPS = 3
# Seconds per step; together 480 s, the 8 minutes this check may take on one H100/H200 (TOTAL_LIMIT_S
# also cuts the last steps short when the in-process checks took longer than expected).
TOTAL_LIMIT_S = 480
STEP_LIMITS = {"install": 30, "environment": 30, "kernel_tests": 40, "check_model": 30, "sglang": 30, "te_layers": 25,
               "grpo": 120, "colocated": 85, "optimizer_offload": 45, "moe_parity": 45}
# The CUDA stack a CUDA torch image brings (built for its driver): never carried as wheels.
IMAGE_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
WHEEL_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
RECIPE = "configs/tiny_cpu.yaml"
KERNEL_TESTS = "tests/kernels/test_gpu_compiled.py"
# The check model: Qwen2.5-0.5B's layer shapes (head_dim 64, GQA 14:2), fewer layers, the toy tokenizer.
CHECK_MODEL = {"hidden_size": 896, "intermediate_size": 4864, "num_layers": 4, "num_heads": 14, "num_kv_heads": 2,
               "max_position_embeddings": 1024}
ENGINES = ("sglang", "builtin")
# The MoE check model: the check model's attention with Qwen3-MoE layers (8 experts of 768, top-2): what
# only a GPU runs of issue 25's path, Transformer Engine's grouped GEMM for the experts.
CHECK_MOE = {**CHECK_MODEL, "num_layers": 2, "num_experts": 8, "experts_per_token": 2, "moe_intermediate_size": 768}


@dataclass
class Row:
    """One line of the result table: pass, fail or skipped (a skipped row is never counted as passed)."""

    step: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


# ---- locks and wheels --------------------------------------------------------------------------------
def gpu_lock(python_version: str) -> Path:
    """The GPU lock resolved for `python_version` (3.11 -> megarl/locks/gpu-py311.txt)."""
    match = re.fullmatch(r"3\.(\d+)", python_version.strip())
    lock = LOCKS / f"gpu-py3{match.group(1)}.txt" if match else None
    if lock is None or not lock.is_file():
        have = ", ".join(sorted(f"3.{m}" for m in re.findall(r"gpu-py3(\d+)\.txt", " ".join(p.name for p in LOCKS.iterdir()))))
        raise SystemExit(f"gpu_check: no GPU lock for Python {python_version!r}; megarl/locks/ has GPU locks for {have} "
                         "(tools/lock.sh writes them)")
    return lock


def lock_graph(lock: Path) -> dict[str, list[str]]:
    """{package: the packages that need it} from the lock's `# via` annotations ('megarl' for setup.py)."""
    parents = {}
    for line in lock.read_text().splitlines():
        if "==" not in line or line.lstrip().startswith("#"):
            continue
        name = normalize(line.split("==", 1)[0].split("[")[0].strip())
        via = line.split("# via", 1)[1] if "# via" in line else ""
        parents[name] = ["megarl" if "(setup.py)" in v else normalize(v.strip()) for v in via.split(",") if v.strip()]
    return parents


def read_have(path: Path | None) -> dict[str, str]:
    """A target image's `pip list --format=freeze` (name==version lines) as {name: version}."""
    return read_lock(path) if path is not None else {}


@dataclass
class WheelPlan:
    want: list[tuple[str, str]]  # (name, locked version), most needed first
    image: list[str]  # the CUDA stack the image brings
    have: list[str]  # already on the target (--have), at any version


def setup_requirements() -> dict[str, list[str]]:
    """{'run': megarl's install_requires names, 'gpu': the gpu extra's}, read from setup.py's literals."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    values = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}

    def names(reqs: list[str]) -> list[str]:
        return [normalize(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in reqs]

    return {"run": names(ast.literal_eval(values["INSTALL_REQUIRES"])), "gpu": names(ast.literal_eval(values["EXTRAS"])["gpu"])}


def _depths(children: dict[str, set[str]], seeds: list[str]) -> dict[str, int]:
    """Breadth-first distance of every package reachable from `seeds` (0) along `children`."""
    depth, frontier = {s: 0 for s in seeds}, list(seeds)
    while frontier:
        nxt = []
        for name in frontier:
            for child in sorted(children.get(name, ())):
                if child not in depth:
                    depth[child] = depth[name] + 1
                    nxt.append(child)
        frontier = nxt
    return depth


def wheel_plan(lock: Path, have: dict[str, str] | None = None, only: list[str] | None = None) -> WheelPlan:
    """The locked packages to carry, most needed first: megarl's run requirements and what they need,
    then the gpu extra's (SGLang, transformer-engine, ...) and theirs, then the rest (the dev extra),
    each by distance in the lock's `via` graph; minus the image's CUDA stack and what `have` lists.
    `only` keeps those names alone (each must be in the lock)."""
    pins, have = read_lock(lock), have or {}
    children: dict[str, set[str]] = {}
    for name, via in lock_graph(lock).items():
        for parent in via:
            children.setdefault(parent, set()).add(name)
    reqs = setup_requirements()
    tiers = [_depths(children, [n for n in reqs["run"] if n in pins]), _depths(children, [n for n in reqs["gpu"] if n in pins]),
             _depths(children, ["megarl"])]
    def order(name: str) -> tuple:
        tier = next((i for i, d in enumerate(tiers) if name in d), len(tiers))
        return tier, tiers[tier][name] if tier < len(tiers) else 0, name
    names = sorted(pins, key=order)
    if only:
        wanted = [normalize(n) for n in only]
        unknown = [n for n in wanted if n not in pins]
        if unknown:
            raise SystemExit(f"gpu_check: --only {','.join(unknown)}: not in {lock.name}; name packages the lock pins")
        names = [n for n in names if n in wanted]
    image = [n for n in names if IMAGE_STACK.match(n)]
    on_target = [n for n in names if n in have and n not in image]
    want = [(n, pins[n]) for n in names if n not in image and n not in on_target]
    return WheelPlan(want, image, on_target)


def fetch_wheels(plan: WheelPlan, dest: Path, python_version: str, budget_mb: float, pip: list[str]) -> dict:
    """Download each planned wheel (no dependencies: the plan is the closure) for CPython `python_version`
    on x86-64 Linux, most needed first, while the folder stays within `budget_mb`. Returns what was
    fetched, what did not fit and what has no wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    fetched, too_big, no_wheel = [], [], []
    used = sum(p.stat().st_size for p in dest.glob("*.whl"))
    for name, version in plan.want:
        before = set(dest.glob("*.whl"))
        cmd = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)], "-d", str(dest),
               f"{name}=={version}"]
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            no_wheel.append(f"{name}=={version}")
            continue
        new = set(dest.glob("*.whl")) - before
        size = sum(p.stat().st_size for p in new)
        if used + size > budget_mb * 2**20:
            for p in new:
                p.unlink()
            too_big.append(f"{name}=={version} ({size / 2**20:.1f} MiB)")
            continue
        used += size
        fetched.append(f"{name}=={version}")
    return {"fetched": fetched, "over_budget": too_big, "no_wheel": no_wheel, "mib": round(used / 2**20, 1)}


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalized name, version) of a wheel file name."""
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def check_wheels(folder: Path, lock: Path) -> list[str]:
    """Problems with a carried wheel folder against `lock`: none there, two versions of one package
    (which stops pip), or a version the lock does not pin."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return [f"no wheels in {folder} (make them with --fetch-wheels {folder})"]
    pins, seen, problems = read_lock(lock), {}, []
    for w in wheels:
        name, version = wheel_name(w)
        if name in seen:
            problems.append(f"{name}: two wheels ({seen[name]}, {version}); keep one")
        seen[name] = version
        if name in pins and pins[name] != version:
            problems.append(f"{name} {version}: {lock.name} pins {pins[name]}")
    return problems


def version_table(lock: Path) -> list[tuple[str, str, str | None]]:
    """(package, locked version, installed version or None) for each locked package not installed at
    its locked version, megarl's own requirements first."""
    have, pins = installed_versions(), read_lock(lock)
    order = [n for n, _ in wheel_plan(lock).want] + wheel_plan(lock).image
    rank = {n: i for i, n in enumerate(order)}
    rows = [(n, v, have.get(n)) for n, v in pins.items() if n not in have or not same_version(have[n], v)]
    return sorted(rows, key=lambda r: (rank.get(r[0], len(rank)), r[0]))


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]


# ---- the check model ---------------------------------------------------------------------------------
def make_check_model(out_dir: Path, settings: dict = CHECK_MODEL) -> dict:
    """Write the check model (random weights, seed 0, bf16) and the toy task's tokenizer to `out_dir`
    (`settings`: CHECK_MODEL, or CHECK_MOE for the mixture-of-experts one)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from megarl.demo.toy_model import ToyModelSettings, build_tokenizer, pretraining_corpus, toy_model_config

    toy = ToyModelSettings()
    corpus = [p + s for p, s in pretraining_corpus(toy)[: toy.tokenizer_corpus_size]]
    tokenizer = build_tokenizer(corpus, toy.tokenizer_vocab_size)
    config = toy_model_config(ToyModelSettings(**settings), len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.dtype = "bfloat16"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer), "dir": str(out_dir)}


# ---- the recipes ---------------------------------------------------------------------------------------
def recipes(engine: str, model_dir: Path, run_root: Path, transport: str = "distributed") -> dict[str, list[str]]:
    """`megarl train` arguments of the runs, on the demo recipe's task: `grpo` (bf16, `transport`, sync mode),
    `colocated` (one colocated step, trainer state offloaded while generating) and `optimizer_offload`
    (one step with the optimizer state in host memory)."""
    common = [RECIPE, f"model.path={model_dir}", "model.dtype=bf16", f"rollout.engine={engine}", "rollout.mode=sync",
              "run.resume=false", "eval.every=0", "checkpoint.every=0", "logging.wandb=disabled",
              "data.prompts_per_step=8", "rollout.n=4", "rollout.max_new_tokens=32",
              # Random weights earn no reward, so advantages are zero: the entropy term moves the weights
              # (lr 1e-3, far above bf16's resolution), so a stale server would disagree after a push.
              "algorithm.entropy_coef=0.01", "actor.lr=1.0e-3"]
    return {
        "grpo": [*common, f"run.steps={GRPO_STEPS}", f"run.name=grpo_{engine}", f"run.output_dir={run_root}/grpo_{engine}",
                 f"rollout.transport={transport}"],
        # Colocated GPUs share one device; NCCL refuses a communicator with two ranks on it, so the
        # colocated step takes the weights as CUDA IPC handles (tensor transport).
        "colocated": [*common, "run.steps=1", f"run.name=colocated_{engine}", f"run.output_dir={run_root}/colocated_{engine}",
                      "rollout.transport=tensor", "rollout.colocate=true", "rollout.mem_fraction_static=0.3"],
        # The optimizer state in host memory, stepped there (Megatron's HybridDeviceOptimizer).
        "optimizer_offload": [*common, "run.steps=1", f"run.name=offload_{engine}", f"run.output_dir={run_root}/offload_{engine}",
                              "rollout.transport=tensor", "actor.distributed_optimizer=true", "actor.optimizer_offload=true"],
    }


# ---- the colocated step (a subprocess of the GPU check) ------------------------------------------------
def colocated_step(argv: list[str]) -> int:
    """Run one colocated training step of recipe `argv` and print device memory before, after and at peak."""
    import megarl.demo  # noqa: F401  registers builtin: models and the toy sets, as the megarl command does
    from megarl.config import load_config
    from megarl.runtime import device
    from megarl.runtime.distributed import shutdown_runtime
    from megarl.train.trainer import Trainer

    cfg = load_config(argv[0], argv[1:])
    gib = 2**-30
    trainer = Trainer(cfg)
    try:
        device.synchronize()
        before = device.memory_allocated()
        device.reset_peak_memory()
        history = trainer.train()
        device.synchronize()
        after, peak = device.memory_allocated(), device.max_memory_allocated()
    finally:
        trainer.close()
        shutdown_runtime()
    if before is None:
        print("colocated: no device memory statistics (CPU runtime)")
        return 1
    offloaded = history[-1].get("colocate/offloaded_gib") if history else None
    result = {"before_gib": round(before * gib, 3), "after_gib": round(after * gib, 3), "peak_gib": round(peak * gib, 3),
              "offloaded_gib": offloaded, "steps": len(history)}
    print("COLOCATED_MEMORY " + json.dumps(result))
    return 0 if history and offloaded else 1


def parse_memory(log_text: str) -> dict | None:
    found = re.findall(r"^COLOCATED_MEMORY (\{.*\})$", log_text, flags=re.M)
    return json.loads(found[-1]) if found else None


# ---- log-probs ---------------------------------------------------------------------------------------
def check_logprobs(metrics: Path, steps: int, bound: float = MISMATCH_BOUND) -> tuple[str, str, dict]:
    """(status, detail, data) of the served-vs-trainer log-prob check over a run's metrics.jsonl."""
    if not metrics.is_file():
        return "fail", f"{metrics} missing: the run wrote no metrics", {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    means = [r.get("mismatch/logp_abs_mean") for r in rows]
    maxes = [r.get("mismatch/logp_abs_max") for r in rows]
    data = {"mean_per_step": means, "max_per_step": maxes, "bound": bound}
    if len(rows) < steps:
        return "fail", f"{len(rows)} of {steps} steps logged", data
    if any(m is None for m in means):
        return "fail", "a step logged no mismatch/logp_abs_mean (no behaviour log-probs from the server)", data
    worst = max(means)
    detail = f"mean |trainer - served| per step {', '.join(f'{m:.2e}' for m in means)} (bound {bound}); max token {max(maxes):.2e}"
    return ("pass" if worst <= bound else "fail"), detail, data


# ---- running steps ------------------------------------------------------------------------------------
class Steps:
    """Runs commands under time limits, logging to gpu_check.log; collects the rows."""

    def __init__(self, out: Path, env: dict[str, str]):
        self.out, self.env, self.rows = out, env, []
        self.deadline = time.monotonic() + TOTAL_LIMIT_S
        self.log = out / "gpu_check.log"
        self.log.write_text("")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        mark = {"pass": "ok  ", "fail": "FAIL", "skipped": "skip"}[row.status]
        print(f"{mark} {row.step:<24} {row.seconds:6.1f}s  {row.detail}", flush=True)
        return row

    def run(self, name: str, limit: float, cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
        """(exit code, this step's output, seconds); 124 on timeout (the whole process group is killed),
        also when less than `limit` is left of TOTAL_LIMIT_S (then it runs for what is left)."""
        start = time.monotonic()
        limit = min(limit, self.deadline - start)
        if limit < 1:
            return 124, f"no time left of the check's {TOTAL_LIMIT_S} s", 0.0
        with open(self.log, "a") as log:
            log.write(f"=== {name} (limit {limit:.0f}s): {' '.join(cmd)}\n")
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env or self.env, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                rc = 124
        text = self.log.read_bytes()[offset:].decode(errors="replace")  # a byte offset: progress bars are not ASCII
        with open(self.log, "a") as log:
            log.write(f"=== {name}: rc={rc}\n")
        return rc, text, time.monotonic() - start

    def step(self, name: str, limit: float, cmd: list[str], ok_detail: str = "", env: dict[str, str] | None = None) -> Row:
        rc, text, secs = self.run(name, limit, cmd, env)
        if rc == 0:
            return self.add(Row(name, "pass", secs, ok_detail))
        return self.add(Row(name, "fail", secs, failure(rc, limit, text)))


def failure(rc: int, limit: float, text: str) -> str:
    """Why a step failed: the timeout or exit code and the output's last line."""
    why = f"timed out after {limit:.0f} s" if rc == 124 else f"exit {rc}"
    tail = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
    return f"{why}: {tail[0][:200]} (gpu_check.log)"


def python_env(site: Path | None) -> dict[str, str]:
    """The steps' environment: the carried site folder and the repository first on PYTHONPATH; compiled
    Triton (TRITON_INTERPRET set empty: tests/conftest.py defaults an unset one to the interpreter) and
    the GPU (MEGARL_DEVICE=cpu would give the CPU path)."""
    paths = [str(site)] if site else []
    paths += [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {k: v for k, v in os.environ.items() if k != "MEGARL_DEVICE"}
    return dict(env, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", WANDB_MODE="disabled", TRITON_INTERPRET="")


def install(steps: Steps, wheels: Path, lock: Path) -> Path | None:
    """pip-install the carried wheels into a private folder that goes first on PYTHONPATH."""
    problems = check_wheels(wheels, lock)
    if any(p.startswith("no wheels") or "two wheels" in p for p in problems):
        steps.add(Row("install", "fail", 0.0, "; ".join(problems)))
        return None
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))]
    row = steps.step("install", STEP_LIMITS["install"], cmd, f"{len(list(wheels.glob('*.whl')))} wheels into {site}"
                     + (f"; {'; '.join(problems)}" if problems else ""))
    if row.status != "pass":
        return None
    sys.path.insert(0, str(site))
    steps.env = python_env(site)
    return site


def environment_row(steps: Steps, lock: Path, start: float) -> tuple[Row, list]:
    """The installed-vs-lock table and the imports a run needs, in this process (stdlib + importlib)."""
    from megarl.doctor import check_imports

    table = version_table(lock)
    missing = sum(1 for r in table if r[2] is None)
    failed = [f.detail for f in check_imports(RUN_IMPORTS, "fail") if f.level == "fail"]
    detail = (f"{lock.name}: {missing} of {len(read_lock(lock))} packages missing, {len(table) - missing} at other versions"
              + (f"; {'; '.join(failed)}" if failed else "; run imports ok"))
    return Row("environment", "fail" if failed else "pass", time.monotonic() - start, detail), table


def print_table(table: list, limit: int = 40) -> None:
    if not table:
        return
    print(f"{'package':<32} {'locked':<16} installed")
    for name, locked, have in table[:limit]:
        print(f"{name:<32} {locked:<16} {have or 'MISSING'}")
    if len(table) > limit:
        print(f"... {len(table) - limit} more in gpu_check.md")


def gpu_facts(env: dict[str, str]) -> dict:
    code = "import json; from megarl.runtime.device import accelerator_facts as f; print(json.dumps(f()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=STEP_LIMITS["environment"])
    except subprocess.TimeoutExpired:
        return {"error": f"importing torch took over {STEP_LIMITS['environment']} s"}
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["torch failed to import"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


ONE_GPU = ("one GPU: NCCL refuses two ranks of one communicator on one device (trainer rank 0 and the server's "
           "rank in the update group), so the distributed transport needs a second GPU for the server; "
           "the GRPO run below takes the tensor transport")


def apart_argv(engine: str, model_dir: Path, work: Path, url: str) -> list[str]:
    """The distributed-transport GRPO run's `megarl train` arguments, its server given at `url`."""
    return [*recipes(engine, model_dir, work, "distributed")["grpo"], f'rollout.servers=["{url}"]']


def grpo_apart(steps: Steps, engine: str, model_dir: Path, work: Path, extra: list[str] = ()) -> Row:
    """The GRPO run over the distributed transport, laid out as a split Slurm job: one server on GPU 1,
    started by megarl's node launcher (megarl.launch.node_servers) from a launch plan, the trainer on
    GPU 0 with rollout.servers pointing at it; both within the grpo step's limit."""
    from megarl.rollout.admin_token import TOKEN_ENV, new_token
    from megarl.rollout.fleet import wait_for_servers
    from megarl.runtime.ports import free_port

    name, start, port = f"grpo_{engine}", time.monotonic(), free_port()
    plan = {"engine": engine, "model": str(model_dir), "dtype": "bf16", "server_tp": 1, "servers_per_node": 1,
            "base_port": port, "colocate": False, "seed": 1}
    (work / "launch.json").write_text(json.dumps({"servers": plan}))
    token, url = new_token(), f"http://127.0.0.1:{port}"
    server_env = dict(steps.env, CUDA_VISIBLE_DEVICES="1", **{TOKEN_ENV: token})
    log = open(steps.out / "gpu_check_servers.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "megarl.launch.node_servers", "--plan", str(work / "launch.json"),
                               "--node-index", "0", "--log-dir", str(work / "server_logs")], cwd=REPO, env=server_env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for_servers([url], STEP_LIMITS["grpo"] / 2, watch_pid=server.pid, log=lambda m: None):
            return steps.add(Row(name, "fail", time.monotonic() - start,
                                 f"the {engine} server on GPU 1 did not answer /health (gpu_check_servers.log)"))
        up = time.monotonic() - start
        train_env = dict(steps.env, CUDA_VISIBLE_DEVICES="0", **{TOKEN_ENV: token})
        argv = [*apart_argv(engine, model_dir, work, url), *extra]
        row = steps.step(name, STEP_LIMITS["grpo"] - (time.monotonic() - start), [sys.executable, "-m", "megarl.cli", "train", *argv],
                         f"{GRPO_STEPS} steps, bf16, THD packing, distributed transport (NCCL update group) to the server "
                         f"on GPU 1 (up in {up:.0f} s)", env=train_env)
        return row
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # node_servers stops its servers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def kernel_tests(steps: Steps) -> Row:
    """The compiled-kernel tests; a test skipped on a GPU machine (interpreter, no GPU seen) fails the row."""
    limit = STEP_LIMITS["kernel_tests"]
    rc, text, secs = steps.run("kernel_tests", limit, [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", KERNEL_TESTS])
    passed, skipped = (re.findall(rf"(\d+) {word}", text) for word in ("passed", "skipped"))
    if rc == 0 and passed and not skipped:
        return steps.add(Row("kernel_tests", "pass", secs, f"{passed[-1]} compiled Triton kernel tests match the torch references"))
    if rc == 0:
        return steps.add(Row("kernel_tests", "fail", secs, f"{skipped[-1] if skipped else 'all'} tests skipped on a GPU machine "
                             "(TRITON_INTERPRET=1 or no GPU seen; gpu_check.log)"))
    return steps.add(Row("kernel_tests", "fail", secs, failure(rc, limit, text)))


def moe_parity(steps: Steps, work: Path) -> Row:
    """Qwen3-MoE logits in bf16 on the GPU (the experts as Transformer Engine's grouped GEMM where TE imports)
    against transformers' fp32 model: within 2x of what bf16 costs transformers itself, as tests/train/test_parity.py
    asks on CPU. One GPU: EP=1 (expert parallelism over NCCL needs two)."""
    limit, out = STEP_LIMITS["moe_parity"], work / "moe_parity.json"
    model_dir = work / "check_moe"
    rc, text, secs = steps.run("moe_parity", limit, ["bash", "-c", (
        f"{sys.executable} {__file__} make-model --moe {model_dir} && {sys.executable} -m torch.distributed.run "
        f"--nproc-per-node 1 -m megarl.train.parity --hf-dir {model_dir} --dtype bf16 --out {out}")])
    if rc != 0 or not out.is_file():
        return steps.add(Row("moe_parity", "fail", secs, failure(rc, limit, text)))
    row = json.loads(out.read_text())[0]
    ours, theirs = row["max_abs_logit_diff_vs_fp32"], row["hf_max_abs_logit_diff_vs_fp32"]
    status = "pass" if ours < 2 * theirs else "fail"
    return steps.add(Row("moe_parity", status, secs, f"Qwen3-MoE bf16 logits vs transformers fp32: {ours:.2e} "
                         f"(transformers' own bf16: {theirs:.2e}; bound 2x)", row))


def run_gpu(args, steps: Steps) -> dict:
    py = sys.executable
    lock = gpu_lock(f"{sys.version_info.major}.{sys.version_info.minor}")
    info: dict = {"lock": lock.name}
    if args.wheels and install(steps, Path(args.wheels), lock) is None:
        return info
    start = time.monotonic()
    env_row, table = environment_row(steps, lock, start)
    info["versions"] = [list(r) for r in table]
    facts = gpu_facts(steps.env)
    info["accelerator"] = facts
    if not facts.get("gpus"):
        env_row.status = "fail"
        seen = facts.get("error") or f"torch {facts.get('torch')} (CUDA build {facts.get('cuda_build') or 'none'}) sees no GPU"
        env_row.detail = f"{seen}; {env_row.detail}"
    steps.add(env_row)
    print_table(table)
    if env_row.status == "fail":
        return info
    kernel_tests(steps)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model_dir = work / "check_model"
    model = steps.step("check_model", STEP_LIMITS["check_model"], [py, __file__, "make-model", str(model_dir)],
                       f"Qwen2, Qwen2.5-0.5B layer shapes, {CHECK_MODEL['num_layers']} layers, bf16, random weights")
    rc, text, secs = steps.run("sglang", STEP_LIMITS["sglang"], [py, "-c", (
        "import sglang, sglang.srt.entrypoints.http_server; print('SGLANG', sglang.__version__)")])
    version = re.findall(r"^SGLANG (\S+)$", text, flags=re.M)
    engine = "sglang" if rc == 0 and version == [SGLANG_VERSION] else "builtin"
    if engine == "sglang":
        steps.add(Row("sglang", "pass", secs, f"sglang {SGLANG_VERSION} imports: the runs use rollout.engine=sglang"))
    else:
        why = f"version {version[0]}, not {SGLANG_VERSION}" if version else failure(rc, STEP_LIMITS["sglang"], text)
        steps.add(Row("sglang", "skipped", secs, f"sglang {SGLANG_VERSION} not importable ({why}): the runs use the built-in server"))
    rc, text, secs = steps.run("te_layers", STEP_LIMITS["te_layers"], [py, "-c", (
        "from megarl.models.build import layer_impl; print('LAYERS', layer_impl())")])
    impl = re.findall(r"^LAYERS (\S+)$", text, flags=re.M)
    if impl == ["te"]:
        steps.add(Row("te_layers", "pass", secs, "megarl builds Transformer Engine layers"))
    else:
        steps.add(Row("te_layers", "skipped", secs, f"layers: {impl[0]} (transformer-engine does not import; Megatron's local layers run)")
                  if impl else Row("te_layers", "fail", secs, failure(rc, STEP_LIMITS["te_layers"], text)))
    moe_parity(steps, work)
    if model.status != "pass":
        return info
    recipe = recipes(engine, model_dir, work, "tensor")
    other = "builtin" if engine == "sglang" else "sglang"
    if facts["gpus"] >= 2:
        row = grpo_apart(steps, engine, model_dir, work)
    else:
        steps.add(Row(f"distributed_{engine}", "skipped", 0.0, ONE_GPU))
        row = steps.step(f"grpo_{engine}", STEP_LIMITS["grpo"], [py, "-m", "megarl.cli", "train", *recipe["grpo"]],
                         f"{GRPO_STEPS} steps, bf16, THD packing, tensor transport (CUDA IPC) to a server on the same GPU")
    metrics = work / f"grpo_{engine}" / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy(metrics, steps.out / f"grpo_{engine}_metrics.jsonl")
    if row.status == "pass":
        status, detail, data = check_logprobs(metrics, GRPO_STEPS)
        steps.add(Row(f"logprobs_{engine}", status, 0.0, detail, data))
    else:
        steps.add(Row(f"logprobs_{engine}", "fail", 0.0, f"grpo_{engine} failed: no metrics to compare"))
    rc, text, secs = steps.run(f"colocated_{engine}", STEP_LIMITS["colocated"], [py, __file__, "colocated-step", *recipe["colocated"]])
    memory = parse_memory(text)
    if rc == 0 and memory:
        steps.add(Row(f"colocated_{engine}", "pass", secs, (
            f"trainer's device memory before {memory['before_gib']} GiB, after {memory['after_gib']} GiB, "
            f"peak {memory['peak_gib']} GiB; "
            f"offloaded {memory['offloaded_gib']:.3f} GiB while generating"), memory))
    else:
        steps.add(Row(f"colocated_{engine}", "fail", secs, failure(rc, STEP_LIMITS["colocated"], text)))
    steps.step("optimizer_offload", STEP_LIMITS["optimizer_offload"],
               [py, "-m", "megarl.cli", "train", *recipes("builtin", model_dir, work)["optimizer_offload"]],
               "one step, distributed optimizer with its state in host memory (built-in server)")
    if engine == "builtin":
        for name in (f"distributed_{other}", f"grpo_{other}", f"logprobs_{other}", f"colocated_{other}"):
            steps.add(Row(name, "skipped", 0.0, f"sglang {SGLANG_VERSION} not importable; the built-in server ran these steps"))
    return info


# ---- the dry run --------------------------------------------------------------------------------------
def dry_check(steps: Steps, name: str, fn) -> Row:
    """Run `fn() -> (status, detail)` in this process as a row; an exception fails it."""
    start = time.monotonic()
    try:
        status, detail = fn()
    except BaseException as err:  # SystemExit from a config error included: it is the row's finding
        status, detail = "fail", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return steps.add(Row(name, status, time.monotonic() - start, detail))


def run_dry(args, steps: Steps) -> dict:
    import importlib
    import importlib.util

    os.environ["MEGARL_DEVICE"] = "cpu"
    info: dict = {}
    work = Path(tempfile.mkdtemp(prefix="gpu_check_dry_"))

    def files():
        need = [RECIPE, KERNEL_TESTS, "tools/gpu_check.sh", "megarl/locks/gpu-py311.txt", "megarl/locks/gpu-py312.txt"]
        missing = [f for f in need if not (REPO / f).is_file()]
        return ("fail", f"missing: {', '.join(missing)}") if missing else ("pass", f"{len(need)} files")

    def arguments():
        parser = build_parser()
        for argv in (["--out", "o"], ["--wheels", "w", "--out", "o"], ["--fetch-wheels", "w", "--python-version", "3.11",
                     "--only", "megatron-core,pydantic", "--budget-mb", "40", "--have", "f"]):
            parser.parse_args(argv)
        return "pass", "GPU, --wheels and --fetch-wheels argument sets parse"

    def locks():
        got = {v: gpu_lock(v).name for v in ("3.11", "3.12")}
        want = {"3.11": "gpu-py311.txt", "3.12": "gpu-py312.txt"}
        try:
            gpu_lock("3.9")
            refused = False
        except SystemExit:
            refused = True
        ok = got == want and refused
        return ("pass" if ok else "fail"), f"3.11 -> {got['3.11']}, 3.12 -> {got['3.12']}, 3.9 refused: {refused}"

    def plan(version):
        def check():
            p = wheel_plan(gpu_lock(version))
            names = [n for n, _ in p.want]
            info[f"wheels_py{version}"] = [f"{n}=={v}" for n, v in p.want]
            needed = {"megatron-core", "pydantic", "math-verify", "sglang"}
            ok = needed <= set(names) and not any(IMAGE_STACK.match(n) for n in names) and "torch" in p.image
            return ("pass" if ok else "fail"), (f"{len(names)} wheels to carry (first: {', '.join(names[:5])}); "
                                                f"{len(p.image)} of the image's CUDA stack left out")
        return check

    def environment():
        lock = gpu_lock(f"{sys.version_info.major}.{sys.version_info.minor}")
        table = version_table(lock)
        info["versions"] = [list(r) for r in table]
        return "pass", f"{lock.name} against this environment: {len(table)} packages missing or at other versions"

    def imports():
        names = ["megarl.train.trainer", "megarl.rollout.server", "megarl.rollout.weight_sync", "megarl.rollout.update_group",
                 "megarl.rollout.fleet", "megarl.models.build", "megarl.kernels.logprob", "megarl.kernels.advantages",
                 "megatron.core", "pydantic", "math_verify", "triton", "sglang"]
        for name in names:
            importlib.import_module(name)
        spec = importlib.util.spec_from_file_location("test_gpu_compiled", REPO / KERNEL_TESTS)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        version = importlib.import_module("sglang").__version__
        if version != SGLANG_VERSION:
            return "fail", f"sglang {version}, the check expects {SGLANG_VERSION}"
        return "pass", f"{len(names)} modules and {KERNEL_TESTS} (sglang {version}; its server needs GPU packages)"

    def te():
        from megarl.models.build import layer_impl

        return "skipped", f"layers here: {layer_impl()} (transformer-engine imports on GPU machines only)"

    def model():
        made = make_check_model(work / "check_model")
        return "pass", f"{made['parameters'] / 1e6:.1f}M parameters, vocab {made['vocab']}"

    def moe_model():
        from megarl.models.spec import ModelSpec

        made = make_check_model(work / "check_moe", CHECK_MOE)
        spec = ModelSpec.from_hf(made["dir"])
        return ("pass" if spec.is_moe else "fail"), f"{made['parameters'] / 1e6:.1f}M parameters, moe: {spec.is_moe}"

    def recipe_check(engine, name, transport):
        def check():
            import megarl.demo  # noqa: F401  registers builtin: models and the toy sets, as the megarl command does
            from megarl import config
            from megarl.commands.config import main as config_main

            if name == "grpo_apart":
                argv = apart_argv(engine, work / "check_model", work, "http://127.0.0.1:30000")
            else:
                argv = recipes(engine, work / "check_model", work, transport)[name]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                rc = config_main(argv)
            if rc:
                return "fail", err.getvalue().strip()
            cfg = config.load_config(argv[0], argv[1:])
            want = {"model.dtype": "bf16", "rollout.engine": engine, "rollout.transport": transport,
                    "rollout.colocate": name == "colocated", "actor.optimizer_offload": name == "optimizer_offload",
                    "rollout.servers": ["http://127.0.0.1:30000"] if name == "grpo_apart" else []}
            got = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in want}
            wrong = [f"{k}={got[k]} (want {v})" for k, v in want.items() if got[k] != v]
            return ("fail", "; ".join(wrong)) if wrong else ("pass", f"megarl config: rollout.transport={transport}, "
                                                                       f"colocate={got['rollout.colocate']}")
        return check

    for name, fn in [("files", files), ("arguments", arguments), ("locks", locks), ("wheels_py3.11", plan("3.11")),
                     ("wheels_py3.12", plan("3.12")), ("environment", environment), ("imports", imports),
                     ("te_layers", te), ("check_model", model), ("check_moe_model", moe_model)]:
        dry_check(steps, name, fn)
    for engine in ENGINES:  # the recipes of one GPU (tensor) and of two (distributed, server on GPU 1)
        for name, transport in (("grpo", "tensor"), ("grpo_apart", "distributed"), ("colocated", "tensor")):
            dry_check(steps, f"recipe_{name}_{engine}", recipe_check(engine, name, transport))
    dry_check(steps, "recipe_optimizer_offload", recipe_check("builtin", "optimizer_offload", "tensor"))
    if args.wheels:
        problems = check_wheels(Path(args.wheels), gpu_lock("3.12"))
        steps.add(Row("wheels_folder", "fail" if problems else "pass", 0.0, "; ".join(problems) or f"{args.wheels} fits gpu-py312.txt"))
    shutil.rmtree(work, ignore_errors=True)
    return info


# ---- results ----------------------------------------------------------------------------------------
def write_results(out: Path, mode: str, rows: list[Row], info: dict) -> bool:
    ok = not any(r.status == "fail" for r in rows)
    host = {"mode": mode, "host": platform.node(), "python": platform.python_version()}
    if info.get("accelerator"):
        host["gpu"] = info["accelerator"].get("gpu_name")
        host["torch"] = info["accelerator"].get("torch")
    result = {"info": {**host, **{k: v for k, v in info.items() if k != "versions"}}, "ok": ok,
              "mismatch_bound": MISMATCH_BOUND, "steps": [asdict(r) for r in rows], "versions": info.get("versions", [])}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skipped")}
    lines = [f"# gpu_check ({mode})", "", " | ".join(f"{k}: {v}" for k, v in host.items()), "",
             *markdown_table(["step", "status", "seconds", "detail"], [[r.step, r.status, f"{r.seconds:.1f}", r.detail] for r in rows]),
             "", f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped "
             f"(log-prob bound: mean |trainer - served| <= {MISMATCH_BOUND} per token)"]
    if info.get("versions"):
        lines += ["", f"Locked packages not installed at the locked version ({info.get('lock', 'GPU lock')}):", "",
                  *markdown_table(["package", "locked", "installed"], [[n, v, h or "missing"] for n, v, h in info["versions"]])]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped; {out / 'gpu_check.md'}")
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                     epilog="example: tools/gpu_check.sh --dry-run --out /tmp/gc",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"), help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="check every step on this (CPU) machine without a GPU")
    parser.add_argument("--wheels", help="install these carried wheels first (a folder made by --fetch-wheels)")
    parser.add_argument("--fetch-wheels", metavar="DIR", help="download the GPU lock's wheels into DIR and stop")
    parser.add_argument("--python-version", default="3.12", help="--fetch-wheels: the GPU machine's Python (3.11 or 3.12)")
    parser.add_argument("--only", help="--fetch-wheels: these packages alone, comma-separated (their locked versions)")
    parser.add_argument("--budget-mb", type=float, default=48.0,
                        help="--fetch-wheels: stop adding wheels past this many MiB (the device carries 64 MiB with the repo)")
    parser.add_argument("--have", type=Path, help="--fetch-wheels: the GPU image's `pip list --format=freeze`; those are skipped")
    parser.add_argument("--plan", action="store_true", help="--fetch-wheels: print the plan, download nothing")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["make-model"]:  # make-model [--moe] DIR
        moe = argv[1:2] == ["--moe"]
        print(json.dumps(make_check_model(Path(argv[-1]), CHECK_MOE if moe else CHECK_MODEL)))
        return 0
    if argv[:1] == ["colocated-step"]:
        return colocated_step(argv[1:])
    args = build_parser().parse_args(argv)
    if args.fetch_wheels:
        plan = wheel_plan(gpu_lock(args.python_version), read_have(args.have), args.only.split(",") if args.only else None)
        print(f"{len(plan.want)} wheels for Python {args.python_version}, most needed first; left out: the image's "
              f"CUDA stack ({', '.join(plan.image) or 'none'}) and {len(plan.have)} packages --have lists")
        if args.plan:
            print("\n".join(f"{n}=={v}" for n, v in plan.want))
            return 0
        report = fetch_wheels(plan, Path(args.fetch_wheels), args.python_version, args.budget_mb, [sys.executable, "-m", "pip"])
        print(json.dumps(report, indent=1))
        if plan.want and not report["fetched"]:
            print("gpu_check: pip downloaded no wheel (no network or no index?); see the no_wheel list", file=sys.stderr)
            return 1
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out.resolve(), python_env(None))
    info = run_dry(args, steps) if args.dry_run else run_gpu(args, steps)
    return 0 if write_results(out, "dry-run" if args.dry_run else "gpu", steps.rows, info) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
