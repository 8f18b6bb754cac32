"""Benchmark weight sync: push a model's weights into a built-in rollout server by each transport.

Two sections, both against one `megarl serve` process (CPU, bf16 by default) holding a random
Qwen2.5-0.5B-shaped model saved once under /tmp (config and weights; no download):

- transport: every weight of that model, already in Hugging Face layout in this process, pushed
  by each transport (tensor, distributed, disk) and bucket size; this times the transport alone.
- megatron: a random Megatron actor built from the same config.json at TP=2 (a `torchrun` job of
  2 processes over gloo), synced end to end: `gather_hf_tensors` (TP all-gather, fused qkv and
  gate/up split, vocab padding dropped) on rank 0, streamed into `WeightPusher.push`.

Each row reports seconds (best of --repeats; the pusher is kept between repeats as the trainer
keeps it, so the best is the steady state), GB/s, the peak growth of resident memory (RSS,
sampled every 5 ms) of the sender(s) and the server, and a plain copy of the same bytes into
preallocated, already-touched memory measured in the same run (best of --repeats; in the transport
section interleaved with the pushes, so load from other work on the machine hits both alike; in
the megatron section on rank 0 right after gathering the actor once, before its pushes).

Example:
    python tools/bench_sync.py --shape qwen2.5-0.5b --bucket-mb 64 256 1024 --json runs/bench_sync.json
    python tools/bench_sync.py --shape tiny --sections transport megatron --repeats 1   # a smoke test
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
from pathlib import Path

import psutil
import torch

from megarl.rollout.transports import TRANSPORTS

SHAPES = {
    # Qwen2.5-0.5B: 494M parameters, tied embeddings, GQA 14/2, qkv bias.
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
TOKEN = "bench-sync-token"


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


def cached_model_dir(shape: str, dtype: str, root: str) -> str:
    """A random HF model of `shape` saved once under `root` (written to a temporary name, then renamed)."""
    path = os.path.join(root, f"{shape}-{dtype}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.makedirs(root, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".partial-{shape}-", dir=root)
    config = Qwen2Config(max_position_embeddings=2048, **SHAPES[shape])
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(partial)
    os.replace(partial, path)
    return path


def resident_state_dict(model_dir: str, dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    """HF tensors in memory (cloned out of the safetensors mmap); tied weights once, as checkpoints hold them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    seen, unique = set(), []
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique.append((name, tensor.clone()))
    del model
    return unique


def plain_copy_seconds(named, targets: list[torch.Tensor]) -> float:
    """Seconds to copy every tensor once into `targets` (preallocated and touched)."""
    start = time.perf_counter()
    for target, (_, tensor) in zip(targets, named):
        target.copy_(tensor)
    return time.perf_counter() - start


def touched_like(named) -> list[torch.Tensor]:
    targets = [torch.empty_like(t) for _, t in named]
    for target in targets:  # touch the pages so the timing is the copy, not page faults
        target.zero_()
    return targets


def start_server(model_dir: str, dtype: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "megarl.rollout.serve_cli", "--model", model_dir, "--port", "0", "--token", TOKEN,
           "--dtype", dtype]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on http://" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.rsplit("listening on ", 1)[1].strip()
    raise RuntimeError("the rollout server did not start:\n" + "".join(lines[-20:]))


def result_row(section: str, transport: str, bucket_mb: int | None, seconds: float, copy_seconds: float,
               total_bytes: int, buckets: int | None, senders_gb: list[float], server_gb: float) -> dict:
    return dict(section=section, transport=transport, bucket_mb=bucket_mb, buckets=buckets, seconds=seconds,
                gb_per_s=total_bytes / 1e9 / seconds, plain_copy_seconds=copy_seconds,
                x_plain_copy=seconds / copy_seconds, sender_peak_gb=senders_gb, server_peak_gb=server_gb)


