"""Benchmark checkpoint conversion against coreutils `cp` of the same files, in the same run, cold cache.

Builds a random Qwen2.5-shaped HF checkpoint (bf16 safetensors in 2 GB shards with an index;
random tensors are written directly, no transformers model is built; --layers keeps the shapes
with fewer layers where the disk is small), then, for each repeat, runs every phase in its own
process with the page cache dropped before it:

  cp              coreutils `cp -r` of the HF directory (the baseline of the same repeat)
  stream hf->meg  megarl.checkpoint.hf_to_torch_dist (HF -> Megatron torch_dist, streamed)
  stream meg->hf  megarl.checkpoint.torch_dist_to_hf (the torch_dist checkpoint just written -> HF)

Per phase: seconds of the conversion call (the process's wall time, torch import included, is
reported too, as are the imports of torch and megatron-core before the call), GB/s (bytes written
per second), its ratio to the same repeat's `cp`, peak RSS
(ru_maxrss of the phase's process, including the ~0.7 GiB of importing torch) and minor page
faults of the conversion (for `cp` of the whole process). The median over repeats is reported.

Cold cache: `sync` then `echo 3 > /proc/sys/vm/drop_caches` (root); where that is not permitted,
`sync` then posix_fadvise(POSIX_FADV_DONTNEED) on every file under --workdir (the JSON and the
table title say which). No phase calls fsync; the sync before the next phase is not timed.

Goals: streaming peak RSS <= 1.5 GiB + 2 x the largest tensor; streaming speed >= --goal-vs-cp
(0.8) of `cp`. At the end the round trip HF -> torch_dist -> HF is compared byte for byte with
the input files. Files go under --workdir and are deleted at the end (unless --keep); the 7B
shape needs about 3 x 15.2 GB free there.

Example:
    python tools/bench_convert.py --shape qwen2.5-7b --repeats 3 --json bench_convert.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

QWEN25_15B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "torch_dtype": "bfloat16",
}
QWEN25_7B_CONFIG = dict(
    QWEN25_15B_CONFIG, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
    tie_word_embeddings=False,
)
SHAPES = {"qwen2.5-1.5b": QWEN25_15B_CONFIG, "qwen2.5-7b": QWEN25_7B_CONFIG}
HF_SHARD_BYTES = 2 * 10**9
GIB = 2**30


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---- building the random checkpoint ------------------------------------------------------------
def build_random_checkpoint(out: Path, config: dict, max_shard_bytes: int = HF_SHARD_BYTES) -> dict:
    """Random bf16 tensors of `config`'s shapes, written tensor by tensor (no model is built)."""
    import torch

    from megarl.checkpoint.convert import plan_hf_files
    from megarl.checkpoint.safetensors_stream import SafetensorsWriter
    from megarl.models.mapping import hf_tensor_shapes
    from megarl.models.spec import ModelSpec

    spec = ModelSpec.from_hf(config)
    files = plan_hf_files(spec, 1, torch.bfloat16, max_shard_bytes)
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, entries in enumerate(files):
        name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        with SafetensorsWriter(out / name, [(n, torch.bfloat16, s) for n, s in entries]) as writer:
            for tensor_name, shape in entries:
                tensor = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
                total += writer.write(tensor_name, tensor)
                weight_map[tensor_name] = name
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 131072}))
    largest = max(torch.Size(s).numel() * 2 for s in hf_tensor_shapes(spec).values())
    return {"bytes": total, "files": len(files), "largest_tensor_bytes": largest, "layers": spec.num_layers}


# ---- phases (each runs in a fresh subprocess) --------------------------------------------------
def phase_stream_hf_to_meg(src: Path, out: Path, tp: int, **_) -> int:
    from megarl.checkpoint import hf_to_torch_dist

    return hf_to_torch_dist(src, out, vocab_tp=tp).bytes_written


def phase_stream_meg_to_hf(src: Path, out: Path, **_) -> int:
    from megarl.checkpoint import torch_dist_to_hf

    return torch_dist_to_hf(src, out, max_shard_bytes=HF_SHARD_BYTES).bytes_written


PHASES = {"stream_hf_to_meg": phase_stream_hf_to_meg, "stream_meg_to_hf": phase_stream_meg_to_hf}


