"""The `megarl` command: a thin dispatcher from subcommands to library entry points.

Each subcommand lives in its own module as `main(argv: list[str]) -> int`, imported only when
that subcommand runs (so `megarl --help` stays fast and does not import torch).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with `main(argv)`, one-line description). A module that does not exist yet
# makes the subcommand report "not yet available" instead of crashing.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("megarl.train.cli", "run RL training from a YAML recipe (megarl train configs/tiny_cpu.yaml actor.tp=2)"),
    "eval": ("megarl.commands.eval", "evaluate a model on math benchmarks through the rollout engine"),
    "serve": ("megarl.rollout.serve_cli", "start megarl's built-in rollout server (SGLang protocol subset)"),
    "submit": ("megarl.launch.submit", "render and submit a Slurm sbatch job for a recipe"),
    "grade": ("megarl.commands.grade", "grade responses in a JSON Lines file against gold answers"),
    "data": ("megarl.data.cli", "data tools: filter prompts by measured pass rate"),
    "plot": ("megarl.monitoring.plot", "plot a run's metrics as PNG curves"),
    "config": ("megarl.commands.config", "load, override and validate a recipe; print the resolved config"),
    "sandbox": ("megarl.sandbox.cli", "run a Python file in the tool sandbox; print the result as JSON"),
    "doctor": ("megarl.doctor", "check this environment against the tested lock: versions, shadowed modules, GPU stack"),
}

# Commands that end without CPython's finalization when run as a program (megarl.runtime.process):
# the built-in server, whose stop every training run waits for.
FAST_EXIT = ("serve",)

USAGE = "usage: megarl <command> [args...]\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {desc}" for name, (_, desc) in SUBCOMMANDS.items()
) + "\n\nRun `megarl <command> --help` for a command's options."


def load_plugins() -> None:
    """Register the plugins' names with megarl's registries before a command runs: the CPU demo's
    `builtin:` models (megarl.model_source) and generated prompt sets. Library code imports no plugin."""
    import megarl.demo  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # the `megarl` program, not a call from Python code that goes on afterwards
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: the usage, as an error (exit 2, like argparse)
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from megarl import __version__

        print(f"megarl {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f" Did you mean `megarl {close[0]}`?" if close else ""
        print(f"megarl: unknown command {name!r}.{hint} Run `megarl --help` for the list.", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    if program:  # Hugging Face bars and library deprecation warnings, unless MEGARL_VERBOSE=1
        from megarl.monitoring.console import quiet_third_party

        quiet_third_party()
    fast_exit = program and name in FAST_EXIT
    if fast_exit:
        from megarl.runtime import process

        process.skip_finalization_at_exit()
    load_plugins()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"megarl {name}: not yet available in this version ({module_name} is not built yet).", file=sys.stderr)
            return 3
        raise
    code = int(module.main(rest) or 0)
    if fast_exit:
        process.finished(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