# ---- section 1: the transport alone ---------------------------------------------------------
def bench_transports(args, url: str, server_pid: int, model_dir: str, progress) -> list[dict]:
    from megarl.rollout.weight_sync import WeightPusher

    named = resident_state_dict(model_dir, getattr(torch, args.dtype))
    total_bytes = sum(t.numel() * t.element_size() for _, t in named)
    targets = touched_like(named)
    rows = []
    task = progress.add_task("transport section", total=len(args.transports) * len(args.bucket_mb) * args.repeats)
    for transport in args.transports:
        for bucket_mb in args.bucket_mb:
            best, best_copy = None, float("inf")
            with WeightPusher([url], transport=transport, bucket_bytes=bucket_mb << 20, token=TOKEN,
                              disk_dir=os.path.join(args.work_dir, "disk")) as pusher:
                for repeat in range(args.repeats):
                    best_copy = min(best_copy, plain_copy_seconds(named, targets))
                    with PeakRSS(os.getpid()) as sender, PeakRSS(server_pid) as receiver:
                        report = pusher.push(named, weight_version=f"{transport}-{bucket_mb}-{repeat}")
                    if best is None or report.seconds < best[0]:
                        best = (report.seconds, report.num_buckets, sender.growth_gb, receiver.growth_gb)
                    progress.advance(task)
            rows.append(result_row("transport", transport, bucket_mb, best[0], best_copy, total_bytes, best[1],
                                   [best[2]], best[3]))
    return rows


