"""`megarl doctor`: what in this environment would break or change a megarl run, and the fix for each.

It compares Python and every installed package with megarl's tested lock (megarl/locks/, written by
tools/lock.sh), finds modules that another path shadows (a folder named like an installed package
in the working directory or on PYTHONPATH: the `kernels` case), tries the imports a run needs, and
reports the GPU stack (CUDA, NCCL, transformer-engine, flash-attn, apex, SGLang), the Slurm commands
and bubblewrap (the tool sandbox) on PATH, the cache directory and its free disk. It exits 1 when something found would break a run,
naming the fix; a version that differs from the lock is reported, not fatal.

  megarl doctor                   # against the lock for this machine (CPU, or GPU for the Python version)
  megarl doctor --lock gpu        # against the GPU lock
  megarl doctor --json            # the findings as JSON, one object
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import importlib.machinery
import importlib.metadata as metadata
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from megarl.runtime.cache import cache_root

LOCKS = Path(__file__).resolve().parent / "locks"
# The imports a run needs (every run), and those GPU recipes add.
RUN_IMPORTS = ("torch", "megatron.core", "transformers", "safetensors", "pydantic", "yaml", "math_verify", "aiohttp", "megarl.kernels")
GPU_IMPORTS = ("transformer_engine.pytorch", "flash_attn", "apex", "sglang", "sglang_router")
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "sinfo")
MIN_FREE_GIB = 5.0


@dataclass
class Finding:
    """One line of the report: `fail` breaks a run, `warn` may change one, `ok` and `info` are facts."""

    level: str
    check: str
    detail: str
    fix: str = ""


def normalize(name: str) -> str:
    """A distribution name as lock files and PEP 503 compare them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of a `uv pip compile` lock (`name==version  # via ...` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def default_lock(gpu: bool) -> Path:
    """The lock this machine should match: the GPU lock for this Python on a GPU machine, else the CPU lock."""
    if gpu:
        return LOCKS / f"gpu-py3{sys.version_info.minor}.txt"
    return LOCKS / "cpu.txt"


def lock_python(path: Path) -> str | None:
    """The Python minor version a lock was resolved for (`gpu-py312.txt` -> 3.12; the CPU lock is 3.11)."""
    match = re.search(r"py3(\d+)", path.name)
    return f"3.{match.group(1)}" if match else ("3.11" if path.name == "cpu.txt" else None)


def installed_versions() -> dict[str, str]:
    """{normalized name: version}, the first of each name on sys.path (the one that imports; a copy
    vendored further down, like setuptools' own packaging, does not count)."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        if dist.metadata["Name"]:
            versions.setdefault(normalize(dist.metadata["Name"]), dist.version)
    return versions


def same_version(installed: str, locked: str) -> bool:
    """2.13.0+cpu matches a lock's 2.13.0 (the CPU and CUDA builds of one torch release)."""
    return installed == locked or installed.split("+", 1)[0] == locked


def check_python(lock: Path) -> list[Finding]:
    want = lock_python(lock)
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if want and want != have:
        return [Finding("warn", "python", f"Python {have}; {lock.name} was resolved for {want}",
                        f"use Python {want}, or a lock for {have} (megarl/locks/)")]
    return [Finding("ok", "python", f"Python {sys.version.split()[0]} ({lock.name} is for {want})")]


def check_versions(lock: Path) -> list[Finding]:
    """Every locked package that is missing or at another version, each named."""
    pins, have = read_lock(lock), installed_versions()
    required = {normalize(re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0]) for req in (metadata.requires("megarl") or []) if "extra ==" not in req}
    findings = []
    for name, version in sorted(pins.items()):
        if name not in have:
            level = "fail" if name in required else "warn"
            findings.append(Finding(level, "package", f"{name} is not installed (lock: {version})",
                                    f"pip install -r {lock_hint(lock)}"))
        elif not same_version(have[name], version):
            findings.append(Finding("warn", "package", f"{name} {have[name]} differs from the lock's {version}",
                                    f"pip install {name}=={version}  (or: pip install -r {lock_hint(lock)})"))
    if not findings:
        findings.append(Finding("ok", "packages", f"all {len(pins)} packages of {lock.name} at the locked versions"))
    return findings


