"""Benchmark checkpoint conversion: streaming converters vs the naive load-all approach vs a plain copy.

Builds a random Qwen2.5-1.5B-shaped HF checkpoint (bf16 safetensors, about 3.1 GB, two shards
with an index; random tensors are written directly, no transformers model is built), then runs
each phase in its own subprocess and reports seconds, GB/s (bytes written per second) and peak
RSS (the phase process's ru_maxrss, which includes the ~0.3-0.4 GB of importing torch):

  copy            plain read + write of the same safetensors files (64 MiB chunks)
  stream hf->meg  megarl.checkpoint.hf_to_megatron (this repo's streaming converter)
  stream meg->hf  megarl.checkpoint.megatron_to_hf
  naive hf->meg   load the whole state dict, convert every rank's dict, save_file per rank
  naive meg->hf   load every rank file, convert to one HF dict, save_file per HF shard

Goals (issue 3): streaming peak RSS <= 1.5 GiB + 2 x the largest tensor; streaming GB/s >= half of
the copy's. Results go to a rich table and a JSON file. Files are written under --workdir and
deleted at the end (unless --keep). No phase calls fsync: all of them write into the page cache.

Example:
    python tools/bench_convert.py --workdir /tmp/megarl_bench_convert --tp 2 --pp 2 --json bench_convert.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
GIB = 2**30


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---- building the random checkpoint ------------------------------------------------------------
def build_random_checkpoint(out: Path, max_shard_bytes: int = 2 * 10**9) -> dict:
    import torch

    from megarl.checkpoint.convert import plan_hf_files
    from megarl.checkpoint.safetensors_stream import SafetensorsWriter
    from megarl.models.mapping import hf_tensor_shapes
    from megarl.models.spec import ModelSpec

    spec = ModelSpec.from_hf(QWEN25_15B_CONFIG)
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
    (out / "config.json").write_text(json.dumps(QWEN25_15B_CONFIG, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 131072}))
    largest = max(torch.Size(s).numel() * 2 for s in hf_tensor_shapes(spec).values())
    return {"bytes": total, "files": len(files), "largest_tensor_bytes": largest}


# ---- phases (each runs in a fresh subprocess) --------------------------------------------------
def phase_copy(src: Path, out: Path, **_) -> int:
    out.mkdir(parents=True)
    written = 0
    chunk = 64 * 2**20
    for path in sorted(src.iterdir()):
        with open(path, "rb") as fin, open(out / path.name, "wb") as fout:
            while block := fin.read(chunk):
                written += fout.write(block)
    return written


def phase_stream_hf_to_meg(src: Path, out: Path, tp: int, pp: int, **_) -> int:
    from megarl.checkpoint import hf_to_megatron

    return hf_to_megatron(src, out, tp=tp, pp=pp).bytes_written


def phase_stream_meg_to_hf(src: Path, out: Path, **_) -> int:
    from megarl.checkpoint import megatron_to_hf

    return megatron_to_hf(src, out, max_shard_bytes=2 * 10**9).bytes_written


def phase_naive_hf_to_meg(src: Path, out: Path, tp: int, pp: int, **_) -> int:
    """What a load-everything converter does: whole state dict in, every rank's dict, save_file."""
    from safetensors.torch import load_file, save_file

    from megarl.models.mapping import stage_mappings
    from megarl.models.spec import ModelSpec

    spec = ModelSpec.from_hf(src)
    state = {}
    for path in sorted(src.glob("*.safetensors")):
        state.update({k: v.clone() for k, v in load_file(str(path)).items()})  # clone: no lazy mmap
    ranks = {}
    for p in range(pp):
        for r in range(tp):
            ranks[(r, p)] = {
                name: m.to_megatron_shard([state[h] for h in m.hf], r, tp, spec).contiguous()
                for name, m in stage_mappings(spec, p, pp)
            }
    written = 0
    for (r, p), tensors in ranks.items():
        path = out / f"mp_rank_{r:02d}_{p:03d}" / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        written += sum(t.numel() * t.element_size() for t in tensors.values())
    return written