# ---- section 2: a Megatron actor at TP=2, end to end ----------------------------------------
def bench_megatron(args, url: str, server_pid: int, model_dir: str, console) -> list[dict]:
    out = os.path.join(args.work_dir, "megatron_rows.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.tp), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), os.path.abspath(__file__), "--actor-worker",
           "--model-dir", model_dir, "--url", url, "--server-pid", str(server_pid), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--out", out, "--work-dir", args.work_dir,
           "--transports", *args.transports, "--bucket-mb", *map(str, args.bucket_mb)]
    console.print(f"megatron section: torchrun of {args.tp} processes (TP={args.tp})")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    log = Path(args.work_dir) / "megatron_job.log"
    # A log file, not a pipe: torch's shared-memory manager daemon (file_system sharing) inherits the
    # job's stdout and can outlive it while the server still maps a bucket, so a pipe never reaches EOF.
    with log.open("w") as sink:
        returncode = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        raise RuntimeError(f"the Megatron sync job failed (rc={returncode}); see {log}:\n{log.read_text()[-4000:]}")
    return json.loads(Path(out).read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def actor_worker(args) -> int:
    """Runs under torchrun: build a random Megatron actor, then sync it by every transport and bucket size."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    from megarl.models.build import build_model
    from megarl.models.export import gather_hf_tensors
    from megarl.models.spec import ModelSpec
    from megarl.rollout.weight_sync import WeightPusher
    from megarl.runtime import collectives
    from megarl.runtime.distributed import init_runtime, shutdown_runtime

    rt = init_runtime(tp=args.tp_worker, pp=1, seed=1234)
    rank0 = dist.get_rank() == 0
    spec = ModelSpec.from_hf(args.model_dir)
    model = build_model(spec, dtype=getattr(torch, args.dtype), initialize=True)

    def gathered():
        return gather_hf_tensors(model, dst=0, spec=spec)

    # The plain copy of the same bytes, in this process: gather once, copy into touched memory.
    named = [(n, t.clone()) for n, t in gathered()]
    total_bytes = sum(t.numel() * t.element_size() for _, t in named)
    targets = touched_like(named) if rank0 else []

    def plain_copy() -> float:
        return plain_copy_seconds(named, targets) if rank0 else 0.0

    # The gather alone (drained on rank 0), to split the sync into gather and transport.
    gather_best, copy_best = float("inf"), float("inf")
    for _ in range(args.repeats):
        copy_best = min(copy_best, plain_copy())
        collectives.barrier()
        start = time.perf_counter()
        for _ in gathered():
            pass
        gather_best = min(gather_best, time.perf_counter() - start)
    named, targets = [], []  # give the 2 GB back: rank 0 keeps only the model and the push's buckets from here on
    rows = []
    if rank0:
        rows.append(result_row("megatron", "gather only", None, gather_best, copy_best, total_bytes, None, [], 0.0))
        print(f"gather only: {gather_best:.3f} s, plain copy {copy_best:.3f} s", flush=True)
    for transport in args.transports:
        for bucket_mb in args.bucket_mb:
            pusher = WeightPusher([args.url], transport=transport, bucket_bytes=bucket_mb << 20, token=TOKEN,
                                  disk_dir=os.path.join(args.work_dir, "disk")) if rank0 else None
            best = None
            for repeat in range(args.repeats):
                collectives.barrier()
                with PeakRSS(os.getpid()) as me, PeakRSS(args.server_pid) as server:
                    start = time.perf_counter()
                    tensors = gathered()
                    if rank0:
                        report = pusher.push(tensors, weight_version=f"megatron-{transport}-{bucket_mb}-{repeat}")
                        buckets = report.num_buckets
                    else:
                        for _ in tensors:
                            pass
                        buckets = None
                    seconds = time.perf_counter() - start
                mine = (seconds, buckets, me.growth_gb, server.growth_gb)
                everyone = collectives.all_gather_objects(mine)
                total = (everyone[0][0], everyone[0][1], [e[2] for e in everyone], everyone[0][3])
                if best is None or total[0] < best[0]:
                    best = total
                collectives.barrier()
            if rank0:
                pusher.close()
                print(f"{transport} {bucket_mb} MB: {best[0]:.3f} s", flush=True)
                rows.append(result_row("megatron", transport, bucket_mb, best[0], copy_best, total_bytes, best[1],
                                       best[2], best[3]))
    if rank0:
        tmp = args.out + ".tmp"
        Path(tmp).write_text(json.dumps(rows))
        os.replace(tmp, args.out)
    shutdown_runtime()
    return 0


def print_table(console, rows: list[dict], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("section", "transport", "bucket MB", "buckets", "seconds", "GB/s", "plain copy s", "x plain copy",
                   "sender peak +GB", "server peak +GB"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["section"], r["transport"], str(r["bucket_mb"] or "-"), str(r["buckets"] or "-"),
                      f"{r['seconds']:.3f}", f"{r['gb_per_s']:.2f}", f"{r['plain_copy_seconds']:.3f}",
                      f"{r['x_plain_copy']:.1f}", " / ".join(f"{g:.2f}" for g in r["sender_peak_gb"]) or "-",
                      f"{r['server_peak_gb']:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--sections", nargs="+", default=["transport", "megatron"], choices=["transport", "megatron"])
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    parser.add_argument("--bucket-mb", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="pushes per setting; the best is reported")
    parser.add_argument("--tp", type=int, default=2, help="TP size of the Megatron actor (torchrun processes)")
    parser.add_argument("--model-root", default=os.path.join(tempfile.gettempdir(), "megarl_bench_sync"),
                        help="where the random HF model is saved once and reused")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    # internal: the torchrun worker of the megatron section
    parser.add_argument("--actor-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"bench_sync (dry run): random {args.shape} model ({args.dtype}) under {args.model_root}, sections "
              f"{' '.join(args.sections)}, transports {' '.join(args.transports)}, buckets {args.bucket_mb} MB, "
              f"{args.repeats} repeat(s), actor TP={args.tp}; results to {args.json or 'the console'}")
        return 0
    if args.actor_worker:
        args.tp_worker = int(os.environ.get("WORLD_SIZE", "1"))
        return actor_worker(args)

    from rich.console import Console
    from rich.progress import Progress

    console = Console(width=None if sys.stdout.isatty() else 150)
    args.work_dir = tempfile.mkdtemp(prefix="bench_sync_")
    model_dir = cached_model_dir(args.shape, args.dtype, args.model_root)
    console.print(f"random {args.shape} model ({args.dtype}): {model_dir}")
    server, url = start_server(model_dir, args.dtype)
    rows: list[dict] = []
    try:
        if "transport" in args.sections:
            with Progress(console=console) as progress:
                rows += bench_transports(args, url, server.pid, model_dir, progress)
            import gc

            gc.collect()  # give the section's 2 GB back before the Megatron job starts
        if "megatron" in args.sections:
            rows += bench_megatron(args, url, server.pid, model_dir, console)
    finally:
        server.terminate()
        server.wait(30)
    total_gb = rows[0]["gb_per_s"] * rows[0]["seconds"] if rows else 0.0
    print_table(console, rows, f"weight sync to one built-in server: {args.shape} {args.dtype}, {total_gb:.2f} GB, "
                               f"best of {args.repeats}, {os.cpu_count()} CPU cores")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"shape": args.shape, "dtype": args.dtype, "repeats": args.repeats, "tp": args.tp,
                       "cpu_count": os.cpu_count(), "results": rows}, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