def lock_hint(lock: Path) -> str:
    try:
        return str(lock.relative_to(Path.cwd()))
    except ValueError:
        return str(lock)


def _is_editable(dist: metadata.Distribution) -> bool:
    """An editable install's modules live in its source tree, not beside its metadata."""
    try:
        return bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def check_shadowing() -> list[Finding]:
    """Top-level imports that resolve somewhere other than the distribution that installed them."""
    owners: dict[str, list[metadata.Distribution]] = {}
    by_name = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in by_name:
            by_name[normalize(name)] = dist
    for module, names in metadata.packages_distributions().items():
        if module.isidentifier() and not module.startswith("_"):
            owners[module] = [by_name[normalize(n)] for n in names if normalize(n) in by_name]
    findings = []
    for module, dists in sorted(owners.items()):
        dists = [d for d in dists if not _is_editable(d)]
        if not dists:
            continue
        try:
            # sys.path itself, as a fresh process would search it: not sys.modules (a module imported
            # earlier keeps the spec it was found with) nor other finders (setuptools' distutils hack).
            spec = importlib.machinery.PathFinder.find_spec(module, sys.path)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        where = spec.origin if spec.origin not in (None, "built-in", "frozen") else None
        if where is None and spec.submodule_search_locations:
            locations = list(spec.submodule_search_locations)
            if len(locations) != 1:
                continue  # a namespace package spread over several folders: nothing single to compare
            where = locations[0]
        if where is None:
            continue
        path = Path(where).resolve()
        roots = [Path(d.locate_file("")).resolve() for d in dists]
        if not any(path.is_relative_to(root) for root in roots):
            owner = ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists)
            findings.append(Finding("fail", "shadowed", f"`import {module}` finds {path}, not {owner} (installed in {roots[0]})",
                                    f"rename or remove {path.parent if path.name == '__init__.py' else path}, "
                                    f"or run from another directory / drop it from PYTHONPATH"))
        elif path.name == "__init__.py" and (owner := _overwritten_by_another(path, dists)):
            findings.append(Finding("fail", "overwritten", f"{path} is not the file {owner} installed (its RECORD hash differs): "
                                    "another package wrote the same import name into site-packages",
                                    f"pip uninstall the other package, then pip install --force-reinstall {owner.split()[0]}"))
    if not findings:
        findings.append(Finding("ok", "shadowing", "every installed top-level module imports from its own distribution"))
    return findings


def _overwritten_by_another(init: Path, dists: list[metadata.Distribution]) -> str | None:
    """The owner, when a package's __init__.py differs from what its distribution's RECORD says (a
    non-editable install of an older megarl wrote its own `kernels/__init__.py` over Hugging Face's)."""
    for dist in dists:
        for entry in dist.files or []:
            if entry.hash is None or Path(dist.locate_file(entry)).resolve() != init:
                continue
            digest = base64.urlsafe_b64encode(hashlib.new(entry.hash.mode, init.read_bytes()).digest()).rstrip(b"=").decode()
            return None if digest == entry.hash.value else f"{dist.metadata['Name']} {dist.version}"
    return None


def check_imports(names: tuple[str, ...], level: str) -> list[Finding]:
    findings = []
    for name in names:
        try:
            with warnings.catch_warnings():  # megatron-core warns that TE and apex are missing, on CPU as it should
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception as error:  # any failure to import is what the user needs to see
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            fix = (f"reinstall from the lock: pip install -r {lock_hint(LOCKS / 'cpu.txt')} -e ." if level == "fail"
                   else f"GPU clusters: pip install -r {lock_hint(default_lock(True))} (README, GPU clusters)")
            findings.append(Finding(level, "import", f"import {name} failed: {type(error).__name__}: {first}", fix))
        else:
            version = getattr(module, "__version__", "")
            findings.append(Finding("ok", "import", f"import {name} {version}".rstrip()))
    return findings


