"""torchrun job for tests/runtime/test_collectives_placement.py: megarl's collectives on a GPU-only group
(emulated with "cuda:gloo") and on a plain gloo group. Writes rank_<r>.json into argv[1]."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def gpu_only_group(report: dict) -> None:
    """The default group maps only the GPU device type, as NCCL's does."""
    from megarl.runtime import collectives
    from megarl.runtime.device import is_gpu_device

    dist.init_process_group("cuda:gloo")
    report["gpu_only_backend_config"] = str(dist.get_backend_config())
    try:  # the pre-fix call sites: a CPU bookkeeping tensor straight into the collective
        dist.all_reduce(torch.ones(2, dtype=torch.float64))
        report["direct_cpu_all_reduce"] = "ok"
    except RuntimeError as err:
        report["direct_cpu_all_reduce"] = str(err)
    device = collectives.communication_device()
    report["communication_device_is_gpu"] = is_gpu_device(device)
    report["communication_device_type"] = device.type
    try:  # megarl's helper moves the tensor to the GPU first (which a CPU-only torch cannot allocate)
        collectives.all_reduce(torch.ones(2, dtype=torch.float64))
        report["helper_all_reduce"] = "ok"
    except (RuntimeError, AssertionError) as err:
        report["helper_all_reduce"] = f"{type(err).__name__}: {err}"
    dist.destroy_process_group()


def gloo_group(report: dict) -> None:
    """megarl's runtime (plain gloo on CPU, TP=PP=1, so DP=2) and megarl's own functions."""
    from megatron.core import parallel_state as ps

    from megarl.models import export
    from megarl.runtime import collectives
    from megarl.runtime.distributed import init_runtime, shutdown_runtime
    from megarl.algorithms import advantages
    from megarl.train.batch import TrainSequence
    from megarl.train.preemption import StopRequest
    from megarl.train.stages import metrics, update

    rt = init_runtime(1, 1)
    rank = rt.rank
    report["gloo_communication_device"] = str(collectives.communication_device())
    report["dp"] = rt.dp

    # Helper semantics: in place (a view too), results on the caller's device, rank order.
    vec = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * (rank + 1)
    collectives.all_reduce(vec[:2])
    report["all_reduce_view"] = vec.tolist()
    report["all_reduce_max"] = collectives.all_reduce(torch.tensor([float(rank)]), op="max").tolist()
    report["all_gather"] = [t.tolist() for t in collectives.all_gather(torch.tensor([rank, 10 + rank]))]
    report["broadcast"] = collectives.broadcast(torch.tensor([7.0 if rank == 1 else 0.0]), src=1).tolist()
    if rank == 0:
        collectives.send(torch.arange(4.0), dst=1)
    else:
        report["recv"] = collectives.recv(torch.zeros(4), src=0).tolist()
    report["objects"] = collectives.broadcast_objects([{"from": rank}], src=0)
    report["gathered_objects"] = collectives.all_gather_objects(f"r{rank}")
    collectives.barrier()

    # megarl's functions that met the GPU defect.
    g = torch.Generator().manual_seed(0)
    per_rank = [[torch.randn(n, generator=g) for n in (5, 3, 7)], [torch.randn(n, generator=g) for n in (4, 6)]]
    mine = per_rank[rank]
    whitened = advantages.whiten_across_ranks(mine, ps.get_data_parallel_group())
    union = advantages.whiten_across_ranks(per_rank[0] + per_rank[1], None)  # one process over every token
    report["whiten_matches_union"] = all(
        torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(whitened, union[:3] if rank == 0 else union[3:])
    )
    stop = StopRequest()
    if rank == 1:
        stop.ask()
    seqs = [TrainSequence(prompt_ids=[1], response_ids=[2] * (3 + rank), reward=0.0, group=0, loss_weight=w)
            for w in (1.0, 0.0, 1.0)]
    report["normalizer"] = dataclasses.asdict(update.loss_normalizer(seqs, 2, ps.get_data_parallel_group(), rt.dp))
    sums = {"actor/pg_loss": 2.0 * (rank + 1), "actor/entropy": 1.0}
    counts = {"actor/pg_loss": 4.0, "actor/entropy": 2.0 * (rank + 1)}
    report["reduce_stats"] = metrics.reduce_stats(sums, counts)
    report["stop_requested"] = stop.agreed()
    export._SOURCES.clear()
    report["stage_source_rank"] = export._source_rank(0, None)
    shutdown_runtime()


def main() -> None:
    out = Path(sys.argv[1])
    report: dict = {}
    gpu_only_group(report)
    gloo_group(report)
    (out / f"rank_{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
