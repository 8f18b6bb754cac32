"""Shared command-line plumbing for the checkpoint tools in tools/: error reporting and result tables."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from typing import Callable

from rich.console import Console
from rich.table import Table

from megarl.checkpoint.convert import ConversionReport
from megarl.monitoring.console import quiet_third_party

# Errors that describe bad input: printed as one line (no traceback), exit status 1.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileExistsError, FileNotFoundError)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes."""
    units = {"gib": 2**30, "mib": 2**20, "kib": 2**10, "gb": 10**9, "mb": 10**6, "kb": 10**3, "b": 1}
    low = text.strip().lower()
    for unit, factor in units.items():
        if low.endswith(unit):
            return int(float(low[: -len(unit)]) * factor)
    return int(low)


def print_report(report: ConversionReport, verify=None) -> None:
    table = Table(title=f"{report.kind}: {report.source} -> {report.output}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("layout", f"tp={report.tp} pp={report.pp}")
    table.add_row("dtype", report.dtype)
    table.add_row("tensors read / written", f"{report.tensors_read} / {report.tensors_written}")
    table.add_row("GB read / written", f"{report.bytes_read / 1e9:.3f} / {report.bytes_written / 1e9:.3f}")
    table.add_row("files written", str(report.files_written))
    table.add_row("seconds", f"{report.seconds:.2f}")
    table.add_row("GB/s (written)", f"{report.gb_per_s:.2f}")
    for note in report.notes:
        table.add_row("note", note)
    if verify is not None:
        table.add_row("verify: max |logit diff|", f"{verify.max_abs_logit_diff:.3e} ({verify.tokens} tokens, fp32)")
        table.add_row("verify: reference", verify.reference)
    Console().print(table)


def add_common_flags(parser: argparse.ArgumentParser, verify_help: str) -> None:
    """--dtype, --verify, --verify-tol and --no-progress, shared by the conversion tools."""
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="storage dtype (default: the source's)")
    parser.add_argument("--verify", action="store_true", help=verify_help)
    parser.add_argument("--verify-tol", type=float, default=1e-3, help="fail (exit 2) when the verify logit diff exceeds this")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def finish(report: ConversionReport, verify, tolerance: float) -> int:
    """Print the report (and verify result); exit status 2 when the logit check fails."""
    print_report(report, verify)
    if verify is not None and not verify.max_abs_logit_diff <= tolerance:
        print(f"verify failed: max |logit diff| {verify.max_abs_logit_diff:.3e} > {tolerance}", file=sys.stderr)
        return 2
    return 0


def run_tool(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    quiet_third_party()  # no Hugging Face "Loading weights" bar in --verify, unless MEGARL_VERBOSE=1
    try:
        return body(args)
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = getattr(args, "out", None) or err.filename or "the output"
        print(f"{parser.prog}: error: {os.strerror(err.errno).lower()} while writing {where}; the partial output was "
              "removed: free space (or quota) there, or choose another --out", file=sys.stderr)
        return 1