def phase_naive_meg_to_hf(src: Path, out: Path, **_) -> int:
    from safetensors.torch import load_file, save_file

    from megarl.checkpoint.convert import plan_hf_files
    from megarl.checkpoint.format import MegatronCheckpointMeta
    from megarl.models.mapping import OUTPUT_TIED, stage_mappings

    meta = MegatronCheckpointMeta.read(src)
    spec = meta.spec
    shards = {(f.tp_rank, f.pp_rank): {k: v.clone() for k, v in load_file(str(src / f.path)).items()} for f in meta.files}
    hf = {}
    for p in range(meta.pp):
        for name, m in stage_mappings(spec, p, meta.pp):
            if m is not OUTPUT_TIED:
                hf.update(zip(m.hf, m.to_hf([shards[(r, p)][name] for r in range(meta.tp)], spec)))
    del shards
    out.mkdir(parents=True)
    written = 0
    files = plan_hf_files(spec, meta.pp, meta.torch_dtype, 2 * 10**9)
    for i, entries in enumerate(files):
        part = {n: hf[n].contiguous() for n, _ in entries}
        save_file(part, str(out / f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"), metadata={"format": "pt"})
        written += sum(t.numel() * t.element_size() for t in part.values())
    return written


PHASES = {
    "copy": phase_copy,
    "stream_hf_to_meg": phase_stream_hf_to_meg,
    "stream_meg_to_hf": phase_stream_meg_to_hf,
    "naive_hf_to_meg": phase_naive_hf_to_meg,
    "naive_meg_to_hf": phase_naive_meg_to_hf,
}


def run_phase_here(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (import cost counted in the baseline, not in the timing)

    import megarl.checkpoint  # noqa: F401

    baseline = _peak_rss_bytes()
    start = time.perf_counter()
    written = PHASES[args.phase](src=args.src, out=args.dst, tp=args.tp, pp=args.pp)
    seconds = time.perf_counter() - start
    print(json.dumps({"phase": args.phase, "seconds": seconds, "bytes_written": written, "peak_rss": _peak_rss_bytes(), "baseline_rss": baseline}))
    return 0


def run_phase(phase: str, src: Path, dst: Path, tp: int, pp: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--src", str(src), "--dst", str(dst), "--tp", str(tp), "--pp", str(pp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_tensors(a_dir: Path, b_dir: Path, names: list[tuple[str, str]]) -> bool:
    """Spot check that two outputs agree on a few tensors (file, tensor name)."""
    import torch

    from megarl.checkpoint.safetensors_stream import SafetensorsReader

    return all(torch.equal(SafetensorsReader(a_dir / f).get(n), SafetensorsReader(b_dir / f).get(n)) for f, n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megarl_bench_convert"), help="scratch directory (needs ~16 GB free)")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--naive-max-gb", type=float, default=10.0, help="skip the naive phases if they would need more RAM (GB)")
    parser.add_argument("--keep", action="store_true", help="keep the files under --workdir")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return run_phase_here(args)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        console.print(f"building a random Qwen2.5-1.5B-shaped bf16 checkpoint in {work / 'hf'} ...")
        t0 = time.perf_counter()
        info = build_random_checkpoint(work / "hf")
        console.print(f"  {info['bytes'] / 1e9:.2f} GB in {info['files']} files, {time.perf_counter() - t0:.1f} s")
        model_bytes = info["bytes"]
        rss_goal = 1.5 * GIB + 2 * info["largest_tensor_bytes"]
        naive_ok = 2 * model_bytes + GIB <= args.naive_max_gb * 1e9

        rows = []
        plan = [
            ("copy", work / "hf", work / "copy"),
            ("stream_hf_to_meg", work / "hf", work / "meg"),
            ("stream_meg_to_hf", work / "meg", work / "hf2"),
        ]
        if naive_ok:
            plan += [("naive_hf_to_meg", work / "hf", work / "naive_meg"), ("naive_meg_to_hf", work / "meg", work / "naive_hf2")]
        for phase, src, dst in plan:
            console.print(f"phase {phase} ...")
            row = run_phase(phase, src, dst, args.tp, args.pp)
            rows.append(row)
            if phase == "copy":
                shutil.rmtree(dst)
        checks = {
            "naive and streaming hf->meg agree (spot check)": not naive_ok
            or _same_tensors(work / "meg", work / "naive_meg", [
                (f"mp_rank_{args.tp - 1:02d}_000/model.safetensors", "embedding.word_embeddings.weight"),
                (f"mp_rank_{args.tp - 1:02d}_{args.pp - 1:03d}/model.safetensors", "decoder.layers.0.self_attention.linear_qkv.weight"),
                (f"mp_rank_00_{args.pp - 1:03d}/model.safetensors", "decoder.layers.0.mlp.linear_fc1.weight"),
            ]),
            "round trip hf->meg->hf equal (spot check)": _same_tensors(work / "hf", work / "hf2", [
                ("model-00001-of-00002.safetensors", "model.embed_tokens.weight"),
                ("model-00002-of-00002.safetensors", "model.layers.27.mlp.down_proj.weight"),
            ]),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    copy_gbps = rows[0]["bytes_written"] / rows[0]["seconds"] / 1e9
    table = Table(title=f"checkpoint conversion, Qwen2.5-1.5B-shaped bf16 ({model_bytes / 1e9:.2f} GB), tp={args.tp} pp={args.pp}")
    for col in ("phase", "seconds", "GB written", "GB/s", "x copy", "peak RSS GiB", "after imports GiB", "RSS goal GiB", "goals met"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for row in rows:
        gbps = row["bytes_written"] / row["seconds"] / 1e9
        row["gb_per_s"], row["vs_copy"], row["peak_rss_gib"] = gbps, gbps / copy_gbps, row["peak_rss"] / GIB
        streaming = row["phase"].startswith("stream")
        if streaming:
            row["goals_met"] = row["peak_rss"] <= rss_goal and gbps >= 0.5 * copy_gbps
        table.add_row(
            row["phase"], f"{row['seconds']:.2f}", f"{row['bytes_written'] / 1e9:.2f}", f"{gbps:.2f}", f"{row['vs_copy']:.2f}",
            f"{row['peak_rss_gib']:.2f}", f"{row['baseline_rss'] / GIB:.2f}", f"{rss_goal / GIB:.2f}" if streaming else "",
            ("yes" if row["goals_met"] else "NO") if streaming else "",
        )
    console.print(table)
    for name, ok in checks.items():
        console.print(f"{name}: {'yes' if ok else 'NO'}")
    if not naive_ok:
        console.print(f"naive phases skipped: they would need about {(2 * model_bytes + GIB) / 1e9:.1f} GB > --naive-max-gb {args.naive_max_gb}")
    result = {
        "model": "Qwen2.5-1.5B-shaped random bf16", "model_bytes": model_bytes, "largest_tensor_bytes": info["largest_tensor_bytes"],
        "tp": args.tp, "pp": args.pp, "rss_goal_bytes": rss_goal, "copy_gb_per_s": copy_gbps, "phases": rows, "checks": checks,
        "machine": f"{os.cpu_count()} CPU cores, {sys.platform}",
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(checks.values()) and all(r.get("goals_met", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
