"""The RL trainer. One step reads as the algorithm:

    batch   = rollout(step)                  prompts -> n samples each from the servers (driver rank)
    rewards = grade(batch)                   extract + grade answers, reward scheme, dynamic sampling
    logp    = actor.logprobs(batch)          old log-probs (fused kernel), reference and critic too
    adv     = advantages(batch)              GAE (PPO), group baselines (GRPO, Dr. GRPO, RLOO), REINFORCE++
    update(actor, critic, batch)             epochs x mini-batches through Megatron's pipeline schedule
    sync_weights()                           gather TP/PP shards -> HF tensors -> every server
    log(metrics); evaluate(); checkpoint()

Every rank runs `Trainer.train()`. The driver (global rank 0) talks to the rollout servers and
grades; the batch is broadcast, split over data-parallel ranks and packed into micro-batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import torch

from megarl.algorithms.registry import get_algorithm
from megarl.config import BUILTIN_PREFIX, Config, validate_semantics
from megarl.data import render_prompt, stop_strings
from megarl.data.prompt_stream import PromptStream
from megarl.models.export import gather_hf_tensors
from megarl.models.spec import ModelSpec
from megarl.rewards.schemes import RewardConfig, compute_rewards
from megarl.rollout import fleet
from megarl.runtime import collectives
from megarl.runtime.seeds import fold_seed
from megarl.train import algorithms as algo_fns
from megarl.train.batch import TrainSequence, build_microbatches, per_sequence_matrix, shard_for_data_parallel, split_minibatches
from megarl.train.workers import DTYPES, ModelWorker, WorkerSettings, is_last_stage, response_logprobs, response_values


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row were skipped for a non-finite loss or gradient."""


class PreemptedError(Exception):
    """Training stopped on a signal after writing a checkpoint; a requeued job resumes from it."""


@dataclasses.dataclass
class StepTimer:
    times: dict = dataclasses.field(default_factory=dict)

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t

        return _Ctx()