def run_phase_here(args: argparse.Namespace) -> int:
    if args.phase == "build":  # in its own process, so that the phases do not inherit its memory
        config = dict(SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {}))
        print(json.dumps(build_random_checkpoint(args.dst, config)))
        return 0
    import megatron.core  # noqa: F401  (import cost, 5-40 s on a busy 2-core host, counted in the process time only)
    import torch  # noqa: F401

    import megarl.checkpoint  # noqa: F401
    import megarl.models.build  # noqa: F401

    baseline = _peak_rss_bytes()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    written = PHASES[args.phase](src=args.src, out=args.dst, tp=args.tp)
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"phase": args.phase, "seconds": seconds, "bytes_written": written, "peak_rss": _peak_rss_bytes(),
                      "baseline_rss": baseline, "minor_faults": faults}))
    return 0


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(cmd: list[str], pythonpath: Path | None = None) -> tuple[float, resource.struct_rusage, str]:
    """Run `cmd` (with megarl imported from `pythonpath` if given); its wall seconds, its own rusage (os.wait4) and its stdout."""
    import tempfile

    env = dict(os.environ, PYTHONWARNINGS="ignore", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return seconds, usage, out.read()


def drop_page_cache(work: Path) -> str:
    """Write back and evict the page cache: all of it where permitted, else every file under `work`."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for path in work.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "fadvise"


def run_phase(phase: str, src: Path, dst: Path, tp: int, pythonpath: Path | None = None) -> dict:
    load = os.getloadavg()[0]
    if phase == "cp":
        seconds, usage, _ = _timed(["cp", "-r", str(src), str(dst)])
        return {"phase": "cp", "seconds": seconds, "process_seconds": seconds, "bytes_written": _tree_bytes(dst),
                "peak_rss": usage.ru_maxrss * 1024, "baseline_rss": 0, "minor_faults": usage.ru_minflt, "load_1min": load}
    cmd = [sys.executable, __file__, "--phase", phase, "--src", str(src), "--dst", str(dst), "--tp", str(tp)]
    seconds, _, out = _timed(cmd, pythonpath)
    row = json.loads(out.strip().splitlines()[-1])
    return dict(row, process_seconds=seconds, load_1min=load)


def _same_files(a_dir: Path, b_dir: Path) -> bool:
    """Every safetensors file of `a_dir` is byte-identical in `b_dir`, and the indexes agree."""
    names = sorted(p.name for p in a_dir.glob("*.safetensors"))
    index = "model.safetensors.index.json"
    same_index = json.loads((a_dir / index).read_text()) == json.loads((b_dir / index).read_text())
    return same_index and all(filecmp.cmp(a_dir / n, b_dir / n, shallow=False) for n in names)


def _median_row(rows: list[dict]) -> dict:
    keys = ("seconds", "process_seconds", "gb_per_s", "vs_cp", "vs_cp_process", "peak_rss", "minor_faults", "load_1min")
    return dict(rows[0], **{k: statistics.median(r[k] for r in rows) for k in keys}, repeats=len(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megarl_bench_convert"), help="scratch directory (3 x the model size free)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-7b", help="random checkpoint shape (7B: 15.2 GB, 1.5B: 3.1 GB)")
    parser.add_argument("--tp", type=int, default=1, help="pad the vocab as at this TP size (torch_dist loads at any TP/PP)")
    parser.add_argument("--layers", type=int, default=None, help="the shape's layers but only this many (a smaller disk)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every phase; medians are reported")
    parser.add_argument("--goal-vs-cp", type=float, default=0.8, help="streaming phases must reach this fraction of cp's GB/s")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the files under --workdir")
    parser.add_argument("--before", type=Path, default=None,
                        help="also run the streaming phases with megarl imported from this directory (e.g. `git archive REV megarl | tar -x -C DIR`)")
    parser.add_argument("--phase", choices=sorted(PHASES) + ["build"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.phase:
        return run_phase_here(args)
    if args.dry_run:
        print(f"bench_convert (dry run): random {args.shape} checkpoint ({args.layers or 'all'} layers) in {args.workdir}, vocab "
              f"padded at TP={args.tp}, {args.repeats} repeat(s) of cp and the streaming conversions; "
              f"results to {args.json or 'the console'}")
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rows: list[dict] = []
    try:
        console.print(f"building a random {args.shape}-shaped bf16 checkpoint in {work / 'hf'} ...")
        t0 = time.perf_counter()
        _, _, out = _timed([sys.executable, __file__, "--phase", "build", "--dst", str(work / "hf"), "--shape", args.shape,
                             *(["--layers", str(args.layers)] if args.layers else [])])
        info = json.loads(out.strip().splitlines()[-1])
        console.print(f"  {info['bytes'] / 1e9:.2f} GB in {info['files']} files, {time.perf_counter() - t0:.1f} s")
        model_bytes = info["bytes"]
        rss_goal = 1.5 * GIB + 2 * info["largest_tensor_bytes"]
        # (label, phase, source dir, output dir, megarl from); outputs are deleted once no later phase reads them.
        versions = [("", None)] + ([(" (before)", args.before.resolve())] if args.before else [])
        plan = [("cp", "cp", "hf", "cp", None)]
        for tag, path in versions:
            meg, hf2 = f"meg{tag.strip(' ()')}", f"hf2{tag.strip(' ()')}"
            plan += [(f"stream_hf_to_meg{tag}", "stream_hf_to_meg", "hf", meg, path), (f"stream_meg_to_hf{tag}", "stream_meg_to_hf", meg, hf2, path)]
        round_trip_equal: dict[str, bool] = {}
        for repeat in range(args.repeats):
            last = repeat == args.repeats - 1
            for label, phase, src, dst, path in plan:
                cache = drop_page_cache(work)
                console.print(f"repeat {repeat + 1}/{args.repeats} phase {label} (load {os.getloadavg()[0]:.2f}, cache: {cache}) ...")
                row = run_phase(phase, work / src, work / dst, args.tp, path)
                rows.append(dict(row, phase=label, repeat=repeat, cache_drop=cache))
                if phase == "stream_meg_to_hf":  # the round trip is complete: check it (last repeat), then free the disk
                    if last:
                        round_trip_equal[label] = _same_files(work / "hf", work / dst)
                    shutil.rmtree(work / src)
                    shutil.rmtree(work / dst)
                elif phase != "stream_hf_to_meg":
                    shutil.rmtree(work / dst)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    for row in rows:
        cp = next(r for r in rows if r["phase"] == "cp" and r["repeat"] == row["repeat"])
        row["gb_per_s"] = row["bytes_written"] / row["seconds"] / 1e9
        row["vs_cp"] = row["gb_per_s"] / (cp["bytes_written"] / cp["seconds"] / 1e9)
        row["vs_cp_process"] = (row["bytes_written"] / row["process_seconds"]) / (cp["bytes_written"] / cp["process_seconds"])
    medians = [_median_row([r for r in rows if r["phase"] == label]) for label, *_ in plan]
    cache = rows[0]["cache_drop"]
    table = Table(title=f"checkpoint conversion, {args.shape}-shaped random bf16 ({model_bytes / 1e9:.2f} GB), {info['layers']} layers, vocab padded at tp={args.tp}, "
                  f"cold cache ({cache}), median of {args.repeats}")
    cols = ("phase", "seconds", "GB written", "GB/s", "x cp", "x cp (process)", "peak RSS GiB", "RSS goal GiB", "minor faults", "load", "goals met")
    for col in cols:
        table.add_column(col, justify="left" if col == "phase" else "right")
    for row in medians:
        streaming = row["phase"].startswith("stream") and "before" not in row["phase"]  # the goals are this version's
        if streaming:
            row["goals_met"] = row["peak_rss"] <= rss_goal and row["vs_cp"] >= args.goal_vs_cp
        table.add_row(
            row["phase"], f"{row['seconds']:.2f}", f"{row['bytes_written'] / 1e9:.2f}", f"{row['gb_per_s']:.2f}", f"{row['vs_cp']:.2f}",
            f"{row['vs_cp_process']:.2f}", f"{row['peak_rss'] / GIB:.2f}", f"{rss_goal / GIB:.2f}" if streaming else "",
            f"{row['minor_faults']:,}", f"{row['load_1min']:.1f}", ("yes" if row["goals_met"] else "NO") if streaming else "",
        )
    console.print(table)
    console.print("per repeat, x cp: " + "; ".join(
        f"{label} " + ", ".join(f"{r['vs_cp']:.2f}" for r in rows if r["phase"] == label) for label, *_ in plan[1:]))
    for label, same in round_trip_equal.items():
        console.print(f"round trip HF -> torch_dist -> HF{label.replace('stream_meg_to_hf', '')} byte-identical to the input files: {'yes' if same else 'NO'}")
    result = {
        "model": f"{args.shape}-shaped random bf16", "model_bytes": model_bytes, "largest_tensor_bytes": info["largest_tensor_bytes"],
        "layers": info["layers"], "vocab_tp": args.tp, "repeats": args.repeats, "cache_drop": cache, "rss_goal_bytes": rss_goal,
        "goal_vs_cp": args.goal_vs_cp, "medians": medians, "runs": rows, "round_trip_byte_identical": round_trip_equal,
        "before": str(args.before) if args.before else None, "load_1min_range": [min(r["load_1min"] for r in rows), max(r["load_1min"] for r in rows)],
        "machine": f"{os.cpu_count()} CPU cores, {sys.platform}, {os.uname().release}",
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(round_trip_equal.values()) and all(r.get("goals_met", True) for r in medians) else 1


if __name__ == "__main__":
    sys.exit(main())
