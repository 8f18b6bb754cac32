"""The RL trainer: the loop and the state that persists from step to step (models, optimizers,
servers, prompt stream position, step, the prefetched batch or the async producer). One step reads as the algorithm, each
line a stage in megarl.train.stages:

    batch   = generate(step)                      prompts -> n graded samples each, dynamic sampling (driver)
                                                  (rollout.mode=async: taken from the producer's buffer, produce.py)
    seqs    = with_group_advantages(batch)        group baselines (GRPO, Dr. GRPO, RLOO) need whole groups
    tensors = logprobs(my share of seqs)          old log-probs (fused kernel), reference, critic values
    tensors = token_advantages(seqs, tensors)     GAE (PPO), REINFORCE++ returns, KL in the reward
    for each mini-batch: update(...)              epochs x mini-batches through Megatron's pipeline schedule
    push_weights(step + 1)                        gather TP/PP shards -> HF tensors -> every server
    log(metrics); evaluate(); checkpoint()

Every rank runs `Trainer.train()`. The driver (global rank 0) talks to the rollout servers and
grades; the batch is broadcast, split over data-parallel ranks and packed into micro-batches. A stop
request is honoured after the rollout and between mini-batch updates: the run checkpoints what it
has (a checkpoint written mid-step carries the step's progress) and ends with PreemptedError.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from megarl import model_source
from megarl.checkpoint.manager import CheckpointManager, export_hf
from megarl.config import Config, ConfigError, colocated_transport_problem, validate_semantics
from megarl.data.prompt_stream import PromptStream
from megarl.models import router_replay
from megarl.models.spec import ModelSpec
from megarl.rollout import fleet
from megarl.runtime import collectives
from megarl.runtime.device import on_gpu
from megarl.runtime.seeds import fold_seed
from megarl.train.batch import Packer, shard_for_data_parallel
from megarl.train.preemption import PreemptedError, StepProgress, StopRequest
from megarl.train.stages import advantages, generate, logprobs, produce, sync, update
from megarl.train.stages import metrics as step_metrics
from megarl.train.stages.update import NonFiniteTrainingError
from megarl.train.workers import DTYPES, ModelWorker, WorkerSettings

__all__ = ["NonFiniteTrainingError", "PreemptedError", "Trainer"]


class Trainer:
    def __init__(self, cfg: Config):
        from megatron.core import parallel_state as ps

        from megarl.runtime.distributed import init_runtime

        self.cfg = cfg
        self.rt = init_runtime(cfg.actor.tp, cfg.actor.pp, seed=cfg.run.seed, ep=cfg.actor.ep)
        validate_semantics(cfg, world_size=self.rt.world_size, check_files=False)
        self.run_dir = Path(cfg.run.output_dir)
        self.is_driver = self.rt.rank == 0
        self.dp_group = ps.get_data_parallel_group()
        self.model_dir = self._resolve_model()
        self.spec = ModelSpec.from_hf(self.model_dir)
        self.spec.check_layout(cfg.actor.tp, cfg.actor.pp, ep=cfg.actor.ep, sequence_parallel=cfg.actor.sequence_parallel)
        self.dtype = DTYPES[cfg.model.dtype]
        self.actor = self._worker("actor", cfg.actor, trainable=True)
        self.reference = None
        if cfg.algorithm.kl_coef > 0:
            self.reference = self._worker("reference", cfg.actor, trainable=False)
        self.critic = self._worker("critic", cfg.critic, trainable=True) if cfg.uses_critic else None
        if self.initial_torch_dist is not None:  # what the rollout servers start from
            self.model_dir = export_hf(self.actor.module, self.run_dir / "initial_hf", self.model_dir, self.is_driver)
        self.plan = logprobs.OldLogprobPlan.from_config(cfg)
        self.temperature = logprobs.sampling_temperature(cfg)
        # Sequence parallelism splits every row over the TP ranks: rows pad to a multiple of tp too.
        self.pack = Packer(cfg.actor.micro_batch_tokens, self.rt.device, pad_multiple=math.lcm(8, self.rt.tp))
        self.update_setup = update.UpdateSetup(
            algo=cfg.algorithm, value_clip=cfg.critic.value_clip, value_agg=cfg.critic.loss_agg, plan=self.plan, pack=self.pack, spec=self.spec,
            temperature=self.temperature, seed=cfg.run.seed, dp=self.rt.dp, max_skipped_updates=cfg.run.max_skipped_updates,
            dp_group=self.dp_group,
        )
        self.step = 0
        self.skip_streak: dict[str, int] = {}  # role -> optimizer steps skipped in a row (non-finite)
        self._resumed: StepProgress | None = None  # a checkpoint written mid-step: where that step continues
        self.prefetch = generate.Prefetcher()  # rollout.mode=overlap (driver): step+1's batch
        self.producer: produce.Producer | None = None  # rollout.mode=async (driver)
        self._async_state: dict | None = None  # a resumed async run's producer state
        self.prompts = self.tokenizer = self.servers = self.client = self.pusher = self.logger = self.rollout_setup = None  # driver
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.checkpoint)
        if self.is_driver:
            self._setup_driver()
        if cfg.run.resume:
            self._maybe_resume()

    # ---- setup --------------------------------------------------------------------------
    def _resolve_model(self) -> Path:
        model = self.cfg.model
        if self.is_driver:  # a scheme's model (builtin:NAME) is made once, by the driver
            model_source.resolve(model.path, tokenizer=model.tokenizer)
        collectives.barrier()
        source = model_source.resolve(model.path, tokenizer=model.tokenizer)  # made: every rank gets the same directory
        self.initial_torch_dist = source.checkpoint  # model.path is a torch_dist checkpoint (Megatron-LM, Megatron-Bridge, megarl)
        return source.hf_dir

    def _worker(self, role: str, par, trainable: bool) -> ModelWorker:
        steps = self.cfg.run.steps * self.cfg.algorithm.epochs * self.cfg.algorithm.mini_batches
        return ModelWorker(self.spec, WorkerSettings(role=role, dtype=self.dtype, parallel=par, trainable=trainable,
                                                     optimizer_steps=steps), weights=self._load_initial_weights)

    def _load_initial_weights(self, model) -> None:
        """Fill a freshly built worker model from model.path (before its optimizer copies it)."""
        if self.initial_torch_dist is not None:
            from megarl.checkpoint.torch_dist import load_model_weights

            load_model_weights(model, self.initial_torch_dist)
        else:
            from megarl.models.hf_io import load_hf_into_model

            load_hf_into_model(model, self.model_dir, self.spec)

    def _setup_driver(self) -> None:
        from transformers import AutoTokenizer

        from megarl.data import check_no_overlap, load_prompts
        from megarl.monitoring.metrics import MetricsLogger

        cfg = self.cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or self.model_dir)
        rows = []
        for item in cfg.data.train:
            rows.extend(load_prompts(item, levels=cfg.data.levels))
        if cfg.data.eval_sets:
            check_no_overlap(rows, {name: load_prompts(name) for name in cfg.data.eval_sets})
        self.prompts = PromptStream(rows, cfg.run.seed, cfg.data.shuffle)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
        self._start_servers()
        self.rollout_setup = generate.make_setup(cfg, self.client, self.tokenizer, spec=self.spec)
        self.logger = MetricsLogger(
            self.run_dir, cfg.model_dump(), wandb_mode=cfg.logging.wandb, project=cfg.logging.project, run_name=cfg.run.name,
            total_steps=cfg.run.steps, samples_every=cfg.logging.samples_every,
        )

    def _start_servers(self) -> None:
        from megarl.rollout.client import RolloutClient
        from megarl.rollout.weight_sync import WeightPusher

        rc = self.cfg.rollout
        problem = colocated_transport_problem(rc.transport, colocate=rc.colocate, gpus=on_gpu())
        if problem:  # the built-in engine on GPUs (the config check covers SGLang)
            raise ConfigError(problem)
        routes = self.spec.is_moe  # MoE: the rollout's experts, for replay (or moe/router_mismatch without it)
        self.servers = fleet.start_for_run(rc, self.model_dir, self.run_dir / "logs", seed=fold_seed(self.cfg.run.seed, 31),
                                           dtype=self.cfg.model.dtype, routed_experts=routes)
        if self.servers.trainer_threads is not None and self.rt.world_size == 1 and self.rt.device.type == "cpu":
            torch.set_num_threads(self.servers.trainer_threads)
        self.pusher = WeightPusher(self.servers.server_urls, transport=rc.transport, bucket_bytes=rc.bucket_mb << 20,
                                   token=self.servers.admin_token, master_address=self.servers.master_address,
                                   disk_dir=self.cfg.weight_sync_dir,
                                   **self.servers.weight_sync_options(rc.server_tp))
        self.client = RolloutClient(self.servers.generation_urls, max_concurrency=rc.max_concurrency,
                                    request_timeout_s=rc.request_timeout_s, context_length=self.spec.max_position_embeddings,
                                    return_routed_experts=routes)
        self.client.wait_until_healthy(timeout_s=300)

    # ---- the loop -----------------------------------------------------------------------
    def train(self, stop: StopRequest | None = None) -> list[dict]:
        stop = stop or StopRequest()
        history = []
        self._stop_point(stop, None)  # asked while the run was starting: nothing new to save
        first_step = self.step
        self.sync_weights(self.step)
        self._start_producer()
        evaluated_at = None
        if self.cfg.eval.every and self.step == 0 and self._resumed is None:
            baseline = self.evaluate(0)
            evaluated_at = 0
            if self.is_driver:
                self.logger.log(0, baseline)
        while self.step < self.cfg.run.steps:
            metrics, batch = self.train_step(stop)
            self.step += 1
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                metrics.update(self.evaluate(self.step))
                evaluated_at = self.step
            if self.is_driver:
                self.logger.log_prompts(self.step, batch.prompt_ids)
                self.logger.log(self.step, metrics, samples=batch.samples)
            history.append(metrics)
            saved = bool(self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0)
            if saved:
                self.save_checkpoint()
            if self.cfg.checkpoint.hf_export_every and self.step % self.cfg.checkpoint.hf_export_every == 0:
                hf_dir = export_hf(self.actor.module, self.run_dir / "hf" / f"step_{self.step:06d}", self.model_dir, self.is_driver)
                if self.is_driver:
                    self.logger.say(f"HF model at step {self.step}: {hf_dir}")
            self._stop_point(stop, None if saved else StepProgress())
        if self.cfg.eval.every and evaluated_at != self.step and self.step > first_step:  # (resumed at the end: logged)
            final = self.evaluate(self.step)
            if self.is_driver:
                self.logger.log(self.step, final)
        if self.is_driver and self.cfg.eval.every:
            step_metrics.print_eval_summary(self.run_dir, self.logger.console)
        return history

    def train_step(self, stop: StopRequest) -> tuple[dict, generate.RolloutBatch]:
        """One RL step: (metrics, the batch it trained). Resumes a step a mid-step checkpoint began."""
        timer, start = step_metrics.StepTimer(), time.perf_counter()
        busy_before = self._generation_client().busy_seconds() if self.is_driver else 0.0
        progress, self._resumed = self._resumed or StepProgress(), None
        offloaded = self._trainer_memory("offload")  # colocated: the GPUs go to generation
        with timer("rollout"):
            progress.batch = self.rollout(progress.batch)  # driver: generate + grade; broadcast to all ranks
        self._server_memory("release")  # colocated: and back to training
        self._trainer_memory("reload")
        self._stop_point(stop, progress)
        seqs = advantages.with_group_advantages(progress.batch.seqs, self.cfg.algorithm)
        metrics = {**step_metrics.policy_lag(progress.batch.metrics, self.step), **step_metrics.advantage_metrics(seqs)}
        if self.cfg.rollout.mode == "overlap" and self.is_driver and self.step + 1 < self.cfg.run.steps:
            self.prefetch.start(self.rollout_setup, self.prompts, self.step + 1)  # generates during this update
        mine = shard_for_data_parallel(seqs, self.rt.dp_rank, self.rt.dp)
        if progress.tensors is None:
            with timer("logprobs"):
                tensors = logprobs.compute(mine, actor=self.actor, reference=self.reference, critic=self.critic,
                                           plan=self.plan, pack=self.pack, temperature=self.temperature)
            with timer("advantages"):
                progress.tensors = advantages.token_advantages(mine, tensors, self.cfg.algorithm, self.plan, self.dp_group)
        progress.totals = progress.totals or update.UpdateTotals()
        with timer("update"):
            for u, part in enumerate(update.schedule(len(mine), self.cfg.algorithm, self.cfg.run.seed, self.step)):
                if u < progress.updates_done:
                    continue  # done before a mid-step checkpoint
                if u:
                    self._stop_point(stop, progress)
                update.apply(part, mine, progress.tensors, actor=self.actor, critic=self.critic, setup=self.update_setup,
                             totals=progress.totals, skip_streak=self.skip_streak, step=self.step)
                progress.updates_done = u + 1
            metrics.update(update.summary(progress.totals, progress.tensors, self.update_setup))
            metrics.update(router_replay.step_metrics(self.actor.model) if self.spec.is_moe else {})  # MoE: routes, load
        self._server_memory("resume")
        with timer("rollout_wait"):  # overlap: step+1's batch must finish on the old weights
            self.prefetch.finish()
        with timer("sync"):
            self.sync_weights(self.step + 1)
        step_s = time.perf_counter() - start
        metrics.update(step_metrics.perf_metrics(timer, seqs, step_s))
        if self.is_driver:
            metrics.update(step_metrics.server_idle(self._generation_client(), busy_before, step_s))
        if offloaded:
            metrics["colocate/offloaded_gib"] = offloaded / 2**30
        return metrics, progress.batch

    def _stop_point(self, stop: StopRequest, progress: StepProgress | None) -> None:
        """A phase boundary: on a stop request, checkpoint (with the step's `progress`, unless just
        checkpointed: None) and end the run."""
        if not stop.agreed():
            return
        if progress is not None:
            self.save_checkpoint(progress)
        self.checkpoints.wait()  # complete before the run ends (async_save)
        if self.is_driver:
            if stop.interrupted:  # Ctrl-C: the one line a person needs
                self.logger.console.print(f"interrupted at step {self.step}; run the same command to resume")
            else:
                where = f"step {self.step}" if progress is None or progress.batch is None else f"step {self.step + 1} (in progress)"
                self.logger.console.print(f"stop requested (signal): checkpointed at {where}; exiting")
        raise PreemptedError(self.step)

    def _server_memory(self, action: str) -> None:
        if self.cfg.rollout.colocate:
            sync.server_memory(action, self.servers, self.is_driver)

    def _trainer_memory(self, action: str) -> int:
        """Colocated mode: the trainer's state to host memory and back (sync.trainer_memory); bytes moved."""
        return sync.trainer_memory(action, (self.actor, self.reference, self.critic)) if self.cfg.rollout.colocate else 0

    # ---- rollout (driver): generated now, prefetched (overlap) or taken from the producer (async) ----
    def rollout(self, batch: generate.RolloutBatch | None = None) -> generate.RolloutBatch:
        """The step's batch on every rank: `batch` (a resumed step's), the prefetched one, or a new one."""
        payload = [None]
        if self.is_driver:
            payload = [batch or self.prefetch.take() or (self.producer.take(self.step) if self.producer is not None else
                                                             generate.generate(self.rollout_setup, self.prompts, self.step))]
        collectives.broadcast_objects(payload, src=0)
        return payload[0]

    def _start_producer(self) -> None:
        """rollout.mode=async: start generating (a resumed run first regenerates the prompts it had
        drawn but not trained)."""
        if self.cfg.rollout.mode != "async" or not self.is_driver or self.producer is not None:
            return
        saved = self._async_state or {}
        self.producer = produce.Producer(self.rollout_setup, self.prompts, version=self.step, requeue=saved.get("requeue"),
                                         serial=saved.get("serial", 0), consumed_groups=saved.get("consumed"))
        self.producer.start()

    def _generation_client(self):
        """The client whose requests generate training batches (for the servers' idle time)."""
        return self.producer.client if self.producer is not None else self.client

    # ---- weight sync, evaluation, checkpoints ---------------------------------------------------
    def sync_weights(self, version: int) -> None:
        if self.producer is not None:  # async: nothing new is sent; without partial rollouts the servers drain
            self.producer.before_update()
        report = sync.push_weights(self.actor.module, self.spec, self.pusher, self.client, version, self.is_driver)
        if self.producer is not None:
            self.producer.after_update(version)
        if self.is_driver:
            self.last_sync = report

    def evaluate(self, step: int) -> dict:
        tools = self.rollout_setup.tools if self.is_driver else None
        return step_metrics.evaluate(self.cfg, self.client, self.tokenizer, self.run_dir, step, self.is_driver, tools)

    def save_checkpoint(self, progress: StepProgress | None = None) -> None:
        """Checkpoint the state after `self.step` steps, plus `progress` of the next step when it is stopped mid-way."""
        state = {"step": self.step}
        if self.is_driver:
            state["prompts"] = self.prompts.state()
            if self.producer is not None:  # async: the stream runs ahead; the drawn but untrained prompts are regenerated
                state["async"] = self.producer.state()
                state["prompts"] = state["async"]["prompts"]
            prefetched = self.prefetch.finish()  # rollout.mode=overlap: the next step's batch, already sampled
            if prefetched is not None:
                state["prefetched"] = prefetched.to_state()
            if progress is not None and progress.batch is not None:
                state["in_progress"] = progress.batch.to_state()
        rank_state = progress.rank_state() if progress is not None and progress.batch is not None else None
        path = self.checkpoints.save(self.step, self._workers(), state, rank_state=rank_state)
        if self.is_driver:
            self.logger.checkpoint_saved(self.step, path, background=self.cfg.checkpoint.async_save)

    def _workers(self) -> dict:
        return {k: w for k, w in (("actor", self.actor), ("critic", self.critic)) if w is not None}

    def _maybe_resume(self) -> None:
        found = self.checkpoints.load_latest(self._workers())
        if found is None:
            return
        self.step = found["step"]
        if found.get("rank_state") is not None:
            batch = generate.RolloutBatch.from_state(found["in_progress"]) if "in_progress" in found else None
            self._resumed = StepProgress.restore(batch, found["rank_state"])
        if self.is_driver:
            self.prompts.restore(found["prompts"])
            if "prefetched" in found:
                self.prefetch.restore(found["prefetched"])
            self._async_state = found.get("async")
            self.logger.truncate_after(self.step)
            self.logger.console.print(f"resumed from checkpoint at step {self.step}"
                                      + (" (mid-step)" if self._resumed is not None else ""))

    def close(self) -> None:
        if self.producer is not None:
            self.producer.stop()
        self.checkpoints.close()  # completes an asynchronous save in flight
        self.prefetch.close()
        if self.is_driver:
            self.pusher.close()
            if self.servers is not None:
                self.servers.stop()
            if self.logger is not None:
                self.logger.close()
            if self.rollout_setup is not None:
                self.rollout_setup.close()
