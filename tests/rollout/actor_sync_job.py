"""torchrun job for test_actor_sync: a Megatron actor (any TP/PP) syncs to two built-in servers.

Run as `torchrun --nproc-per-node 4 tests/rollout/actor_sync_job.py --actor-hf A --server-hf S
--out result.json --log-dir LOGS --tp 2 --pp 2`. Rank 0 starts two `megarl serve` processes on the
`--server-hf` weights (a different random model, so the first sync visibly changes them) while the
actor is built from `--actor-hf`. Then, for each transport, it runs two rounds of
[optimizer step (SGD) except before the very first sync] -> gather_hf_tensors -> push ->
record the actor's own log-probs (Megatron pipeline, last stage, gathered to rank 0) and each
server's input-token log-probs for the same fixed sequences, with the weight_version each server
reports. Rank 0 writes everything to `--out` as JSON; the test asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
import warnings
from pathlib import Path

# Fixed sequences (token ids < 1001, the tiny qwen2 vocabulary; not a multiple of TP, so padded).
SEQUENCES = [[5, 17, 200, 33, 90, 1, 7, 250, 999, 4], [300, 12, 44, 3, 3, 9, 1000], [77, 78, 79, 80, 81, 82, 83, 84]]


class BackgroundServers:
    """Two built-in servers started from a helper thread, so their start overlaps the actor's build.

    The thread stays alive until `stop()`: `start_servers` sets PR_SET_PDEATHSIG, which
    fires when the *thread* that forked the server exits, not the process.
    """

    def __init__(self, server_hf: str, log_dir: Path):
        self.ready, self.done = threading.Event(), threading.Event()
        self.group, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(server_hf, log_dir), daemon=True)
        self.thread.start()

    def _run(self, server_hf: str, log_dir: Path) -> None:
        from megarl.rollout.fleet import start_servers

        try:
            self.group = start_servers("builtin", server_hf, 2, log_dir)
        except BaseException as err:  # noqa: BLE001 - re-raised by wait()
            self.error = err
        self.ready.set()
        self.done.wait()
        if self.group is not None:
            self.group.stop()

    def wait(self):
        self.ready.wait()
        if self.error is not None:
            raise RuntimeError(f"the rollout servers did not start: {self.error}") from self.error
        return self.group

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


def server_logprobs(url: str) -> tuple[list[list[float]], str]:
    """Input-token log-probs of every fixed sequence (token 1 onwards) and the server's weight_version."""
    body = {"input_ids": SEQUENCES, "return_logprob": True, "logprob_start_len": 0,
            "sampling_params": {"max_new_tokens": 0, "temperature": 1.0}}
    request = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        out = json.loads(response.read())
    versions = {o["meta_info"]["weight_version"] for o in out}
    if len(versions) != 1:
        raise RuntimeError(f"{url} answered one batch with several weight versions {versions}")
    logprobs = []
    for seq, o in zip(SEQUENCES, out):
        entries = o["meta_info"]["input_token_logprobs"]
        assert len(entries) == len(seq) and entries[0][0] is None, entries[:2]
        assert [e[1] for e in entries] == seq
        logprobs.append([e[0] for e in entries[1:]])
    return logprobs, versions.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actor-hf", required=True)
    parser.add_argument("--server-hf", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD lr: a real descent step on these sequences")
    parser.add_argument("--transports", nargs="+", default=["tensor", "distributed", "disk"])
    parser.add_argument("--bucket-kb", type=int, default=64, help="small buckets: every push takes several")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    is_rank0 = int(os.environ.get("RANK", "0")) == 0
    if is_rank0:
        background = BackgroundServers(args.server_hf, args.log_dir)

    import torch
    import torch.distributed as dist

    from megarl.models.export import gather_hf_tensors
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.config import ParallelConfig
    from megarl.rollout.weight_sync import WeightPusher
    from megarl.runtime.distributed import init_runtime, shutdown_runtime
    from megarl.train.batch import TrainSequence, build_microbatches
    from megarl.train.workers import ModelWorker, WorkerSettings, is_last_stage, response_logprobs

    rt = init_runtime(tp=args.tp, pp=args.pp, seed=1234)
    spec = ModelSpec.from_hf(args.actor_hf)
    actor = ModelWorker(spec, WorkerSettings(role="actor", dtype=torch.float32, trainable=True, optimizer_steps=1,
                                             parallel=ParallelConfig(optimizer="sgd", lr=args.lr, clip_grad=0.0)),
                        weights=lambda model: load_hf_into_model(model, args.actor_hf, spec))
    seqs = [TrainSequence(prompt_ids=s[:1], response_ids=s[1:], reward=0.0, group=i) for i, s in enumerate(SEQUENCES)]
    # Two micro-batches (budget fits two sequences), so the pipeline schedule really interleaves.
    microbatches = build_microbatches(seqs, 20, rt.device)

    def actor_logprobs() -> list[list[float]] | None:
        """Every sequence's log-probs from the last stage, on rank 0 (None elsewhere)."""
        from megatron.core import parallel_state as ps

        stats = actor.logprobs(microbatches, temperature=1.0)
        mine = {}
        if is_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
            for mb, st in zip(microbatches, stats):
                for b, i in enumerate(mb.seq_ids):
                    mine[i] = st["logp"][b, :len(seqs[i].response_ids)].float().tolist()
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        merged = {k: v for part in gathered for k, v in part.items()}
        return [merged[i] for i in range(len(seqs))] if is_rank0 else None

    def sft_loss(output, mb):
        logp, _ = response_logprobs(output, mb, spec, 1.0)
        mask = mb.resp_mask.float()
        loss = -(logp * mask).sum() / mask.sum()
        return loss, {"loss": loss.detach().clone()}

    if is_rank0:
        servers = background.wait()
    record = {"rounds": [], "tp": args.tp, "pp": args.pp}
    try:
        if is_rank0:
            record["initial_server"] = [server_logprobs(url) for url in servers.server_urls]
        first = True
        for transport in args.transports:
            pusher = None
            if is_rank0:
                pusher = WeightPusher(servers.server_urls, transport=transport, bucket_bytes=args.bucket_kb << 10,
                                      token=servers.admin_token, disk_dir=str(args.log_dir / "disk"))
            try:
                for round_index in range(2):
                    stepped = not first
                    if stepped:
                        stats, grad_norm, _, ok = actor.train_step(microbatches, sft_loss)
                        assert ok, "the optimizer step was skipped"
                    first = False
                    version = f"{transport}-{round_index}"
                    tensors = gather_hf_tensors(actor.module, dst=0, spec=spec)
                    if is_rank0:
                        report = pusher.push(tensors, weight_version=version)
                    else:
                        for _ in tensors:
                            pass
                    own = actor_logprobs()
                    if is_rank0:
                        record["rounds"].append({
                            "transport": transport, "version": version, "stepped": stepped,
                            "actor": own, "servers": [server_logprobs(url) for url in servers.server_urls],
                            "num_tensors": report.num_tensors, "num_buckets": report.num_buckets,
                            "total_bytes": report.total_bytes, "seconds": report.seconds,
                            "pool_allocations": None if pusher.buffer_pool is None else pusher.buffer_pool.allocations,
                        })
            finally:
                if pusher is not None:
                    pusher.close()
    finally:
        if is_rank0:
            background.stop()
    if is_rank0:
        record["hf_names"] = sorted(name for name, _ in gather_hf_tensors(actor.module, dst=0, spec=spec))
        record["wall_seconds"] = time.perf_counter() - started
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, args.out)
    else:
        for _ in gather_hf_tensors(actor.module, dst=0, spec=spec):
            pass
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