class Trainer:
    def __init__(self, cfg: Config):
        from megatron.core import parallel_state as ps

        from megarl.runtime.distributed import init_runtime

        self.cfg = cfg
        self.rt = init_runtime(cfg.actor.tp, cfg.actor.pp, seed=cfg.run.seed)
        validate_semantics(cfg, world_size=self.rt.world_size, check_files=False)
        if cfg.uses_critic and (cfg.critic.tp, cfg.critic.pp) != (cfg.actor.tp, cfg.actor.pp):
            raise ValueError(
                f"critic.tp/pp={cfg.critic.tp}/{cfg.critic.pp} must equal actor.tp/pp={cfg.actor.tp}/{cfg.actor.pp} "
                "(actor and critic share the ranks); set them equal"
            )
        self.run_dir = Path(cfg.run.output_dir)
        self.is_driver = self.rt.rank == 0
        self.dp_group = ps.get_data_parallel_group()
        self.initial_torch_dist = None  # model.path is a torch_dist checkpoint (Megatron-LM / Megatron-Bridge / megarl)
        self.model_dir = self._resolve_model()
        self.spec = ModelSpec.from_hf(self.model_dir)
        self.spec.check_layout(cfg.actor.tp, cfg.actor.pp)
        self.dtype = DTYPES[cfg.model.dtype]
        self.actor = self._worker("actor", cfg.actor, trainable=True)
        self.reference = None
        if cfg.algorithm.kl_coef > 0:
            self.reference = self._worker("reference", cfg.actor, trainable=False)
        self.critic = self._worker("critic", cfg.critic, trainable=True) if cfg.uses_critic else None
        self._load_initial_weights()
        self.step = 0
        self._skip_streak: dict[str, int] = {}  # role -> optimizer steps skipped in a row (non-finite)
        self._prefetch = None  # rollout.overlap (driver): Future or (seqs, metrics, samples) of step+1
        self._prefetch_pool = None
        self.prompts = None
        self.servers = None
        self.client = None
        self.logger = None
        from megarl.train import checkpointing

        self.checkpoints = checkpointing.CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last,
                                                           async_save=cfg.checkpoint.async_save)
        if self.is_driver:
            self._setup_driver()
        if cfg.run.resume:
            self._maybe_resume()

    # ---- setup --------------------------------------------------------------------------
    def _resolve_model(self) -> Path:
        path = self.cfg.model.path
        if path.startswith(BUILTIN_PREFIX):
            from megarl.demo.toy_model import build_toy_model

            if self.is_driver:
                build_toy_model()
            collectives.barrier()
            return Path(build_toy_model())  # cached: every rank gets the same directory
        path = Path(path)
        from megarl.checkpoint import torch_dist

        if torch_dist.looks_like_torch_dist(path):
            self.initial_torch_dist = path
            return torch_dist.hf_assets_of(path, self.cfg.model.tokenizer)
        return path / "hf" if (path / "megarl_checkpoint.json").exists() else path

    def _worker(self, role: str, par, trainable: bool) -> ModelWorker:
        from megarl.models.training import OptimSettings

        optim = OptimSettings(
            optimizer="adam", lr=par.lr, min_lr=par.min_lr, weight_decay=par.weight_decay, adam_beta1=par.adam_beta1,
            adam_beta2=par.adam_beta2, adam_eps=par.adam_eps, clip_grad=par.clip_grad,
            distributed_optimizer=par.distributed_optimizer, optimizer_offload=par.optimizer_offload,
        )
        steps = self.cfg.run.steps * self.cfg.algorithm.epochs * self.cfg.algorithm.mini_batches
        return ModelWorker(self.spec, WorkerSettings(
            role=role, dtype=self.dtype, recompute=par.recompute, sequence_parallel=par.sequence_parallel,
            trainable=trainable, optim=optim,
            lr_warmup_steps=par.lr_warmup_steps or math.ceil(par.lr_warmup_ratio * steps), lr_decay_steps=steps,
            lr_schedule=par.lr_schedule,
        ))

    def _load_initial_weights(self) -> None:
        from megarl.models.hf_io import load_hf_into_model

        if self.initial_torch_dist is not None:
            from megarl.checkpoint.torch_dist import load_model_weights

            for worker in (self.actor, self.reference, self.critic):
                if worker is not None:
                    load_model_weights(worker.model, self.initial_torch_dist)
            self.model_dir = self.export_hf(self.run_dir / "initial_hf")  # what the rollout servers start from
            return
        for worker in (self.actor, self.reference, self.critic):
            if worker is not None:
                load_hf_into_model(worker.model, self.model_dir, self.spec)

    def _setup_driver(self) -> None:
        from transformers import AutoTokenizer

        from megarl.data import check_no_overlap, get_template, load_prompts
        from megarl.monitoring.metrics import MetricsLogger

        cfg = self.cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or self.model_dir)
        rows = []
        for item in cfg.data.train:
            rows.extend(load_prompts(item, levels=cfg.data.levels))
        if cfg.data.eval_sets:
            check_no_overlap(rows, {name: load_prompts(name) for name in cfg.data.eval_sets})
        self.prompts = PromptStream(rows, cfg.run.seed, cfg.data.shuffle)
        self.template = get_template(cfg.data.template)
        self.stops = stop_strings(self.template, self.tokenizer)
        self.reward_config = RewardConfig(
            scheme=cfg.reward.scheme, format_weight=cfg.reward.format_weight, timeout=cfg.reward.timeout_s,
            reward_function=cfg.reward.custom, extraction_mode=cfg.reward.extraction,
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
        self._start_servers()
        self.logger = MetricsLogger(
            self.run_dir, cfg.model_dump(), wandb_mode=cfg.logging.wandb, project=cfg.logging.project, run_name=cfg.run.name,
        )

    def _start_servers(self) -> None:
        from megarl.rollout.client import RolloutClient

        rc = self.cfg.rollout
        self.server_token = None
        master_address = "127.0.0.1"
        if rc.servers:
            urls, generation_urls = list(rc.servers), list(rc.servers)
            # Servers started by the Slurm job (or by hand) share its token; for the distributed
            # transport they connect back to this node.
            self.server_token = os.environ.get("MEGARL_SERVE_TOKEN")
            master_address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        elif rc.engine == "builtin":
            trainer_threads, server_threads = fleet.builtin_thread_split(rc.num_servers, rc.overlap)
            if trainer_threads is not None and self.rt.world_size == 1 and self.rt.device.type == "cpu":
                torch.set_num_threads(trainer_threads)
            self.servers = fleet.start_builtin_servers(self.model_dir, rc.num_servers, self.run_dir / "logs",
                                                       seed=fold_seed(self.cfg.run.seed, 31), threads=server_threads)
            urls, generation_urls = self.servers.server_urls, self.servers.generation_urls
            self.server_token = self.servers.admin_token
        else:
            self.servers = fleet.start_sglang_servers(
                self.model_dir, rc.num_servers, rc.server_tp, self.run_dir / "logs", colocate=rc.colocate, router=rc.router,
                seed=fold_seed(self.cfg.run.seed, 31),  # SGLang seeds NumPy with it (< 2**32)
                mem_fraction_static=rc.mem_fraction_static,
            )
            urls, generation_urls = self.servers.server_urls, self.servers.generation_urls
            self.server_token = self.servers.admin_token
        self.server_urls = urls
        from megarl.rollout.weight_sync import WeightPusher

        self.pusher = WeightPusher(urls, transport=rc.transport, bucket_bytes=rc.bucket_mb << 20, token=self.server_token,
                                   master_address=master_address, server_tp_size=rc.server_tp if rc.engine == "sglang" else 1,
                                   sglang_serializer=rc.engine == "sglang")
        self.client = RolloutClient(generation_urls, max_concurrency=rc.max_concurrency, request_timeout_s=rc.request_timeout_s)
        self.client.wait_until_healthy(timeout_s=300)

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> list[dict]:
        history = []
        self.sync_weights(self.step)
        evaluated_at = None
        if self.cfg.eval.every and self.step == 0:
            baseline = self.evaluate(0)
            evaluated_at = 0
            if self.is_driver:
                self.logger.log(0, baseline)
        while self.step < self.cfg.run.steps:
            metrics = self.train_step()
            self.step += 1
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                metrics.update(self.evaluate(self.step))
                evaluated_at = self.step
            if self.is_driver:
                self.logger.log(self.step, metrics, samples=self._samples)
            history.append(metrics)
            if self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0:
                self.save_checkpoint()
            if self.cfg.checkpoint.hf_export_every and self.step % self.cfg.checkpoint.hf_export_every == 0:
                self.export_hf(self.run_dir / "hf" / f"step_{self.step:06d}")
            if self._stop_requested():
                self.save_checkpoint()
                if self.is_driver:
                    self.logger.console.print(f"stop requested (signal): checkpointed at step {self.step}; exiting")
                raise PreemptedError(self.step)
        if self.cfg.eval.every and evaluated_at != self.step and self.step > 0:
            final = self.evaluate(self.step)
            if self.is_driver:
                self.logger.log(self.step, final)
        if self.is_driver and self.cfg.eval.every:
            self.print_eval_summary()
        return history

    def print_eval_summary(self) -> None:
        """Held-out accuracy before training (step 0) and at the last evaluation, as a table."""
        from rich.table import Table

        from megarl.monitoring.metrics import read_metrics

        rows = [r for r in read_metrics(self.run_dir) if any(k.startswith("eval/") for k in r)]
        if not rows:
            return
        first, last = rows[0], rows[-1]
        table = Table(title=f"held-out accuracy: step {first['step']} -> step {last['step']}")
        for col in ("benchmark", "before", "after", "change (points)"):
            table.add_column(col, justify="right" if col != "benchmark" else "left")
        summary = {}
        for key in sorted(k for k in last if k.startswith("eval/") and k.endswith("/accuracy")):
            before, after = first.get(key), last[key]
            name = key[len("eval/"):-len("/accuracy")]
            summary[name] = {"before": before, "after": after, "step_before": first["step"], "step_after": last["step"]}
            delta = "" if before is None else f"{100 * (after - before):+.1f}"
            table.add_row(name, "" if before is None else f"{100 * before:.1f}%", f"{100 * after:.1f}%", delta)
        self.logger.console.print(table)
        (self.run_dir / "eval_summary.json").write_text(json.dumps(summary, indent=2))

    def _server_memory(self, action: str) -> None:
        """Colocated mode: servers release their GPU memory (weights, KV cache) while the trainer
        computes, and take it back before the weight sync (SGLang --enable-memory-saver)."""
        if not self.cfg.rollout.colocate:
            return
        if self.is_driver:
            fleet.post_to_servers(self.server_urls, f"/{action}_memory_occupation", {}, token=self.server_token)
        collectives.barrier()

    def _stop_requested(self) -> bool:
        """True on every rank once any rank received SIGUSR1/SIGTERM (see megarl.train.cli)."""
        flag = torch.tensor([1.0 if getattr(self, "stop_flag", {}).get("requested") else 0.0])
        collectives.all_reduce(flag, op="max")
        return bool(flag.item())

    def train_step(self) -> dict:
        timer = StepTimer()
        start = time.perf_counter()
        with timer("rollout"):
            seqs, metrics = self.rollout()  # driver: generate + grade; broadcast to all ranks
        # Optimizer steps between the weights that sampled the batch and the ones it trains
        # (0 on-policy; 1 with rollout.overlap).
        metrics["rollout/policy_lag"] = self.step - metrics.pop("rollout/weight_version", self.step)
        self._start_prefetch()  # rollout.overlap: step+1's batch generates during this update
        mine = shard_for_data_parallel(seqs, self.rt.dp_rank, self.rt.dp)
        self._server_memory("release")  # colocated: give the GPUs to training
        with timer("logprobs"):
            extra = self.compute_logprobs(mine)
        with timer("advantages"):
            self.compute_advantages(mine, extra)
        with timer("update"):
            metrics.update(self.update(mine, extra))
        self._server_memory("resume")
        with timer("rollout_wait"):  # rollout.overlap: step+1's batch must finish on the old weights
            self._finish_prefetch()
        with timer("sync"):
            self.sync_weights(self.step + 1)
        step_s = time.perf_counter() - start
        tokens = sum(s.length for s in seqs)
        metrics.update({f"perf/{k}_s": v for k, v in timer.times.items()})
        metrics.update({"perf/step_s": step_s, "perf/tokens_per_s": tokens / step_s, "perf/tokens": tokens})
        return metrics

    # ---- rollout + reward (driver) ---------------------------------------------------------
    def rollout(self) -> tuple[list[TrainSequence], dict]:
        payload = [None]
        if self.is_driver:
            payload = [self._take_prefetched() or self._rollout_on_driver(self.step)]
        collectives.broadcast_objects(payload, src=0)
        seqs, metrics, self._samples = payload[0]
        return seqs, dict(metrics)

    def _encode_prompt(self, problem: str) -> tuple[list[int], bool]:
        """Token ids of the rendered prompt (left-truncated to data.max_prompt_tokens) and whether
        it was truncated."""
        text = render_prompt(self.template, problem, self.tokenizer)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.cfg.data.max_prompt_tokens:
            return ids[-self.cfg.data.max_prompt_tokens:], True
        return ids, False

    def _rollout_seed(self, step: int, round_: int) -> int:
        """Base sampling seed of one rollout round of `step` (0-based); the client adds the prompt
        index (< 4096) and the server the sample index, so every sample of a run has its own random
        stream and a resumed run samples exactly what the uninterrupted one did. Folded into 51 bits
        so that base + prompt index stays below 2**63 (SGLang's sampling_seed is a signed 64-bit long)
        for any run.seed."""
        return fold_seed((self.cfg.run.seed * 100_003 + step) * 32 + round_, 51) * 4096

    # ---- overlap: the next step's rollout during this step's update (driver) -----------------
    def _start_prefetch(self) -> None:
        """rollout.overlap: start generating step+1's batch with the servers' current weights (this
        step's rollout weights) in a background thread; the update runs meanwhile. The sync waits
        for it (_finish_prefetch), so the batch is exactly one optimizer step stale."""
        if not (self.cfg.rollout.overlap and self.is_driver) or self.step + 1 >= self.cfg.run.steps:
            return
        from concurrent.futures import ThreadPoolExecutor

        if self._prefetch_pool is None:
            self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="megarl-rollout")
        self._prefetch = self._prefetch_pool.submit(self._rollout_on_driver, self.step + 1)

    def _finish_prefetch(self) -> None:
        """Wait for the prefetched batch (raising its error, if any) before the servers' weights change."""
        if self._prefetch is not None and not isinstance(self._prefetch, tuple):
            self._prefetch = self._prefetch.result()

    def _take_prefetched(self):
        self._finish_prefetch()
        payload, self._prefetch = self._prefetch, None
        return payload

    def _rollout_on_driver(self, step: int):
        """Generate and grade step `step`'s batch: (sequences, metrics, logged samples)."""
        from megarl.monitoring.reflection import reflection_rates
        from megarl.rollout.client import SamplingParams

        cfg, rc = self.cfg, self.cfg.rollout
        want = cfg.data.prompts_per_step
        groups, filtered, rounds, all_samples, truncated_prompts, versions = [], 0, 0, [], 0, set()
        while len(groups) < want:
            rounds += 1
            if rounds > cfg.algorithm.dynamic_sampling_max_rounds + (0 if cfg.algorithm.dynamic_sampling else 1):
                raise RuntimeError(
                    f"dynamic sampling could not fill {want} prompt groups in {rounds - 1} rounds "
                    f"({filtered} groups had identical rewards); raise algorithm.dynamic_sampling_max_rounds, "
                    "use harder/easier data, or turn dynamic_sampling off"
                )
            rows = self.prompts.take(want - len(groups))
            encoded = [self._encode_prompt(r.problem) for r in rows]
            prompt_ids = [ids for ids, _ in encoded]
            truncated_prompts += sum(cut for _, cut in encoded)
            sampling = SamplingParams(
                max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                stop=self.stops, stop_token_ids=list(rc.stop_token_ids), sampling_seed=self._rollout_seed(step, rounds),
            )
            outputs = self.client.generate(prompt_ids, sampling, n=rc.n)
            flat = [s for group in outputs for s in group]
            versions.update(s.weight_version for s in flat)
            golds = [rows[s.prompt_index].answer for s in flat]
            grades = compute_rewards(
                [s.text for s in flat], golds, self.reward_config, template=cfg.data.template,
                finish_reasons=[s.finish_reason for s in flat],
            )
            for p, (row, ids, group) in enumerate(zip(rows, prompt_ids, outputs)):
                g = grades[p * rc.n:(p + 1) * rc.n]
                rewards = [r.reward for r in g]
                all_samples.append((row, group, g))
                if cfg.algorithm.dynamic_sampling and max(rewards) == min(rewards):
                    filtered += 1
                    continue
                groups.append((row, ids, group, g))
        seqs = []
        for gi, (row, ids, group, g) in enumerate(groups):
            for sample, grade in zip(group, g):
                truncated = sample.finish_reason == "length"
                seqs.append(TrainSequence(
                    prompt_ids=ids, response_ids=list(sample.output_ids), reward=float(grade.reward), group=gi,
                    behaviour_logp=sample.logprobs, truncated=truncated, correct=bool(grade.correct),
                    loss_weight=0.0 if (cfg.algorithm.overlong_filter and truncated) else 1.0,
                ))
        baseline = get_algorithm(cfg.algorithm.name).group_baseline
        if baseline is not None:
            advs = algo_fns.sequence_advantages([s.reward for s in seqs], [s.group for s in seqs], baseline, cfg.algorithm.group_eps)
            for s, a in zip(seqs, advs):
                s.advantage = a
        texts = [s.text for _, group, _ in all_samples for s in group]
        correct = [bool(x.correct) for _, _, g in all_samples for x in g]
        lengths = [len(s.response_ids) for s in seqs]
        metrics = {
            "reward/mean": sum(s.reward for s in seqs) / len(seqs),
            "reward/accuracy": sum(s.correct for s in seqs) / len(seqs),
            "reward/accuracy_all_sampled": sum(correct) / len(correct),
            "reward/has_answer": sum(bool(x.has_answer) for _, _, g in all_samples for x in g) / len(correct),
            "response/length_mean": sum(lengths) / len(lengths),
            "response/length_max": max(lengths),
            "response/length_correct": _mean([len(s.response_ids) for s in seqs if s.correct]),
            "response/length_incorrect": _mean([len(s.response_ids) for s in seqs if not s.correct]),
            "response/truncated": sum(s.truncated for s in seqs) / len(seqs),
            "data/filtered_groups": filtered,
            "batch/sequences": len(seqs),
            "batch/prompts": len(groups),
            "data/sampling_rounds": rounds,
            "data/truncated_prompts": truncated_prompts,
            "data/epoch": self.prompts.epoch,
            "advantage/mean": _mean([s.advantage for s in seqs]),
            "advantage/abs_mean": _mean([abs(s.advantage) for s in seqs]),
        }
        numeric = [int(v) for v in versions if v is not None and str(v).isdigit()]
        if numeric:
            metrics["rollout/weight_version"] = min(numeric)
        rates = reflection_rates(texts, correct, self.cfg.logging.reflection_words)
        metrics.update({f"response/{k}": v for k, v in rates.items()})
        k = self.cfg.logging.samples_per_step
        samples = [
            {"prompt": self.tokenizer.decode(groups[i][1]), "response": groups[i][2][0].text, "gold": groups[i][0].answer,
             "reward": groups[i][3][0].reward}
            for i in range(min(k, len(groups)))
        ]
        return seqs, metrics, samples

    # ---- log-probs, values, advantages ----------------------------------------------------
    def _microbatches(self, seqs: list[TrainSequence]) -> list[dict]:
        # Sequence parallelism splits every row over the TP ranks: rows pad to a multiple of tp too.
        return build_microbatches(seqs, self.cfg.actor.micro_batch_tokens, self.rt.device, pad_multiple=math.lcm(8, self.rt.tp))

    def _temperature(self) -> float:
        t = self.cfg.rollout.temperature
        return t if t > 1e-5 else 1.0

    def _single_pass(self) -> bool:
        """One epoch, one mini-batch, no importance correction: the update's own forward pass sees
        the rollout's weights, so the old log-probs are its log-probs (ratio 1) and the separate
        old-log-prob pass is skipped (not with KL in the reward, which needs them before the update)."""
        a = self.cfg.algorithm
        return a.epochs == 1 and a.mini_batches == 1 and a.importance_correction == "none" and not (a.kl_in_reward and a.kl_coef)

    def _ratio_vs_behaviour(self) -> bool:
        """rollout.overlap (one step off-policy): the PPO ratio is taken against the policy that
        sampled the batch, from the servers' log-probs (with importance_correction=tis, against the
        recomputed log-probs instead, with a capped importance weight toward the behaviour)."""
        return self.cfg.rollout.overlap and self.cfg.algorithm.importance_correction == "none"

    def _recompute_old_logprobs(self) -> bool:
        """Whether the update needs a separate forward pass for old log-probs: not in a single pass
        (the update's own forward gives them), nor when the ratio is taken against the behaviour
        log-probs (unless KL in the reward needs them first)."""
        a = self.cfg.algorithm
        return not (self._single_pass() or (self._ratio_vs_behaviour() and not a.kl_in_reward))

    def compute_logprobs(self, seqs: list[TrainSequence]) -> list[dict]:
        """Per-sequence tensors on the last stage: old_logp (unless single pass), ref_logp, old_values."""
        extra = [dict() for _ in seqs]
        if not self._recompute_old_logprobs() and self.reference is None and self.critic is None:
            return extra  # nothing to compute before the update
        mbs = self._microbatches(seqs)
        if not mbs:
            return extra
        temperature = self._temperature()

        def scatter(stats, key, out_key):
            for mb, st in zip(mbs, stats):
                host = st[key].detach().float().cpu()  # one device-to-host copy per micro-batch
                for b, i in enumerate(mb["seq_ids"]):
                    extra[i][out_key] = host[b, :len(seqs[i].response_ids)]

        if self._recompute_old_logprobs():
            stats = self.actor.logprobs(mbs, temperature)
            if is_last_stage():
                scatter(stats, "logp", "old_logp")
        if self.reference is not None:
            ref = self.reference.logprobs(mbs, temperature)
            if is_last_stage():
                scatter(ref, "logp", "ref_logp")
        if self.critic is not None:
            vals = self.critic.values(mbs)
            if is_last_stage():
                scatter(vals, "values", "old_values")
        return extra

    def compute_advantages(self, seqs: list[TrainSequence], extra: list[dict]) -> None:
        """Token-level advantages (and returns for PPO) on the last stage."""
        if not is_last_stage():
            return
        a = self.cfg.algorithm
        # KL in the reward is the actor's (recomputed) log-probs against the reference, taken before
        # old_logp may be replaced by the servers' behaviour log-probs for the ratio below.
        kls = [
            algo_fns.kl_penalty(e["old_logp"], e["ref_logp"], a.kl_type) if (a.kl_in_reward and "ref_logp" in e) else None
            for e in extra
        ]
        for s, e in zip(seqs, extra):
            if s.behaviour_logp is not None and len(s.behaviour_logp) == len(s.response_ids):
                e["behaviour_logp"] = torch.tensor(s.behaviour_logp, dtype=torch.float32)
                if self._ratio_vs_behaviour():
                    e["old_logp"] = e["behaviour_logp"]
        group_based = get_algorithm(a.name).group_based
        inputs = algo_fns.AdvantageInputs(
            scores=[s.advantage if group_based else s.reward for s in seqs], lengths=[len(s.response_ids) for s in seqs],
            kl=kls, values=[e.get("old_values") for e in extra],
        )
        out = algo_fns.estimate_advantages(a, inputs, self.dp_group)
        for i, e in enumerate(extra):
            e["advantages"] = out.advantages[i]
            if out.returns is not None:
                e["returns"] = out.returns[i]

    # ---- update -----------------------------------------------------------------------------
    def _attach(self, mbs: list[dict], seqs: list[TrainSequence], extra: list[dict], keys) -> None:
        for mb in mbs:
            t_max = mb["resp_mask"].shape[1]
            rows = mb["seq_ids"]
            for key in keys:
                if all(key in extra[i] for i in rows):
                    mb[key] = per_sequence_matrix([extra[i][key] for i in rows], t_max, self.rt.device)
            weight = torch.tensor([seqs[i].loss_weight > 0 for i in rows], device=self.rt.device).unsqueeze(1)
            mb["loss_mask"] = mb["resp_mask"] & weight
            if self.cfg.algorithm.importance_correction == "tis" and "behaviour_logp" in mb:
                ratio = torch.exp(mb["old_logp"] - mb["behaviour_logp"]).clamp(max=self.cfg.algorithm.importance_cap)
                mb["is_weights"] = ratio * mb["resp_mask"]

    def _normalizer(self, seqs: list[TrainSequence], num_microbatches: int) -> dict:
        local = torch.tensor([sum(len(s.response_ids) for s in seqs if s.loss_weight > 0), sum(s.loss_weight > 0 for s in seqs)],
                             dtype=torch.float64)
        collectives.all_reduce(local, group=self.dp_group)
        return {"tokens": float(local[0]), "sequences": float(local[1]), "num_microbatches": num_microbatches, "dp": self.rt.dp}

    def update(self, seqs: list[TrainSequence], extra: list[dict]) -> dict:
        a = self.cfg.algorithm
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        grad_norms, critic_norms, lrs = [], [], []
        skipped = 0  # optimizer steps skipped for a non-finite loss or gradient
        self._mismatch = torch.zeros(3, dtype=torch.float64)  # |diff| sum, count, max (single pass)
        order = list(range(len(seqs)))
        keys = ("old_logp", "ref_logp", "advantages", "returns", "old_values", "behaviour_logp")
        for epoch in range(a.epochs):
            random.Random(self.cfg.run.seed * 7919 + self.step * 31 + epoch).shuffle(order)
            # Every DP rank takes the same number of mini-batches (possibly empty) so optimizer
            # steps stay in lockstep.
            for part in split_minibatches(order, a.mini_batches):
                sub = [seqs[i] for i in part if seqs[i].loss_weight > 0]
                sub_extra = [extra[i] for i in part if seqs[i].loss_weight > 0]
                mbs = self._microbatches(sub) if sub else []
                if not mbs:
                    mbs = self._empty_microbatch()
                else:
                    self._attach(mbs, sub, sub_extra, keys)
                norm = self._normalizer(sub, len(mbs))

                def actor_step(output, mb, norm=norm):
                    if mb.get("empty"):
                        return output.sum() * 0.0, {}
                    logp, entropy = response_logprobs(output, mb, self.spec, self._temperature())
                    if "old_logp" not in mb:  # single pass: these are the rollout weights
                        mb["old_logp"] = logp.detach()
                        if "behaviour_logp" in mb:
                            self._record_mismatch(logp.detach(), mb["behaviour_logp"], mb["resp_mask"])
                    return algo_fns.actor_loss(logp, entropy, mb, a, norm)

                stats, gnorm, lr, stepped = self.actor.train_step(mbs, actor_step)
                skipped += self._note_update("actor", stepped)
                grad_norms.append(gnorm)
                lrs.append(lr)
                _accumulate(stats, sums, counts, prefix="actor/")
                if self.critic is not None:
                    def critic_step(output, mb, norm=norm):
                        if mb.get("empty"):
                            return output.sum() * 0.0, {}
                        return algo_fns.value_loss(response_values(output, mb), mb, self.cfg.critic.value_clip, norm)

                    cstats, cnorm, _, stepped = self.critic.train_step(mbs, critic_step)
                    skipped += self._note_update("critic", stepped)
                    critic_norms.append(cnorm)
                    _accumulate(cstats, sums, counts, prefix="critic/")
        metrics = self._reduce_stats(sums, counts)
        metrics["actor/grad_norm"] = _max_finite(grad_norms)
        metrics["train/skipped_updates"] = skipped
        metrics["actor/lr"] = lrs[-1] if lrs else 0.0
        if critic_norms:
            metrics["critic/grad_norm"] = _max_finite(critic_norms)
        metrics.update(self._mismatch_stats(seqs, extra))
        return metrics

    def _note_update(self, role: str, stepped: bool) -> int:
        """Count a skipped optimizer step (non-finite loss or gradient; the worker agreed on it over
        all ranks); after run.max_skipped_updates in a row, stop the run. Returns 1 if skipped."""
        streaks = self._skip_streak
        streaks[role] = 0 if stepped else streaks.get(role, 0) + 1
        if streaks[role] >= self.cfg.run.max_skipped_updates:
            raise NonFiniteTrainingError(
                f"{role}: {streaks[role]} optimizer steps in a row skipped for a non-finite loss or gradient at step "
                f"{self.step + 1}; stopping (weights were not updated with them; checkpoints hold finite weights). "
                "Lower the learning rate, check rewards and data, or raise run.max_skipped_updates"
            )
        return 0 if stepped else 1

    def _empty_microbatch(self) -> list[dict]:
        mb = build_microbatches([TrainSequence(prompt_ids=[0], response_ids=[0], reward=0.0, group=0)], 8, self.rt.device,
                                pad_multiple=math.lcm(8, self.rt.tp))[0]
        mb["empty"] = True
        return [mb]

    _STAT_KEYS = ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/clipfrac", "actor/ppo_kl", "actor/dual_clipfrac",
                  "critic/vf_loss", "critic/values")

    def _reduce_stats(self, sums: dict, counts: dict) -> dict:
        """Token-weighted means of last-stage stats over all ranks."""
        vec = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0.0)] for k in self._STAT_KEYS], dtype=torch.float64)
        if not is_last_stage():
            vec.zero_()
        from megatron.core import parallel_state as ps

        if ps.get_tensor_model_parallel_rank() != 0:
            vec.zero_()
        collectives.all_reduce(vec)
        out = {k: float(vec[i, 0] / vec[i, 1]) for i, k in enumerate(self._STAT_KEYS) if vec[i, 1] > 0}
        if "actor/kl_loss" in out:
            out["actor/kl"] = out.pop("actor/kl_loss")
        return out

    def _record_mismatch(self, logp: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> None:
        d = (logp - behaviour).abs().double()[mask]
        if d.numel():
            self._mismatch += torch.tensor([d.sum().item(), d.numel(), 0.0])
            self._mismatch[2] = max(float(self._mismatch[2]), d.max().item())

    def _mismatch_stats(self, seqs, extra) -> dict:
        """Train/inference mismatch: |actor's recomputed log-prob - server's behaviour log-prob|."""
        from megatron.core import parallel_state as ps

        reporter = is_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        if reporter and not self._single_pass() and not self._ratio_vs_behaviour():
            for e in extra:
                if "behaviour_logp" in e and "old_logp" in e:
                    self._record_mismatch(e["old_logp"], e["behaviour_logp"], torch.ones_like(e["old_logp"], dtype=torch.bool))
        vec = self._mismatch.clone() if reporter else torch.zeros(3, dtype=torch.float64)
        maxv = vec[2].clone()
        collectives.all_reduce(vec[:2])
        collectives.all_reduce(maxv, op="max")
        if vec[1] == 0:
            return {}
        return {"mismatch/logp_abs_mean": float(vec[0] / vec[1]), "mismatch/logp_abs_max": float(maxv)}

    # ---- weight sync, evaluation, checkpoints ---------------------------------------------------
    def sync_weights(self, version: int) -> None:
        """Gather the actor into HF tensors on the driver and push them to every server, as
        weight_version `version` (the number of optimizer steps in these weights)."""
        version = str(version)
        tensors = gather_hf_tensors(self.actor.module, dst=0, spec=self.spec)
        if self.is_driver:
            report = self.pusher.push(tensors, weight_version=version)
            self.client.expected_weight_version = version
            self.last_sync = report
        else:
            for _ in tensors:
                pass

    def evaluate(self, step: int) -> dict:
        """Accuracy on the configured benchmarks through the rollout servers (driver)."""
        payload = [{}]
        if self.is_driver and self.cfg.eval.benchmarks:
            from megarl.evaluation.harness import EvalSettings, evaluate_benchmarks

            ev = self.cfg.eval
            settings = EvalSettings(
                benchmarks=ev.benchmarks, template=self.cfg.data.template, n=ev.n, temperature=ev.temperature,
                max_new_tokens=ev.max_new_tokens, limit=ev.limit, seed=fold_seed(self.cfg.run.seed, 62), top_p=ev.top_p,
                protocol=ev.protocol, extraction=self.cfg.reward.extraction, stop_token_ids=list(self.cfg.rollout.stop_token_ids),
            )
            result = evaluate_benchmarks(self.client, self.tokenizer, settings, out_dir=self.run_dir / "eval" / f"step_{step:06d}")
            payload = [{f"eval/{name}/accuracy": row["accuracy"] for name, row in result.items()}]
        collectives.broadcast_objects(payload, src=0)
        return payload[0]

    def save_checkpoint(self) -> None:
        state = {"step": self.step}
        if self.is_driver:
            state["prompts"] = self.prompts.state()
            self._finish_prefetch()
            if self._prefetch is not None:  # rollout.overlap: the next step's batch, already sampled
                seqs, metrics, samples = self._prefetch
                state["prefetched"] = {"seqs": [dataclasses.asdict(x) for x in seqs], "metrics": metrics, "samples": samples}
        self.checkpoints.save(self.step, self._workers(), state)

    def _workers(self) -> dict:
        return {k: w for k, w in (("actor", self.actor), ("critic", self.critic)) if w is not None}

    def _maybe_resume(self) -> None:
        found = self.checkpoints.load_latest(self._workers())
        if found is None:
            return
        self.step = found["step"]
        if self.is_driver:
            self.prompts.restore(found["prompts"])
            if "prefetched" in found:
                pre = found["prefetched"]
                self._prefetch = ([TrainSequence(**x) for x in pre["seqs"]], pre["metrics"], pre["samples"])
            self.logger.truncate_after(self.step)
            self.logger.console.print(f"resumed from checkpoint at step {self.step}")

    def export_hf(self, out_dir: Path) -> Path:
        """Write the actor as a standard HF directory (what `megarl eval` and SGLang load), through
        the conversion tools: a Megatron checkpoint of the live model, then Megatron -> HF."""
        import shutil

        from megarl.checkpoint.convert import megatron_to_hf
        from megarl.checkpoint.live import save_megatron_checkpoint

        megatron_dir = out_dir.with_name(out_dir.name + ".megatron")
        if self.is_driver and megatron_dir.exists():
            shutil.rmtree(megatron_dir)
        collectives.barrier()
        save_megatron_checkpoint(self.actor.module, megatron_dir, hf_assets_dir=self.model_dir)
        if self.is_driver:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            megatron_to_hf(megatron_dir, out_dir, progress=False)
            shutil.rmtree(megatron_dir)
        collectives.barrier()
        return out_dir

    def close(self) -> None:
        self.checkpoints.close()  # completes an asynchronous save in flight
        if self._prefetch_pool is not None:
            self._prefetch_pool.shutdown(wait=True, cancel_futures=True)
        if self.is_driver:
            self.pusher.close()
            if self.servers is not None:
                self.servers.stop()
            if self.logger is not None:
                self.logger.close()


def _max_finite(xs) -> float:
    """Largest finite value (0.0 for none; nan when every value is non-finite, i.e. all skipped)."""
    finite = [x for x in xs if math.isfinite(x)]
    return max(finite) if finite else (float("nan") if xs else 0.0)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _accumulate(stats: list[dict], sums: dict, counts: dict, prefix: str) -> None:
    for st in stats:
        tokens = float(st.get("tokens", 0.0))
        for k, v in st.items():
            if k == "tokens":
                continue
            key = prefix + k
            sums[key] = sums.get(key, 0.0) + float(v) * tokens
            counts[key] = counts.get(key, 0.0) + tokens
