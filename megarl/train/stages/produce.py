"""Produce stage (rollout.mode=async, driver rank): a producer keeps every rollout server busy and feeds
a buffer of finished, graded prompt groups; the trainer takes a batch from it when enough are ready.

The producer runs in its own thread with its own event loop and HTTP connection. It admits a new prompt
group while the groups not yet trained (in flight plus buffered) leave room under the staleness bound:

    trained + buffered + in_flight < (server_version + max_staleness + 1) * prompts_per_step

(AReaL's rule), so the servers never run more than `max_staleness` steps ahead of the trainer. The bound
itself is enforced when a batch is taken: a group with any token from a policy more than
`rollout.max_staleness` optimizer steps older than the one being trained is dropped and its prompt
generated again (`rollout/dropped_stale`), so no trained token ever exceeds the bound, whatever the
servers' timing.

At a weight update (`before_update` / `after_update`, around the push) the producer sends nothing new.
With `rollout.partial` the push's `/pause_generation` (mode=abort) cuts the in-flight requests short;
every cut sample keeps its tokens, behaviour log-probs and per-token policy versions, and after the
update it is continued with the new weights from its prefix (prompt + tokens so far, with the remaining
token budget): the same requests on SGLang and on the built-in server. Without it the update waits
until the in-flight requests have finished (the servers drain), so every sample is one policy's.

Seeds: group `serial` (its admission order) samples with the seed the synchronous rollout gives prompt
`serial % prompts_per_step` of step `serial // prompts_per_step`, so with `max_staleness: 0` (and no
dynamic-sampling refills) the async run takes exactly the synchronous run's batches.

Checkpoints hold the prompt stream's position and the keys of the prompts drawn but not yet trained
(in flight, buffered or waiting to be regenerated). Their generated tokens are not saved: on resume those
prompts are generated again, first, with the resumed weights. So nothing is trained twice or lost; a
resumed async run equals the uninterrupted one in which prompts it trains, not in their samples.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from megarl.data.prompt_stream import PromptStream
from megarl.rollout import multi_turn
from megarl.rollout.client import RolloutClient, Sample
from megarl.runtime.seeds import fold_seed
from megarl.train.stages import reward
from megarl.train.stages.generate import (Group, RolloutBatch, RolloutSetup, build_batch, encode_prompt, rollout_seed,
                                          min_version, sampling_params, token_versions)


@dataclasses.dataclass
class Produced:
    """A finished group in the buffer."""

    serial: int
    key: tuple[int, int]  # the prompt's (epoch, position) in the stream
    group: Group
    truncated_prompt: bool
    min_version: int | None  # oldest policy version of any of its tokens

    def staleness(self, step: int) -> int:
        return 0 if self.min_version is None else step - self.min_version


@dataclasses.dataclass
class ProducerStats:
    """Counters since the last batch was taken (reset by `take`)."""

    dropped_stale: int = 0  # groups dropped for exceeding the staleness bound (their prompts regenerated)
    filtered: int = 0  # groups with uniform rewards (dynamic sampling)
    continued: int = 0  # samples continued after an abort
    discarded_tokens: int = 0  # tokens of aborted samples generated again from scratch (rollout.partial=false)


class Producer:
    """Asynchronous rollout: groups generate continuously; `take(step)` returns a batch within the bound."""

    def __init__(self, setup: RolloutSetup, prompts: PromptStream, *, version: int, requeue: list | None = None,
                 serial: int = 0, consumed_groups: int | None = None):
        cfg = setup.cfg
        self.setup, self.prompts = setup, prompts
        self.per_step, self.n = cfg.data.prompts_per_step, cfg.rollout.n
        self.max_staleness, self.partial = cfg.rollout.max_staleness, cfg.rollout.partial
        self.dynamic_sampling = cfg.algorithm.dynamic_sampling
        self.max_filtered = cfg.algorithm.dynamic_sampling_max_rounds * self.per_step  # uniform groups per batch, at most
        # A client of its own: the producer's event loop and connection live in its thread.
        self.client = RolloutClient(setup.client.urls, max_concurrency=setup.client.max_concurrency,
                                    request_timeout_s=setup.client.request_timeout_s, context_length=setup.client.context_length,
                                    return_routed_experts=setup.client.return_routed_experts)
        self.cond = threading.Condition()
        self.version = version  # the servers' weights
        self.serial = serial  # groups admitted so far
        self.consumed = version * self.per_step if consumed_groups is None else consumed_groups
        self.ready: list[Produced] = []
        self.in_flight: dict[int, tuple[int, int]] = {}  # serial -> prompt key
        self.requeue = collections.deque(tuple(k) for k in (requeue or ()))  # prompt keys to generate again first
        self.requests = 0  # HTTP requests in flight
        self.hold = False  # a weight update is under way: send nothing new
        self.stats = ProducerStats()
        self.error: BaseException | None = None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._grading = ThreadPoolExecutor(1, thread_name_prefix="megarl-grade")
        self._thread = threading.Thread(target=self._run, name="megarl-producer", daemon=True)

    # ---- trainer side ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def take(self, step: int, timeout_s: float | None = None) -> RolloutBatch:
        """The batch of policy step `step`: prompts_per_step groups, none staler than the bound (the first
        finished first, ordered by admission)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"the rollout producer failed: {type(self.error).__name__}: {self.error}") from self.error
                for item in [p for p in self.ready if p.staleness(step) > self.max_staleness]:
                    self.ready.remove(item)
                    self.requeue.append(item.key)
                    self.stats.dropped_stale += 1
                if len(self.ready) >= self.per_step:
                    break
                if self.stats.filtered > self.max_filtered:
                    raise RuntimeError(
                        f"dynamic sampling filtered {self.stats.filtered} groups with identical rewards while filling the "
                        f"batch of step {step} ({len(self.ready)} of {self.per_step} groups kept); raise "
                        "algorithm.dynamic_sampling_max_rounds, use harder/easier data, or turn dynamic_sampling off")
                self._poke()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"no batch for step {step} within {timeout_s} s ({len(self.ready)} groups ready)")
                self.cond.wait(timeout=1.0)
            chosen, self.ready = self.ready[:self.per_step], self.ready[self.per_step:]
            self.consumed += len(chosen)
            stats, self.stats = self.stats, ProducerStats()
            buffered, in_flight = len(self.ready), len(self.in_flight)
        self._poke()  # room for more
        chosen.sort(key=lambda p: p.serial)
        groups = [p.group for p in chosen]
        batch = build_batch(self.setup, groups, groups, filtered=stats.filtered,
                            rounds=1, truncated_prompts=sum(p.truncated_prompt for p in chosen), epoch=self.prompts.epoch)
        batch.metrics.update(staleness_metrics(batch, step, self.max_staleness))
        batch.metrics.update({
            "rollout/dropped_stale": stats.dropped_stale, "rollout/continued_samples": stats.continued,
            "rollout/discarded_tokens": stats.discarded_tokens, "rollout/buffered_groups": buffered,
            "rollout/in_flight_groups": in_flight,
        })
        return batch

    def before_update(self) -> None:
        """Send nothing new until `after_update`; without partial rollouts, wait for the in-flight
        requests to finish on the current weights."""
        with self.cond:
            self.hold = True
            while not self.partial and self.requests and self.error is None:
                self.cond.wait(timeout=1.0)

    def after_update(self, version: int) -> None:
        with self.cond:
            self.hold, self.version = False, version
            self.cond.notify_all()
        self._poke()

    def state(self) -> dict:
        """Checkpoint state: where the prompt stream is, the prompts drawn but not trained, the counters."""
        with self.cond:
            pending = list(self.requeue) + [p.key for p in self.ready] + list(self.in_flight.values())
            return {"prompts": self.prompts.state(), "requeue": [list(k) for k in sorted(pending)],
                    "serial": self.serial, "consumed": self.consumed}

    def stop(self) -> None:
        self.stopping = True
        with self.cond:
            self.hold = False
            self.cond.notify_all()
        self._poke()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._grading.shutdown(wait=False, cancel_futures=True)

    # ---- producer thread --------------------------------------------------------------------
    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _room(self) -> int:
        limit = (self.version + self.max_staleness + 1) * self.per_step
        return limit - (self.consumed + len(self.ready) + len(self.in_flight))

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # noqa: BLE001 - reported to the trainer by take()
            with self.cond:
                self.error = err
                self.cond.notify_all()

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        tasks: set[asyncio.Task] = set()
        async with self.client.connect() as conn:
            while not self.stopping:
                with self.cond:
                    admit = 0 if self.hold else self._room()
                    admitted = []
                    for _ in range(max(0, admit)):
                        key = self.requeue.popleft() if self.requeue else None
                        if key is None:
                            key, row = self.prompts.take_keyed()
                        else:
                            row = self.prompts.row_at(key)
                        self.in_flight[self.serial] = key
                        admitted.append((self.serial, key, row))
                        self.serial += 1
                for serial, key, row in admitted:
                    task = asyncio.create_task(self._group(conn, serial, key, row))
                    tasks.add(task)
                    task.add_done_callback(self._finished)
                    task.add_done_callback(tasks.discard)
                await self._wake.wait()
                self._wake.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            with self.cond:
                self.error = task.exception()
                self.cond.notify_all()

    async def _gate(self) -> None:
        """Wait while a weight update is under way, then count a request in flight."""
        while True:
            with self.cond:
                if not self.hold or self.stopping:
                    self.requests += 1
                    return
            await asyncio.sleep(0.01)

    def _done_request(self) -> None:
        with self.cond:
            self.requests -= 1
            self.cond.notify_all()

    async def _send(self, conn, index: int, prompt: list[int], sampling, n: int) -> list[Sample]:
        await self._gate()
        try:
            return await self.client.agenerate_prompt(conn, index, prompt, sampling, n, keep_aborted=True, check_version=False)
        finally:
            self._done_request()

    async def _group(self, conn, serial: int, key: tuple[int, int], row: Any) -> None:
        setup, cfg = self.setup, self.setup.cfg
        ids, cut = encode_prompt(setup, row.problem)
        step, index = divmod(serial, self.per_step)
        seed = rollout_seed(cfg.run.seed, step, 1)
        first_sampling = sampling_params(setup, seed)
        if setup.tools is not None:
            first_sampling = multi_turn.with_tool_stop(first_sampling, setup.tools)
        first = await self._send(conn, index, ids, first_sampling, self.n)
        samples = await asyncio.gather(*(self._complete(conn, ids, s, fold_seed(seed + index * 4096 + j, 51)) for j, s in enumerate(first)))
        grades = await asyncio.get_running_loop().run_in_executor(
            self._grading, reward.grade, samples, [row.answer] * len(samples), setup.reward, cfg.data.template)
        group = Group(row, ids, list(samples), grades)
        oldest = min((v for s in samples if (v := min_version(s)) is not None), default=None)
        with self.cond:
            del self.in_flight[serial]
            if self.dynamic_sampling and group.uniform:
                self.stats.filtered += 1
            else:
                self.ready.append(Produced(serial, key, group, cut, oldest))
            self.cond.notify_all()
        self._wake.set()

    async def _complete(self, conn, prompt: list[int], sample: Sample, seed: int) -> Sample:
        """Continue a sample cut short by a weight update until it finishes (partial rollouts), or
        generate it again from scratch (rollout.partial=false). With the interpreter, every turn of it
        (megarl.rollout.multi_turn.complete: an aborted turn is continued the same way)."""
        if self.setup.tools is not None:
            async def send(prompt_ids: list[int], sampling) -> Sample:
                return (await self._send(conn, 0, prompt_ids, sampling, 1))[0]
            tool_sampling = multi_turn.with_tool_stop(sampling_params(self.setup, seed), self.setup.tools)
            done = await multi_turn.complete(send, prompt, sample, self.setup.tools, max_new_tokens=self.setup.cfg.rollout.max_new_tokens,
                                             sampling=multi_turn.continuation_sampling(tool_sampling, seed), partial=self.partial,
                                             stopping=lambda: self.stopping)
            with self.cond:
                self.stats.continued += done.continued
                self.stats.discarded_tokens += done.discarded_tokens
            return done
        segments = 0
        while sample.finish_reason == "abort" and not self.stopping:
            segments += 1
            prefix = list(sample.output_ids) if self.partial else []
            with self.cond:
                if self.partial:
                    self.stats.continued += 1
                else:
                    self.stats.discarded_tokens += len(sample.output_ids)
            budget = self.setup.cfg.rollout.max_new_tokens - len(prefix)
            sampling = sampling_params(self.setup, fold_seed(seed * 131 + segments, 51), max_new_tokens=max(1, budget))
            (more,) = await self._send(conn, 0, prompt + prefix, sampling, 1)
            sample = (join_segments(sample, more, self.setup.tokenizer) if self.partial else
                      dataclasses.replace(more, prompt_index=sample.prompt_index, sample_index=sample.sample_index))
        return sample


