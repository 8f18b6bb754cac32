"""Benchmark weight-sync transports: push a model-shaped state dict to a built-in rollout server.

For each transport (tensor, distributed, disk) and bucket size, pushes every weight of a random
Qwen2.5-0.5B-shaped model (bf16 by default, about 1 GB) into a running `megarl serve` process and
reports seconds, GB/s and peak memory (sender RSS growth, server RSS growth), next to a plain
in-process copy of the same bytes measured in the same run.

Example:
    python tools/bench_sync.py --shape qwen2.5-0.5b --bucket-mb 64 256 --json runs/bench_sync.json
    python tools/bench_sync.py --shape tiny --transports tensor disk     # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import torch

SHAPES = {
    # Qwen2.5-0.5B: 494M parameters, tied embeddings, GQA 14/2, qkv bias.
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


class PeakRSS:
    """Samples a process's resident memory in a thread; `peak - start` is the growth during the block."""

    def __init__(self, pid: int, interval_s: float = 0.005):
        self.process, self.interval = psutil.Process(pid), interval_s

    def __enter__(self):
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_gb(self) -> float:
        return (self.peak - self.start) / 1e9


def build_model_dir(shape: str, dtype: torch.dtype, path: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(max_position_embeddings=2048, **SHAPES[shape])
    model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(path)


def start_server(model_dir: str, dtype: str, token: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "megarl.rollout.serve_cli", "--model", model_dir, "--port", "0", "--token", token,
           "--dtype", dtype]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if "listening on http://" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.rsplit("listening on ", 1)[1].strip()
    raise RuntimeError("the rollout server did not start")


def plain_copy(named: list[tuple[str, torch.Tensor]]) -> tuple[float, float]:
    """(seconds, sender RSS growth GB) of copying every tensor once into preallocated memory."""
    targets = [torch.empty_like(t) for _, t in named]
    for target in targets:  # touch the pages so the timing is the copy, not page faults
        target.zero_()
    with PeakRSS(os.getpid()) as rss:
        start = time.perf_counter()
        for target, (_, tensor) in zip(targets, named):
            target.copy_(tensor)
        seconds = time.perf_counter() - start
    return seconds, rss.growth_gb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--transports", nargs="+", default=["tensor", "distributed", "disk"],
                        choices=["tensor", "distributed", "disk"])
    parser.add_argument("--bucket-mb", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=2, help="pushes per setting; the best is reported")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from megarl.rollout.weight_sync import WeightPusher

    console = Console()
    dtype = getattr(torch, args.dtype)
    token = "bench-sync-token"
    workdir = tempfile.mkdtemp(prefix="bench_sync_")
    model_dir = os.path.join(workdir, "model")
    console.print(f"building a random {args.shape} model ({args.dtype}) in {model_dir}")
    build_model_dir(args.shape, dtype, model_dir)
    from transformers import AutoModelForCausalLM

    named = list(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).state_dict().items())
    seen, unique = set(), []
    for name, tensor in named:  # tied embeddings: send the shared tensor once, as checkpoints do
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique.append((name, tensor))
    total_bytes = sum(t.numel() * t.element_size() for _, t in unique)
    console.print(f"{len(unique)} tensors, {total_bytes / 1e9:.3f} GB")
    copy_s, copy_mem = min(plain_copy(unique) for _ in range(args.repeats))
    server, url = start_server(model_dir, args.dtype, token)
    rows = [dict(transport="plain copy", bucket_mb=None, seconds=copy_s, gb_per_s=total_bytes / 1e9 / copy_s,
                 sender_peak_gb=copy_mem, server_peak_gb=0.0, x_plain_copy=1.0, buckets=None)]
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("pushing", total=len(args.transports) * len(args.bucket_mb) * args.repeats)
            for transport in args.transports:
                for bucket_mb in args.bucket_mb:
                    best = None
                    with WeightPusher([url], transport=transport, bucket_bytes=bucket_mb << 20, token=token,
                                      disk_dir=os.path.join(workdir, "disk")) as pusher:
                        for repeat in range(args.repeats):
                            with PeakRSS(os.getpid()) as sender, PeakRSS(server.pid) as receiver:
                                report = pusher.push(unique, weight_version=f"{transport}-{bucket_mb}-{repeat}")
                            result = dict(transport=transport, bucket_mb=bucket_mb, seconds=report.seconds,
                                          gb_per_s=report.gigabytes_per_second, sender_peak_gb=sender.growth_gb,
                                          server_peak_gb=receiver.growth_gb, x_plain_copy=report.seconds / copy_s,
                                          buckets=report.num_buckets)
                            if best is None or result["seconds"] < best["seconds"]:
                                best = result
                            progress.advance(task)
                    rows.append(best)
    finally:
        server.terminate()
        server.wait(30)

    table = Table(title=f"weight sync to one built-in server: {args.shape} {args.dtype}, {total_bytes / 1e9:.2f} GB, "
                        f"best of {args.repeats}")
    for column in ("transport", "bucket MB", "buckets", "seconds", "GB/s", "x plain copy", "sender peak +GB",
                   "server peak +GB"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["transport"], str(r["bucket_mb"] or "-"), str(r["buckets"] or "-"), f"{r['seconds']:.3f}",
                      f"{r['gb_per_s']:.2f}", f"{r['x_plain_copy']:.1f}", f"{r['sender_peak_gb']:.2f}",
                      f"{r['server_peak_gb']:.2f}")
    console.print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"shape": args.shape, "dtype": args.dtype, "total_bytes": total_bytes, "cpu_count": os.cpu_count(),
                       "results": rows}, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
