"""`megarl sandbox run FILE`: run one Python file in a tool sandbox the way rollouts do; print the result JSON."""

from __future__ import annotations

import argparse
import sys

from megarl.sandbox.pool import SandboxLimits, SandboxUnavailable, run_sandboxed

DEFAULTS = SandboxLimits()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarl sandbox",
        description="Run untrusted Python in a bubblewrap sandbox (no network, private /tmp, rlimits). "
                    "Prints one JSON object: status (ok/error/timeout/killed), stdout, stderr, seconds, "
                    "exit_code, stdout_truncated, stderr_truncated, peak_memory_mb, detail. "
                    "Exit status 0 when the program's status is ok, 1 otherwise, 2 when no sandbox can run.",
        epilog="example: megarl sandbox run solve.py --timeout 5 --memory-mb 512")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one Python file and print its result as JSON",
                              description="Run one Python file in a fresh sandbox; print the result as one JSON object.",
                              epilog="example: megarl sandbox run solve.py --timeout 5 --memory-mb 512")
    run.add_argument("file", help="the Python file to run (its text is copied into the sandbox's /tmp/main.py)")
    run.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, metavar="S",
                     help=f"wall-clock seconds before every process of it is killed (default {DEFAULTS.timeout_s})")
    run.add_argument("--memory-mb", type=int, default=DEFAULTS.memory_mb, metavar="M",
                     help=f"address-space limit per process in MiB (default {DEFAULTS.memory_mb})")
    run.add_argument("--max-processes", type=int, default=DEFAULTS.max_processes, metavar="N",
                     help=f"processes and threads at once (default {DEFAULTS.max_processes})")
    run.add_argument("--output-bytes", type=int, default=DEFAULTS.output_bytes, metavar="B",
                     help=f"stdout and stderr are each cut to this many bytes (default {DEFAULTS.output_bytes})")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = open(args.file, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as err:
        print(f"megarl sandbox: cannot read {args.file}: {err}; pass a UTF-8 Python file", file=sys.stderr)
        return 2
    try:
        limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb,
                               max_processes=args.max_processes, output_bytes=args.output_bytes)
        result = run_sandboxed(code, limits)
    except (SandboxUnavailable, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    print(result.to_json())
    return 0 if result.status == "ok" else 1