def check_accelerator() -> tuple[bool, list[Finding]]:
    """(GPU machine?, findings): torch's CUDA build, GPUs, NCCL, and the GPU-only imports."""
    try:
        from megarl.runtime.device import accelerator_facts

        facts = accelerator_facts()
    except Exception as error:
        return False, [Finding("fail", "torch", f"torch could not report the device: {type(error).__name__}: {error}",
                               "reinstall torch from the lock")]
    gpu = facts["gpus"] > 0
    line = f"torch {facts['torch']}, CUDA build {facts['cuda_build'] or 'none'}"
    if not gpu:
        return False, [Finding("info", "gpu", f"{line}; no GPU visible: CPU machine (gloo, built-in rollout server)")]
    findings = [Finding("ok", "gpu", f"{line}; {facts['gpus']} x {facts['gpu_name']}; NCCL {facts['nccl'] or 'missing'}")]
    if not facts["nccl"]:
        findings.append(Finding("fail", "nccl", "torch reports no NCCL", "install torch's CUDA build from the GPU lock"))
    return True, findings + check_imports(GPU_IMPORTS, "warn")


def check_slurm() -> list[Finding]:
    found = {cmd: shutil.which(cmd) for cmd in SLURM_COMMANDS}
    missing = [cmd for cmd, path in found.items() if not path]
    if not missing:
        return [Finding("ok", "slurm", "on PATH: " + ", ".join(SLURM_COMMANDS))]
    return [Finding("info", "slurm", f"not on PATH: {', '.join(missing)} (needed only by `megarl submit` and slurm/)")]


def check_sandbox() -> list[Finding]:
    path = shutil.which("bwrap")
    if path:
        return [Finding("ok", "sandbox", f"bubblewrap at {path} (the tool sandbox, `megarl sandbox`)")]
    return [Finding("info", "sandbox", "bubblewrap (bwrap) not on PATH: `megarl sandbox` and tool calls cannot run",
                    "apt-get install bubblewrap (Debian/Ubuntu)")]


def check_cache(root: Path | None = None) -> list[Finding]:
    root = root or cache_root()  # $MEGARL_CACHE_DIR, $XDG_CACHE_HOME/megarl or ~/.cache/megarl
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        return [Finding("fail", "cache", f"cache directory {root} is not writable", "set MEGARL_CACHE_DIR to a writable directory")]
    free_gib = shutil.disk_usage(probe).free / 2**30
    if free_gib < MIN_FREE_GIB:
        return [Finding("warn", "cache", f"cache directory {root}: {free_gib:.1f} GiB free (under {MIN_FREE_GIB:.0f} GiB)",
                        "free disk space or set MEGARL_CACHE_DIR to a larger disk")]
    return [Finding("ok", "cache", f"cache directory {root} ({free_gib:.1f} GiB free)")]


def run_checks(lock: Path | None = None) -> list[Finding]:
    findings = check_shadowing()
    findings += check_imports(RUN_IMPORTS, "fail")
    gpu, accelerator = check_accelerator()
    lock = lock or default_lock(gpu)
    if not lock.is_file():
        findings.append(Finding("fail", "lock", f"no lock file {lock}", "choose one of megarl/locks/ with --lock"))
    else:
        findings = check_python(lock) + check_versions(lock) + findings
    return findings + accelerator + check_slurm() + check_sandbox() + check_cache()


MARKS = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="megarl doctor", description=__doc__.split("\n\n")[0],
        epilog="example: megarl doctor --lock cpu", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", default=None, help="cpu, gpu, or a lock file path (default: this machine's lock)")
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    args = parser.parse_args(argv)
    lock = None
    if args.lock in ("cpu", "gpu"):
        lock = default_lock(args.lock == "gpu")
    elif args.lock:
        lock = Path(args.lock)
    findings = run_checks(lock)
    failed = [f for f in findings if f.level == "fail"]
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}, indent=1))
    else:
        for finding in findings:
            print(f"{MARKS[finding.level]}  {finding.check:<10} {finding.detail}")
            if finding.fix and finding.level != "ok":
                print(f"{'':16}fix: {finding.fix}")
        warned = sum(f.level == "warn" for f in findings)
        print(f"\n{len(failed)} problem(s) that break a run, {warned} warning(s)." if failed or warned else "\nAll checks passed.")
    return 1 if failed else 0