def join_segments(head: Sample, tail: Sample, tokenizer) -> Sample:
    """One sample from a prefix generated before a weight update and its continuation after it: tokens,
    behaviour log-probs and per-token policy versions concatenated; the text decoded from all tokens."""
    versions = (token_versions(head) or [-1] * len(head.output_ids)) + (token_versions(tail) or [-1] * len(tail.output_ids))
    logprobs = None
    if head.logprobs is not None and tail.logprobs is not None:
        logprobs = list(head.logprobs) + list(tail.logprobs)
    output_ids = list(head.output_ids) + list(tail.output_ids)
    return dataclasses.replace(
        tail, prompt_index=head.prompt_index, sample_index=head.sample_index, output_ids=output_ids,
        text=tokenizer.decode(output_ids, skip_special_tokens=True), logprobs=logprobs,
        prompt_tokens=head.prompt_tokens, completion_tokens=len(output_ids), token_versions=versions,
    )


def staleness_metrics(batch: RolloutBatch, step: int, bound: int) -> dict:
    """Per-step staleness of the trained tokens: mean and max of (step - version), the tokens each
    policy lag produced, and the fraction of samples generated in more than one segment."""
    lags = collections.Counter(step - v for s in batch.seqs for v in (s.versions or ()))  # lag -> tokens
    tokens = sum(lags.values())
    partial = sum(len(set(s.versions or ())) > 1 for s in batch.seqs)
    out = {
        "rollout/staleness_mean": sum(lag * n for lag, n in lags.items()) / tokens if tokens else 0.0,
        "rollout/staleness_max": max(lags, default=0),
        "rollout/partial_frac": partial / max(1, len(batch.seqs)),
    }
    for lag in range(bound + 1):
        out[f"rollout/tokens_lag{lag}"] = lags[lag]
    return out
