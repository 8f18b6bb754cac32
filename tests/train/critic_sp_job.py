"""torchrun job for test_critic_sequence_parallel: a Megatron critic's values and one training step
on fixed sequences at TP=1 (two data-parallel ranks with the same batch, so the average gradient is
the single-process one), TP=2 and TP=2 with sequence parallelism, one layout after the other.

Run as `torchrun --nproc-per-node 2 tests/train/critic_sp_job.py --hf-dir MODEL --out out.json`.
For each layout it builds the critic (megarl's ModelWorker, the trunk from the HF model, the seeded
value head), packs the sequences into micro-batches as the trainer does (rows padded to a multiple
of 8 and of TP), records the values of every response token, takes one SGD step on a squared error
to fixed targets through Megatron's pipeline schedule and records the values again. Rank 0 writes {layout: {values, loss, grad_norm,
values_after}} to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

# Fixed sequences (token ids < 1001, the tiny qwen2 vocabulary); two micro-batches, rows whose
# lengths are not multiples of TP before padding.
SEQUENCES = [([5, 17, 200], [33, 90, 1, 7, 250, 999, 4]), ([300, 12], [44, 3, 3, 9, 1000]),
             ([77, 78, 79, 80], [81, 82, 83, 84, 85, 86]), ([8], [9, 10, 11])]
BUDGET = 20
LAYOUTS = [("tp1", 1, False), ("tp2", 2, False), ("tp2sp", 2, True)]  # name, TP, sequence parallel


def run_layout(hf_dir: str, tp: int, sequence_parallel: bool) -> dict:
    import torch
    from megatron.core import parallel_state as ps

    from megarl.config import ParallelConfig
    from megarl.models.hf_io import load_hf_into_model
    from megarl.runtime.distributed import init_runtime
    from megarl.models.spec import ModelSpec
    from megarl.train.batch import Packer, TrainSequence
    from megarl.train.workers import ModelWorker, WorkerSettings, is_last_stage, response_values

    rt = init_runtime(tp=tp, pp=1, seed=1234)
    spec = ModelSpec.from_hf(hf_dir)
    par = ParallelConfig(tp=rt.tp, sequence_parallel=sequence_parallel, optimizer="sgd", lr=0.5, clip_grad=0.0)
    critic = ModelWorker(spec, WorkerSettings(role="critic", dtype=torch.float32, parallel=par, trainable=True,
                                              optimizer_steps=1),
                         weights=lambda model: load_hf_into_model(model, hf_dir, spec))
    seqs = [TrainSequence(prompt_ids=p, response_ids=r, reward=0.0, group=i) for i, (p, r) in enumerate(SEQUENCES)]
    microbatches = Packer(BUDGET, rt.device, pad_multiple=math.lcm(8, rt.tp))(seqs)

    def values() -> list[list[float]]:
        out = {}
        for mb, st in zip(microbatches, critic.values(microbatches)):
            for row, i in enumerate(mb.seq_ids):
                out[i] = st["values"][row][mb.resp_mask[row]].tolist()
        return [out[i] for i in range(len(seqs))]

    def squared_error(output, mb):
        v = response_values(output, mb)
        target = torch.linspace(-1.0, 1.0, v.numel(), device=v.device).view_as(v)
        mask = mb.resp_mask.float()
        loss = (((v - target) ** 2) * mask).sum() / mask.sum()
        return loss, {"loss": loss.detach().clone()}

    before = values()
    stats, grad_norm, _, stepped = critic.train_step(microbatches, squared_error)
    assert stepped
    after = values()
    if not (is_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0):
        return {}
    return {"values": before, "values_after": after, "grad_norm": grad_norm,
            "loss": sum(s["loss"].item() for s in stats) / len(stats)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hf-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from megarl.runtime import collectives
    from megarl.runtime.distributed import current_runtime, shutdown_runtime

    results = {}
    for name, tp, sp in LAYOUTS:
        mine = run_layout(args.hf_dir, tp, sp)
        results[name] = next(r for r in collectives.all_gather_objects(mine) if r)
    if current_runtime().is_main:
        args.out.write_text(json.dumps(results))
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
