"""Benchmark megarl's fused log-prob/entropy kernels against the naive torch paths: time, peak memory, GB/s.

Every case (kernel x path x vocab x tokens) runs in a fresh subprocess, so peak memory is that
case's alone: on GPUs the allocator's peak above the inputs, on CPU the peak resident set size
(ru_maxrss) above the RSS once the inputs exist (torch's CPU allocator keeps no statistics).
A case whose estimated peak exceeds --max-gb is not run; its row shows the estimate (a linear
fit over the same path's measured token counts when there are any) and "does not fit" when the
estimate plus inputs exceeds the machine's memory.

Kernels and paths
  logprob: logits [N, V] -> (log p(label), entropy), forward + backward.
    naive          float32 log_softmax + gather + p * log p (what trainers do without a kernel)
    fused          megarl.kernels.logprobs_and_entropy (Triton on GPUs, chunked torch on CPU)
    fused-inplace  the same with inplace_backward=True (d logits overwrites the logits buffer)
    liger          Liger-Kernel's cross entropy (log p only), when installed and on a GPU
  linear: hidden [N, H] and output weight [V, H] -> the same outputs.
    naive          logits = hidden @ W^T, then the naive logprob path
    fused          megarl.kernels.linear_logprobs_and_entropy (vocab chunks, never the full logits)
    liger          Liger-Kernel's fused linear cross entropy (log p only), when installed and on a GPU

Examples
  python tools/bench_kernels.py                       # defaults for this machine (CPU or GPU)
  python tools/bench_kernels.py --kernels logprob --vocabs 151936 --tokens 1024,4096 --json out.json
  python tools/bench_kernels.py --tokens 4096,16384,65536 --peak-gbps 3350   # GPU, H100 SXM peak
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
QWEN_VOCAB, LLAMA_VOCAB = 151936, 128256
# HBM peak bandwidth (GB/s) by device-name fragment, for the achieved-bandwidth column.
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
             "A100-SXM4-80GB": 2039.0, "A100": 1555.0, "L40S": 864.0}
# Rough bytes per [N, V] element for the skip decision, before anything is measured
# (naive: a float32 copy, log_softmax, exp, product, and their float32 gradients).
ROUGH_BYTES_PER_ELEM = {("logprob", "naive"): 20.0, ("linear", "naive"): 22.0, ("logprob", "fused"): 2.2,
                        ("logprob", "fused-inplace"): 0.1, ("linear", "fused"): 0.1,
                        ("logprob", "liger"): 2.2, ("linear", "liger"): 0.1}


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str  # logprob | linear
    path: str  # naive | fused | fused-inplace | liger
    vocab: int
    tokens: int
    hidden: int
    dtype: str  # bfloat16 | float16 | float32
    reps: int
    vocab_chunk: int

    def input_bytes(self) -> int:
        size = 2 if self.dtype in ("bfloat16", "float16") else 4
        if self.kernel == "logprob":
            return self.tokens * self.vocab * size
        return (self.tokens + self.vocab) * self.hidden * size


# ----------------------------------------------------------------------------- worker (one case)
def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _fill_random(t, scale: float, rows: int = 16) -> None:
    """Fill `t` row block by row block so the float32 randn temporary stays small."""
    import torch

    for r0 in range(0, t.shape[0], rows):
        block = t[r0:r0 + rows]
        block.copy_(torch.randn(block.shape, device=t.device) * scale)


def run_case(case: Case) -> dict:
    import torch

    from megarl.kernels import linear_logprobs_and_entropy, logprobs_and_entropy
    from megarl.kernels.logprob import logprobs_and_entropy_reference
    from megarl.runtime.device import get_device, on_gpu, synchronize

    device = get_device()
    gpu = on_gpu()
    mod = torch.get_device_module(device) if gpu else None
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    labels = torch.randint(0, case.vocab, (case.tokens,), device=device)
    if case.kernel == "logprob":
        logits = torch.empty(case.tokens, case.vocab, dtype=dtype, device=device)
        _fill_random(logits, 2.0)
        inputs = [logits]
    else:
        hidden = torch.empty(case.tokens, case.hidden, dtype=dtype, device=device)
        weight = torch.empty(case.vocab, case.hidden, dtype=dtype, device=device)
        _fill_random(hidden, 1.0)
        _fill_random(weight, 0.02, rows=256)
        inputs = [hidden, weight]

    liger = None
    if case.path == "liger":
        if not gpu:
            raise RuntimeError("Liger-Kernel runs on GPUs only")
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss

        liger = LigerCrossEntropyLoss(reduction="sum") if case.kernel == "logprob" else LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def step(forward_only: bool = False):
        leaves = [t.detach().requires_grad_(not forward_only) for t in inputs]
        with torch.set_grad_enabled(not forward_only):
            if case.path == "liger":
                loss = liger(leaves[0], labels) if case.kernel == "logprob" else liger(leaves[1], leaves[0], labels)
            else:
                if case.kernel == "logprob":
                    if case.path == "naive":
                        logp, ent = logprobs_and_entropy_reference(leaves[0], labels)
                    else:
                        logp, ent = logprobs_and_entropy(leaves[0], labels, inplace_backward=case.path == "fused-inplace")
                elif case.path == "naive":
                    logp, ent = logprobs_and_entropy_reference(leaves[0] @ leaves[1].t(), labels)
                else:
                    logp, ent = linear_logprobs_and_entropy(leaves[0], leaves[1], labels, vocab_chunk=case.vocab_chunk)
                loss = logp.sum() + 1e-3 * ent.sum()
            if forward_only:
                return None
            grads = torch.autograd.grad(loss, leaves)  # no accumulation into .grad: the returned buffers are the cost
        return grads

    gc.collect()
    result: dict = {"device": "cpu"}
    if gpu:
        result["device"] = mod.get_device_name(device)
        step()  # compile / autotune outside the measurement
        synchronize()
        mod.reset_peak_memory_stats()
        base = mod.memory_allocated()
        grads = step()
        synchronize()
        result["peak_extra_bytes"] = mod.max_memory_allocated() - base
        del grads
        times, fwd_times = [], []
        for _ in range(case.reps):
            t0 = time.perf_counter()
            g = step()
            synchronize()
            times.append(time.perf_counter() - t0)
            del g
            t0 = time.perf_counter()
            step(forward_only=True)
            synchronize()
            fwd_times.append(time.perf_counter() - t0)
        result["time_s"] = sorted(times)[len(times) // 2]
        result["fwd_time_s"] = sorted(fwd_times)[len(fwd_times) // 2]
    else:
        base = _current_rss_bytes()
        result["pre_peak_over_base_bytes"] = max(0, _peak_rss_bytes() - base)
        t0 = time.perf_counter()
        grads = step()
        result["time_s"] = time.perf_counter() - t0
        result["peak_extra_bytes"] = _peak_rss_bytes() - base
        result["grad_bytes"] = sum(g.numel() * g.element_size() for g in grads)
        del grads
    return result


# ----------------------------------------------------------------------------- driver
def _worker_main(spec: str) -> int:
    case = Case(**json.loads(spec))
    try:
        out = {"ok": True, **run_case(case)}
    except Exception as exc:  # reported in the table, e.g. "liger not installed"
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run_in_subprocess(case: Case, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(dataclasses.asdict(case))]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # benchmarks measure compiled Triton (GPU) or the torch path (CPU)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"ok": False, "error": f"exit {proc.returncode}: {tail[0][:200]}"}


def _fit_estimate(points: list[tuple[int, float]], tokens: int) -> float | None:
    """Least-squares line bytes = a + b * tokens through measured points (proportional for one point)."""
    if not points:
        return None
    if len(points) == 1:
        n, b = points[0]
        return b * tokens / n
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (tokens - mx)


def default_cases(args, gpu: bool) -> list[Case]:
    vocabs = [int(v) for v in args.vocabs.split(",")]
    kernels = args.kernels.split(",")
    cases = []
    for kernel in kernels:
        for vi, vocab in enumerate(vocabs):
            if args.tokens:
                tokens = [int(t) for t in args.tokens.split(",")]
            elif gpu:
                tokens = [4096, 16384, 65536]
            else:  # CPU: 1k and 4k for every vocab; 2k (naive fit point) and 16k for the first vocab only
                tokens = [1024, 2048, 4096, 16384] if vi == 0 else [1024, 4096]
            paths = ["naive", "fused"] + (["fused-inplace"] if kernel == "logprob" else []) + ["liger"]
            for n in tokens:
                for path in paths:
                    if path == "liger" and not gpu:
                        continue
                    if not gpu and not args.tokens:
                        if n == 2048 and path != "naive":
                            continue
                        if n == 16384 and path == "fused" and kernel == "logprob":
                            continue  # the grad buffer alone would be another 4.9 GB: in-place only
                        if path == "fused-inplace" and vi > 0:
                            continue
                    cases.append(Case(kernel, path, vocab, n, args.hidden or (256 if not gpu else 3584),
                                      args.dtype, args.reps, args.vocab_chunk))
    return cases


def _fmt_bytes(b: float | None) -> str:
    return "-" if b is None else (f"{b / GIB:.2f} GiB" if b >= GIB / 4 else f"{b / (1 << 20):.0f} MiB")


def _peak_gbps(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for frag, gbps in PEAK_GBPS.items():
        if frag in device_name:
            return gbps
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_kernels.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python tools/bench_kernels.py --kernels logprob --vocabs 151936 --tokens 1024,4096 --json bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kernels", default="logprob,linear", help="comma list of logprob, linear (default both)")
    parser.add_argument("--vocabs", default=f"{QWEN_VOCAB},{LLAMA_VOCAB}", help="comma list of vocab sizes (Qwen2.5, Llama 3)")
    parser.add_argument("--tokens", default="", help="comma list of token counts N (default: 1k,4k[,16k] on CPU; 4k,16k,64k on GPU)")
    parser.add_argument("--hidden", type=int, default=0, help="hidden size H for the linear kernel (default 256 on CPU to keep its matmuls short, 3584 on GPU: Qwen2.5-7B)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--vocab-chunk", type=int, default=4096, help="vocab chunk of the fused linear path")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions on GPU (CPU runs each case once)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="do not run a case whose estimated peak + inputs exceeds this (GB)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="device peak memory bandwidth in GB/s (default: by GPU name)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--json", default="bench_kernels.json", help="where to write the results (JSON)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    if args.dry_run:
        from megarl.runtime.device import on_gpu

        cases = default_cases(args, on_gpu())
        print(f"bench_kernels (dry run): {len(cases)} case(s); results to {args.json}")
        for case in cases:
            print(f"  {case.kernel} {case.path}: vocab {case.vocab}, {case.tokens} tokens, hidden {case.hidden}, {case.dtype}")
        return 0

    import platform

    import psutil
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from megarl.runtime.device import get_device, on_gpu

    gpu = on_gpu()
    console = Console()
    total_ram = psutil.virtual_memory().total
    cases = default_cases(args, gpu)
    measured: dict[tuple, list[tuple[int, float]]] = {}
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))
        for case in sorted(cases, key=lambda c: (c.kernel, c.vocab, c.path, c.tokens)):
            progress.update(task, description=f"{case.kernel} {case.path} V={case.vocab} N={case.tokens}")
            key = (case.kernel, case.path, case.vocab, case.hidden)
            rough = ROUGH_BYTES_PER_ELEM[(case.kernel, case.path)] * case.tokens * case.vocab
            fit = _fit_estimate(measured.get(key, []), case.tokens)
            estimate = fit if fit is not None else rough
            row = {**dataclasses.asdict(case), "estimate_bytes": estimate,
                   "estimate_from": "linear fit of measured N" if fit is not None else "rough model"}
            if not gpu and estimate + case.input_bytes() > args.max_gb * 1e9:
                fits = estimate + case.input_bytes() <= total_ram
                row.update(status="does not fit" if not fits else f"not run (> --max-gb {args.max_gb:g})")
            else:
                result = _run_in_subprocess(case, args.timeout)
                if result.pop("ok"):
                    row.update(status="measured", **result)
                    measured.setdefault(key, []).append((case.tokens, result["peak_extra_bytes"]))
                else:
                    row.update(status=result["error"])
            rows.append(row)
            progress.advance(task)

    device_name = next((r["device"] for r in rows if r.get("device")), "cpu")
    peak_bw = _peak_gbps(device_name, args.peak_gbps) if gpu else None
    for row in rows:
        if gpu and row.get("status") == "measured" and row["kernel"] == "logprob":
            elem = torch.tensor([], dtype=getattr(torch, row["dtype"])).element_size()
            nbytes = row["tokens"] * row["vocab"] * elem
            row["fwd_gbps"] = nbytes / row["fwd_time_s"] / 1e9
            row["fwd_bwd_gbps"] = 3 * nbytes / row["time_s"] / 1e9  # read, read again, write d(logits)
            if peak_bw:
                row["fwd_pct_peak"] = 100 * row["fwd_gbps"] / peak_bw
                row["fwd_bwd_pct_peak"] = 100 * row["fwd_bwd_gbps"] / peak_bw

    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        title = {"logprob": "log-prob + entropy from logits [N, V], forward + backward",
                 "linear": "linear log-prob + entropy from hidden [N, H] and weight [V, H], forward + backward"}[kernel]
        table = Table(title=f"{title} ({args.dtype}, {device_name})")
        for col in ["V", "N", "path", "time", "peak extra memory", "vs naive", "status"] + (["fwd GB/s (% peak)", "fwd+bwd GB/s (% peak)"] if gpu else []):
            table.add_column(col)
        for row in (r for r in rows if r["kernel"] == kernel):
            naive = next((r for r in rows if r["kernel"] == kernel and r["path"] == "naive" and r["vocab"] == row["vocab"] and r["tokens"] == row["tokens"]), None)
            mine = row.get("peak_extra_bytes", row["estimate_bytes"])
            theirs = None if naive is None else naive.get("peak_extra_bytes", naive["estimate_bytes"])
            ratio = "-" if (theirs is None or row["path"] == "naive" or row.get("status") != "measured") else f"{mine / theirs:.3f}x"
            mem = _fmt_bytes(row["peak_extra_bytes"]) if "peak_extra_bytes" in row else f"~{_fmt_bytes(row['estimate_bytes'])} (est.)"
            cells = [str(row["vocab"]), str(row["tokens"]), row["path"],
                     f"{row['time_s']:.3f} s" if "time_s" in row else "-", mem, ratio, row["status"]]
            if gpu:
                def pct(key, pkey):
                    return "-" if key not in row else f"{row[key]:.0f}" + (f" ({row[pkey]:.0f}%)" if pkey in row else "")
                cells += [pct("fwd_gbps", "fwd_pct_peak"), pct("fwd_bwd_gbps", "fwd_bwd_pct_peak")]
            table.add_row(*cells)
        console.print(table)

    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "device": device_name if gpu else f"{platform.machine()} CPU, {os.cpu_count()} cores, {total_ram / GIB:.0f} GiB RAM",
            "gpu_rows": "measured" if gpu else "unmeasured (no GPU in this run)", "torch": torch.__version__,
            "device_type": str(get_device()), "peak_gbps": peak_bw}
    out = Path(args.json)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(out)
    console.print(f"wrote {out}" + ("" if gpu else "; GPU rows: unmeasured (no GPU in this run)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
