"""A discrete-event model of RL step schedules: sync, overlap and async (partial rollouts, staleness bound K).

Why: to see what asynchronous RL would buy on a GPU cluster before anyone has one. The model
replays many RL steps of one layout (rollout servers, a trainer, a weight sync) with sampled response
lengths and reports steps per hour, server idle time, staleness and dropped samples for each schedule:

- sync:    generate the whole batch, update, sync weights; each step waits for its longest sample.
- overlap: megarl's `rollout.overlap` (one step off-policy): batch t+1 generates while step t
           updates; then both wait for each other and the weights sync. Step = max(rollout, update) + sync.
- async:   a producer keeps every server busy; finished groups go to a buffer; the trainer takes
           P groups when they are ready. A weight sync pauses the servers for `sync_s`; with
           `partial=True` in-flight samples keep their tokens and continue with the new weights
           (paused in place, or resubmitted with their prefix, which costs a prefill of it), with
           `partial=False` each server stops admitting and drains its in-flight samples on the old
           weights before it loads the new ones. Staleness bound K: a new group is submitted only
           while fewer than (v + K + 1) * P groups have been submitted (v = the servers' weight
           version; AReaL's admission rule, Fu et al. 2025, arXiv 2505.24298, section 5.1), and
           a finished group whose oldest token is more than K versions behind the trainer is dropped
           when the trainer would take it (counted; its replacement is then admitted).

Servers: a decode step of b running sequences whose contexts hold C tokens in all costs
`step_s + per_seq_s * b + per_ctx_token_s * C` (weights read once per step, per-sequence compute,
KV-cache reads); admitting a sequence costs `prefill_per_token_s` per prompt (or resumed prefix)
token. `batching="continuous"` (SGLang) admits waiting sequences whenever a slot frees, up to
`max_running`; `"static"` (megarl's built-in CPU server) runs up to `max_running` sequences as one
batch until its longest finishes, finished rows still computed (the built-in engine feeds them pad).
The trainer's update of a batch costs `update_fixed_s + update_per_token_s * tokens` (prompt +
response tokens, all log-prob passes and the optimizer included).

What it leaves out (stated so the figures are read as a model): lengths are independent of the prompt
and of training (no correlation within a group, no length drift over training); no network or
scheduling jitter; a paused server resumes exactly where it stopped; the trainer's cost is linear in
tokens. Everything is deterministic given the seed.

    python tools/async_model.py                       # the GPU prediction (SimpleRL-Zoo-like lengths)
    python tools/async_model.py --train-gpus 8 --rollout-gpus 24 --json /tmp/async_model.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import heapq
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

MODES = ("sync", "overlap", "async")
Mode = Literal["sync", "overlap", "async"]


# ---- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeCost:
    """Seconds of one server's decode step and prefill (see the module docstring)."""

    step_s: float
    per_seq_s: float = 0.0
    per_ctx_token_s: float = 0.0
    prefill_per_token_s: float = 0.0

    def steps_s(self, m: int, b: int, ctx: float) -> float:
        """Seconds of m decode steps of b sequences whose contexts hold `ctx` tokens at the first
        step (each step adds b tokens of context)."""
        if m <= 0:
            return 0.0
        return m * (self.step_s + self.per_seq_s * b + self.per_ctx_token_s * ctx) + self.per_ctx_token_s * b * m * (m - 1) / 2

    def max_steps_within(self, seconds: float, b: int, ctx: float) -> int:
        """The most whole decode steps that fit in `seconds` (the inverse of `steps_s`)."""
        if seconds <= 0:
            return 0
        a = self.per_ctx_token_s * b / 2
        lin = self.step_s + self.per_seq_s * b + self.per_ctx_token_s * ctx - a
        if a > 0:
            m = int((-lin + math.sqrt(lin * lin + 4 * a * seconds)) / (2 * a))
        else:
            m = int(seconds / lin) if lin > 0 else 1 << 40
        while m > 0 and self.steps_s(m, b, ctx) > seconds:
            m -= 1
        while self.steps_s(m + 1, b, ctx) <= seconds:
            m += 1
        return m


@dataclass(frozen=True)
class Cluster:
    """The rollout servers and the trainer of one layout."""

    servers: int
    decode: DecodeCost
    update_per_token_s: float
    update_fixed_s: float = 0.0
    sync_s: float = 0.0
    max_running: int = 256
    batching: Literal["continuous", "static"] = "continuous"
    # How a partial sample continues after a sync: "in_place" (SGLang's pause_generation(in_place):
    # the server keeps it and its KV cache) or "reprefill" (aborted; the client resubmits prompt + tokens
    # so far as a new request, queued behind the others, and the server prefills that prefix again).
    resume: Literal["in_place", "reprefill"] = "in_place"

    def __post_init__(self) -> None:
        if self.servers < 1 or self.max_running < 1:
            raise ValueError(f"servers={self.servers} and max_running={self.max_running} must be >= 1")
        if self.batching not in ("continuous", "static"):
            raise ValueError(f"batching={self.batching!r} must be 'continuous' or 'static'")
        if self.resume not in ("in_place", "reprefill"):
            raise ValueError(f"resume={self.resume!r} must be 'in_place' or 'reprefill'")


@dataclass(frozen=True)
class Workload:
    """One RL step's batch: `prompts` groups of `n` samples; `lengths(rng)` draws one response length."""

    prompts: int
    n: int
    prompt_tokens: int
    lengths: Callable[[random.Random], int]


@dataclass(frozen=True)
class Schedule:
    mode: Mode
    partial: bool = True
    max_staleness: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(MODES)}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness={self.max_staleness} must be >= 0")


# ---- results ---------------------------------------------------------------------------------
@dataclass
class StepRecord:
    step: int
    end_s: float  # when this step's weights were on the servers
    seconds: float
    tokens: int  # prompt + response tokens trained
    response_tokens: int
    staleness: list[int]  # per trained group: trainer version - oldest token's version
    token_staleness: float  # mean over the trained response tokens of (trainer version - the version that made it)
    samples: int  # trained samples
    partial: int  # trained samples whose tokens came from more than one weight version
    dropped: int  # groups dropped as too stale before this step's batch was taken


@dataclass
class SimResult:
    schedule: Schedule
    steps: list[StepRecord]
    server_busy_s: float
    servers: int
    generated_tokens: int  # every response token decoded, dropped ones included
    warmup: int

    @property
    def measured(self) -> list[StepRecord]:
        return self.steps[self.warmup:] if len(self.steps) > self.warmup else self.steps

    @property
    def step_s(self) -> float:
        rows = self.measured
        return (rows[-1].end_s - (rows[0].end_s - rows[0].seconds)) / len(rows)

    @property
    def steps_per_hour(self) -> float:
        return 3600.0 / self.step_s

    @property
    def tokens_per_s(self) -> float:
        rows = self.measured
        return sum(r.tokens for r in rows) / (rows[-1].end_s - (rows[0].end_s - rows[0].seconds))

    @property
    def server_idle_frac(self) -> float:
        total = self.steps[-1].end_s * self.servers
        return max(0.0, 1.0 - self.server_busy_s / total) if total > 0 else 0.0

    @property
    def staleness_max(self) -> int:
        return max((s for r in self.steps for s in r.staleness), default=0)

    @property
    def staleness_mean(self) -> float:
        """Per group, of its oldest token."""
        values = [s for r in self.measured for s in r.staleness]
        return statistics.fmean(values) if values else 0.0

    @property
    def token_staleness_mean(self) -> float:
        """Token-weighted, as megarl's `rollout/staleness_mean`."""
        rows = self.measured
        return sum(r.token_staleness * r.response_tokens for r in rows) / max(1, sum(r.response_tokens for r in rows))

    @property
    def partial_frac(self) -> float:
        trained = sum(r.samples for r in self.measured)
        return sum(r.partial for r in self.measured) / trained if trained else 0.0

    @property
    def dropped(self) -> int:
        return sum(r.dropped for r in self.steps)

    def summary(self) -> dict:
        return {
            "mode": self.schedule.mode, "partial": self.schedule.partial, "max_staleness": self.schedule.max_staleness,
            "step_s": self.step_s, "steps_per_hour": self.steps_per_hour, "tokens_per_s": self.tokens_per_s,
            "server_idle_frac": self.server_idle_frac, "staleness_mean": self.staleness_mean,
            "token_staleness_mean": self.token_staleness_mean,
            "staleness_max": self.staleness_max, "partial_frac": self.partial_frac, "dropped_groups": self.dropped,
            "steps": len(self.steps), "warmup_steps": self.warmup,
        }


# ---- the simulation --------------------------------------------------------------------------
@dataclass
class _Seq:
    group: int
    prompt_tokens: int
    length: int
    generated: int = 0  # tokens decoded before the current admission
    admit_step: int = 0  # the server's decode-step counter when admitted
    first_version: int | None = None
    versions: int = 0  # distinct weight versions that produced its tokens
    last_version: int | None = None
    segments: list = field(default_factory=list)  # [(weight version, tokens)] in order
    marked: int = 0  # tokens already in `segments`

    def mark(self, produced: int) -> None:
        """Attribute the tokens decoded since the last mark (`produced` in all) to the current version."""
        if produced > self.marked:
            self.segments.append((self.last_version, produced - self.marked))
            self.marked = produced


@dataclass
class _Group:
    index: int
    seqs: list[_Seq]
    done: int = 0
    finished_s: float = math.inf
    first_version: int = 0  # the oldest weight version among its tokens (set when it finishes)


class _Server:
    """One rollout server with its own clock; the simulation advances it only when it matters."""

    def __init__(self, sim: "_Simulation"):
        self.sim, self.cost = sim, sim.cluster.decode
        self.clock = 0.0
        self.steps = 0  # decode steps since start (a running sequence's progress is steps - admit_step)
        self.running: list[tuple[int, int, _Seq]] = []  # heap of (finish step, tiebreak, seq)
        self.ctx_base = 0  # sum over running of (prompt + generated - admit_step): context = ctx_base + b * steps
        self.waiting: collections.deque[_Seq] = collections.deque()
        self.paused = False
        self.draining = False  # partial=False: no admissions until the sync
        self.busy_s = 0.0
        self._tiebreak = 0

    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    def _ctx(self) -> int:
        return self.ctx_base + len(self.running) * self.steps

    def next_event_s(self) -> float:
        if self.paused or not self.running:
            return math.inf
        m = self.running[0][0] - self.steps
        return self.clock + self.cost.steps_s(m, len(self.running), self._ctx())

    def submit(self, seqs: list[_Seq], now: float) -> None:
        """Queue sequences that arrive together at `now` (the caller has advanced this server to
        `now`); continuous batching admits them at once into free slots, a static batch waits for
        the running one to end."""
        self.waiting.extend(seqs)
        if not self.running:
            self.clock = max(self.clock, now)
        self._admit()

    def _admit(self) -> None:
        if self.paused or self.draining or not self.waiting:
            return
        static = self.sim.cluster.batching == "static"
        if static and self.running:
            return
        admitted = []
        while self.waiting and len(self.running) + len(admitted) < self.sim.cluster.max_running:
            admitted.append(self.waiting.popleft())
        if not admitted:
            return
        prefix = sum(s.prompt_tokens + s.generated for s in admitted)
        prefill = self.cost.prefill_per_token_s * prefix
        self.clock += prefill
        self.busy_s += prefill
        finish_static = self.steps + max(s.length - s.generated for s in admitted)
        for seq in admitted:
            seq.admit_step = self.steps
            self.ctx_base += seq.prompt_tokens + seq.generated - self.steps
            finish = finish_static if static else self.steps + seq.length - seq.generated
            self._tiebreak += 1
            heapq.heappush(self.running, (finish, self._tiebreak, seq))
            self._mark_version(seq)

    def _mark_version(self, seq: _Seq) -> None:
        version = self.sim.server_version
        if seq.first_version is None:
            seq.first_version = version
        if seq.last_version != version:
            seq.versions += 1
            seq.last_version = version

    def _decode(self, m: int) -> None:
        seconds = self.cost.steps_s(m, len(self.running), self._ctx())
        self.clock += seconds
        self.busy_s += seconds
        self.steps += m
        self.sim.generated += m * len(self.running)  # static rows past their end are pad: corrected at finish

    def _finish_due(self) -> None:
        while self.running and self.running[0][0] <= self.steps:
            _, _, seq = heapq.heappop(self.running)
            self.ctx_base -= seq.prompt_tokens + seq.generated - seq.admit_step
            self.sim.generated -= (self.steps - seq.admit_step) - (seq.length - seq.generated)  # pad rows (static)
            seq.generated = seq.length
            seq.mark(seq.length)
            self.sim.seq_done(seq, self.clock)

    def run_until(self, t: float) -> None:
        """Advance to time t: decode, finish and admit sequences whose events come by then."""
        while self.running and not self.paused:
            m = self.running[0][0] - self.steps
            if self.clock + self.cost.steps_s(m, len(self.running), self._ctx()) <= t:
                self._decode(m)
                self._finish_due()
                self._admit()
                continue
            self._decode(self.cost.max_steps_within(t - self.clock, len(self.running), self._ctx()))
            break
        if self.paused or not self.running:
            self.clock = max(self.clock, t)
        # else the clock stays at the last whole decode step (<= t): the step in progress at t is
        # not lost when something joins the batch at t.

    def pause(self, now: float) -> None:
        """Stop at time `now` (partial rollouts): running samples keep what they decoded."""
        self.run_until(now)
        self.paused = True
        if self.sim.cluster.resume == "reprefill" or self.sim.cluster.batching == "static":
            # Aborted and resubmitted with their prefix (the built-in server: a batch cannot be
            # resumed, so it is cut); rows a static batch had already finished are complete.
            running, self.running, self.ctx_base = sorted(self.running, key=lambda item: item[1]), [], 0
            resubmit = []
            for _, _, seq in running:
                decoded = self.steps - seq.admit_step
                real = min(seq.length - seq.generated, decoded)
                self.sim.generated -= decoded - real  # pad rows of a static batch
                seq.generated += real
                seq.mark(seq.generated)
                if seq.generated >= seq.length:
                    self.sim.seq_done(seq, self.clock)
                else:
                    resubmit.append(seq)
            if self.sim.cluster.resume == "reprefill":  # new requests from the client: behind what is queued
                self.waiting.extend(resubmit)
            else:
                self.waiting.extendleft(reversed(resubmit))
        else:  # paused in place: what each has decoded so far came from the current weights
            for _, _, seq in self.running:
                seq.mark(seq.generated + self.steps - seq.admit_step)

    def resume(self, now: float) -> None:
        self.paused = self.draining = False
        self.clock = max(self.clock, now)
        for _, _, seq in self.running:
            self._mark_version(seq)
        self._admit()


class _Simulation:
    def __init__(self, cluster: Cluster, workload: Workload, schedule: Schedule, steps: int, seed: int):
        self.cluster, self.workload, self.schedule, self.total_steps = cluster, workload, schedule, steps
        self.rng = random.Random(seed)
        self.servers = [_Server(self) for _ in range(cluster.servers)]
        self.server_version = 0
        self.trainer_version = 0
        self.generated = 0
        self.groups: list[_Group] = []
        self.buffer: list[_Group] = []  # finished groups in completion order (async)
        self.submitted = self.dropped_total = 0
        self.records: list[StepRecord] = []
        self.now = 0.0
        # trainer state: ("wait", None) | ("update", end_s) | ("drain", None) | ("sync", end_s)
        self.trainer_state, self.trainer_until = "wait", math.inf
        self.batch: list[_Group] = []
        self.step_dropped = 0
        self.last_end = 0.0

    # -- producing --
    def new_groups(self, count: int) -> list[_Group]:
        """Submit `count` new groups at once, each sample to the least-loaded server."""
        w = self.workload
        for server in self.servers:
            server.run_until(self.now)
        per_server: dict[int, list[_Seq]] = collections.defaultdict(list)
        load = [s.load() for s in self.servers]
        groups = []
        for _ in range(count):
            group = _Group(len(self.groups), [])
            group.seqs = [_Seq(group.index, w.prompt_tokens, max(1, int(w.lengths(self.rng)))) for _ in range(w.n)]
            self.groups.append(group)
            groups.append(group)
            for seq in group.seqs:
                index = min(range(len(self.servers)), key=lambda i: (load[i], i))
                load[index] += 1
                per_server[index].append(seq)
        self.submitted += count
        for index, seqs in per_server.items():
            self.servers[index].submit(seqs, self.now)
        return groups

    def produce(self) -> None:
        """async: submit groups while the staleness bound admits them (AReaL's rule)."""
        if self.schedule.mode != "async" or self.trainer_version >= self.total_steps:
            return
        limit = (self.server_version + self.schedule.max_staleness + 1) * self.workload.prompts
        if self.submitted - self.dropped_total < limit:
            self.new_groups(limit - (self.submitted - self.dropped_total))

    def seq_done(self, seq: _Seq, when: float) -> None:
        group = self.groups[seq.group]
        group.done += 1
        if group.done == len(group.seqs):
            group.finished_s = when
            group.first_version = min(s.first_version for s in group.seqs)
            if self.schedule.mode == "async":
                if self.group_staleness(group) > self.schedule.max_staleness:
                    self.step_dropped += 1
                    self.dropped_total += 1
                else:
                    self.buffer.append(group)

    def drop_stale(self) -> None:
        """async, at each new trainer version: drop finished groups now older than the bound (their
        replacements are admitted by `produce`; a group that finishes already too old is dropped in
        `seq_done`)."""
        bound = self.schedule.max_staleness
        if any(self.group_staleness(g) > bound for g in self.buffer):
            kept = [g for g in self.buffer if self.group_staleness(g) <= bound]
            dropped = len(self.buffer) - len(kept)
            self.buffer = kept
            self.step_dropped += dropped
            self.dropped_total += dropped

    # -- training --
    def group_staleness(self, group: _Group) -> int:
        return self.trainer_version - group.first_version

    def try_take_batch(self) -> bool:
        p = self.workload.prompts
        if self.schedule.mode != "async":
            return all(g.done == len(g.seqs) for g in self.batch)
        if len(self.buffer) < p:
            return False
        self.batch, self.buffer = self.buffer[:p], self.buffer[p:]
        return True

    def start_update(self) -> None:
        tokens = sum(s.prompt_tokens + s.length for g in self.batch for s in g.seqs)
        self.trainer_state = "update"
        self.trainer_until = self.now + self.cluster.update_fixed_s + self.cluster.update_per_token_s * tokens
        if self.schedule.mode == "overlap":  # the run goes on past the simulated steps: always a next batch
            self.next_batch = self.new_groups(self.workload.prompts)

    def start_sync(self) -> None:
        mode = self.schedule.mode
        if mode == "async" and not self.schedule.partial:
            for server in self.servers:
                server.run_until(self.now)
                server.draining = True
            self.trainer_state, self.trainer_until = "drain", math.inf
            self.check_drained()
            return
        for server in self.servers:
            server.pause(self.now)
        self.trainer_state, self.trainer_until = "sync", self.now + self.cluster.sync_s

    def check_drained(self) -> None:
        if self.trainer_state == "drain" and all(not s.running for s in self.servers):
            for server in self.servers:
                server.run_until(self.now)
                server.paused = True
            self.trainer_state, self.trainer_until = "sync", self.now + self.cluster.sync_s

    def finish_sync(self) -> None:
        batch = self.batch
        self.records.append(StepRecord(
            step=self.trainer_version, end_s=self.now, seconds=self.now - self.last_end,
            tokens=sum(s.prompt_tokens + s.length for g in batch for s in g.seqs),
            response_tokens=sum(s.length for g in batch for s in g.seqs),
            staleness=[self.group_staleness(g) for g in batch],
            token_staleness=sum((self.trainer_version - v) * t for g in batch for s in g.seqs for v, t in s.segments)
            / max(1, sum(s.length for g in batch for s in g.seqs)),
            samples=sum(len(g.seqs) for g in batch),
            partial=sum(s.versions > 1 for g in batch for s in g.seqs), dropped=self.step_dropped,
        ))
        self.last_end, self.step_dropped = self.now, 0
        self.trainer_version += 1
        self.server_version += 1
        if self.schedule.mode == "async":
            self.drop_stale()
        for server in self.servers:
            server.resume(self.now)
        self.trainer_state, self.trainer_until = "wait", math.inf
        if self.trainer_version >= self.total_steps:
            return
        if self.schedule.mode == "sync":
            self.batch = self.new_groups(self.workload.prompts)
        elif self.schedule.mode == "overlap":
            self.batch = self.next_batch
        else:
            self.produce()

    def trainer_event(self) -> None:
        if self.trainer_state == "update":
            if self.schedule.mode == "overlap" and not all(g.done == len(g.seqs) for g in getattr(self, "next_batch", [])):
                self.trainer_state, self.trainer_until = "wait_rollout", math.inf
                return
            self.start_sync()
        elif self.trainer_state == "sync":
            self.finish_sync()

    def poll_trainer(self) -> None:
        """Start what the trainer is waiting for, if it has become possible."""
        self.produce()
        if self.trainer_state == "wait" and self.try_take_batch():
            self.start_update()
        elif self.trainer_state == "wait_rollout" and all(g.done == len(g.seqs) for g in self.next_batch):
            self.start_sync()
        elif self.trainer_state == "drain":
            self.check_drained()

    def run(self, warmup: int) -> SimResult:
        if self.schedule.mode == "async":
            self.produce()
        else:
            self.batch = self.new_groups(self.workload.prompts)
        self.poll_trainer()
        while self.trainer_version < self.total_steps:
            server = min(self.servers, key=lambda s: s.next_event_s())
            t_server = server.next_event_s()
            if self.trainer_until <= t_server:
                if math.isinf(self.trainer_until):
                    raise RuntimeError(f"deadlock: the trainer waits ({self.trainer_state}) and no server has work")
                self.now = self.trainer_until
                self.trainer_event()
            else:
                self.now = max(self.now, t_server)
                server.run_until(t_server)
            self.poll_trainer()
        for server in self.servers:
            server.run_until(self.now)
        return SimResult(self.schedule, self.records, sum(s.busy_s for s in self.servers), len(self.servers),
                         self.generated, min(warmup, max(0, self.total_steps - 1)))


def simulate(cluster: Cluster, workload: Workload, schedule: Schedule, steps: int = 20, seed: int = 0,
             warmup: int = 2) -> SimResult:
    """Replay `steps` RL steps of `schedule`; the first `warmup` are left out of the means."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    return _Simulation(cluster, workload, schedule, steps, seed).run(warmup)


# ---- length distributions --------------------------------------------------------------------
def empirical_lengths(samples: Sequence[int]) -> Callable[[random.Random], int]:
    """Draw from measured response lengths (e.g. a run's samples) with replacement."""
    values = sorted(int(x) for x in samples)
    if not values:
        raise ValueError("empirical_lengths needs at least one length")
    return lambda rng: values[rng.randrange(len(values))]


@dataclass(frozen=True)
class ZeroRLLengths:
    """An assumed zero-RL response-length distribution: a `truncated` share runs to `max_tokens`
    (repetition until the length limit), the rest is log-normal with `median` and `sigma`, capped.

    Default (an assumption, not a measurement): SimpleRL-Zoo (Zeng et al. 2025, arXiv 2503.18892),
    Qwen2.5-7B with an 8,192-token limit (configs/base/simplerl_zoo.yaml): the paper's response-
    length curves sit around 1-2k tokens over training and its clip ratio (responses cut at the
    limit) at a few percent. Median 1,100 and sigma 0.8 give a mean of ~1.5k and a p99 of ~7k among
    the untruncated; 3% truncated.
    """

    median: float = 1100.0
    sigma: float = 0.8
    truncated: float = 0.03
    max_tokens: int = 8192

    def __call__(self, rng: random.Random) -> int:
        if rng.random() < self.truncated:
            return self.max_tokens
        return max(1, min(self.max_tokens, int(rng.lognormvariate(math.log(self.median), self.sigma))))


def length_percentiles(draw: Callable[[random.Random], int], samples: int = 20000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    values = sorted(draw(rng) for _ in range(samples))
    return percentiles(values)


def percentiles(values: Sequence[int]) -> dict:
    values = sorted(values)

    def q(p):
        return values[min(len(values) - 1, max(0, math.ceil(p * len(values)) - 1))]

    return {"mean": statistics.fmean(values), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": values[-1]}


# ---- the GPU layout prediction ---------------------------------------------------------------
@dataclass(frozen=True)
class GpuLayout:
    """A disaggregated layout (rollout GPUs apart from trainer GPUs) and its per-GPU costs.

    Defaults are the SimpleRL-Zoo Qwen2.5-7B recipe's layout (configs/base/simplerl_zoo.yaml:
    4 nodes of 8 GPUs, 2 trainer nodes, 2 rollout nodes of SGLang servers at TP=2; 1,024 prompts x
    8 samples per step, 8,192 new tokens at most) and cost assumptions for H100s, each derived in
    its comment. They are assumptions to be replaced by measurements on the cluster.
    """

    rollout_gpus: int = 16
    train_gpus: int = 16
    server_tp: int = 2
    # Qwen2.5-7B bf16 decode on one TP=2 pair of H100s (SGLang): a step reads the 15 GB of weights
    # (7.5 GB per GPU at ~2.5 TB/s effective, plus two all-reduces per layer) -> ~4 ms;
    # per sequence ~14 GFLOP per token at ~2x350 TFLOP/s effective -> 20 us; the KV cache is 57 KB
    # per token (28 layers x 4 KV heads x 128 x 2 x 2 bytes) read at ~5 TB/s for the pair -> 11 ns.
    decode_step_s: float = 4e-3
    decode_per_seq_s: float = 2e-5
    decode_per_ctx_token_s: float = 1.1e-8
    prefill_per_token_s: float = 2e-5 / 8  # prefill runs ~8x more tokens per second than decode
    max_running: int = 512  # SGLang's running batch: ~120 GB of KV on the pair holds ~2M tokens
    # Trainer seconds per token per GPU: forward + backward with full recompute (8 x 7.6 GFLOP per
    # token) plus old and reference log-prob passes (2 x 2 x 7.6) = 91 GFLOP at 40% MFU of 989
    # TFLOP/s -> 2.3e-4 s.
    update_per_token_gpu_s: float = 2.3e-4
    update_fixed_s: float = 5.0  # 4 optimizer steps (mini_batches 4), gradient all-reduce, bookkeeping
    sync_s: float = 5.0  # 15 GB broadcast from the trainer to 8 servers over NCCL, plus pause/continue
    prompts: int = 1024
    n: int = 8
    prompt_tokens: int = 200  # MATH problems with the qwen-boxed template

    def cluster(self, colocated: bool = False) -> Cluster:
        """Disaggregated: servers on rollout_gpus, trainer on train_gpus. Colocated (sync only): every
        GPU takes both roles in turn."""
        rollout = self.rollout_gpus + self.train_gpus if colocated else self.rollout_gpus
        train = self.rollout_gpus + self.train_gpus if colocated else self.train_gpus
        return Cluster(
            servers=max(1, rollout // self.server_tp),
            decode=DecodeCost(self.decode_step_s, self.decode_per_seq_s, self.decode_per_ctx_token_s, self.prefill_per_token_s),
            update_per_token_s=self.update_per_token_gpu_s / train, update_fixed_s=self.update_fixed_s,
            sync_s=self.sync_s, max_running=self.max_running,
        )

    def workload(self, lengths: Callable[[random.Random], int]) -> Workload:
        return Workload(self.prompts, self.n, self.prompt_tokens, lengths)


def predict(layout: GpuLayout, lengths: Callable[[random.Random], int], *, max_staleness: int = 2, steps: int = 12,
            warmup: int = 2, seed: int = 0, split_scan: bool = True) -> dict:
    """Steps per hour of each schedule on `layout`, and async's speed-up over the others; with
    `split_scan`, also async on the best split of the same GPUs into rollout and trainer (async
    needs the two sides balanced; colocated sync balances itself by taking turns)."""
    workload = layout.workload(lengths)
    rows = {}
    cases = [
        ("sync (colocated, all GPUs)", layout.cluster(colocated=True), Schedule("sync")),
        ("sync (disaggregated)", layout.cluster(), Schedule("sync")),
        ("overlap (disaggregated)", layout.cluster(), Schedule("overlap")),
        (f"async partial K={max_staleness}", layout.cluster(), Schedule("async", True, max_staleness)),
        (f"async no partial K={max_staleness}", layout.cluster(), Schedule("async", False, max_staleness)),
    ]
    for label, cluster, schedule in cases:
        rows[label] = simulate(cluster, workload, schedule, steps=steps, seed=seed, warmup=warmup).summary()
    best_sync = max(rows[k]["steps_per_hour"] for k in rows if k.startswith("sync"))
    async_key = f"async partial K={max_staleness}"
    scan = []
    if split_scan:
        total = layout.rollout_gpus + layout.train_gpus
        stride = max(layout.server_tp, (total // 8) // layout.server_tp * layout.server_tp)
        scan = best_split(layout, lengths, max_staleness=max_staleness, steps=max(6, steps // 2), seed=seed, stride=stride)
        best = max(scan, key=lambda r: r["steps_per_hour"])
        candidate = dataclasses.replace(layout, rollout_gpus=best["rollout_gpus"], train_gpus=best["train_gpus"])
        label = f"async partial K={max_staleness}, {best['rollout_gpus']} rollout + {best['train_gpus']} trainer GPUs"
        rows[label] = simulate(candidate.cluster(), candidate.workload(lengths), Schedule("async", True, max_staleness),
                               steps=steps, seed=seed, warmup=warmup).summary()
        rows[label]["split"] = best
    best_async = max(r["steps_per_hour"] for k, r in rows.items() if k.startswith("async partial"))
    return {
        "layout": dataclasses.asdict(layout),
        "rows": rows,
        "async_split_scan": scan,
        "speedup_best_async_over_best_sync": best_async / best_sync,
        "speedup_async_over_best_sync": rows[async_key]["steps_per_hour"] / best_sync,
        "speedup_async_over_sync_disaggregated": rows[async_key]["steps_per_hour"] / rows["sync (disaggregated)"]["steps_per_hour"],
        "speedup_async_over_overlap": rows[async_key]["steps_per_hour"] / rows["overlap (disaggregated)"]["steps_per_hour"],
    }


def best_split(layout: GpuLayout, lengths: Callable[[random.Random], int], *, max_staleness: int = 2, steps: int = 10,
               seed: int = 0, stride: int | None = None) -> list[dict]:
    """async steps/hour for splits of the same GPUs into rollout and trainer, every `stride` GPUs
    (default server_tp), from a quarter to three quarters of the GPUs on rollout."""
    total = layout.rollout_gpus + layout.train_gpus
    stride = stride or layout.server_tp
    out = []
    low = max(layout.server_tp, (total // 4) // stride * stride)
    for rollout in range(low, total * 3 // 4 + 1, stride):
        candidate = dataclasses.replace(layout, rollout_gpus=rollout, train_gpus=total - rollout)
        result = simulate(candidate.cluster(), candidate.workload(lengths), Schedule("async", True, max_staleness),
                          steps=steps, seed=seed)
        out.append({"rollout_gpus": rollout, "train_gpus": total - rollout, "steps_per_hour": result.steps_per_hour,
                    "server_idle_frac": result.server_idle_frac})
    return out


def print_prediction(prediction: dict, lengths_info: dict, console=None, title: str = "prediction") -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    layout = prediction["layout"]
    table = Table(title=title)
    for col in ("schedule", "s/step", "steps/hour", "tokens/s", "server idle", "staleness mean/max", "partial", "dropped"):
        table.add_column(col, justify="left" if col == "schedule" else "right")
    for label, r in prediction["rows"].items():
        table.add_row(label, f"{r['step_s']:.1f}", f"{r['steps_per_hour']:.1f}", f"{r['tokens_per_s']:,.0f}",
                      f"{100 * r['server_idle_frac']:.0f}%", f"{r['token_staleness_mean']:.2f} / {r['staleness_max']}",
                      f"{100 * r['partial_frac']:.0f}%", str(r["dropped_groups"]))
    console.print(table)
    console.print(
        f"inputs: {layout['rollout_gpus']} rollout GPUs (TP={layout['server_tp']} servers) + {layout['train_gpus']} trainer GPUs; "
        f"{layout['prompts']} prompts x {layout['n']}, prompt {layout['prompt_tokens']} tokens; decode step "
        f"{layout['decode_step_s'] * 1e3:g} ms + {layout['decode_per_seq_s'] * 1e6:g} us/seq + "
        f"{layout['decode_per_ctx_token_s'] * 1e9:g} ns/context token, max {layout['max_running']} running; "
        f"update {layout['update_per_token_gpu_s'] * 1e6:g} us/token/GPU + {layout['update_fixed_s']:g} s; sync {layout['sync_s']:g} s")
    console.print("response lengths: " + ", ".join(f"{k} {v:,.0f}" for k, v in lengths_info.items()))
    console.print(f"[bold]predicted async speed-up on the same layout: {prediction['speedup_async_over_sync_disaggregated']:.2f}x "
                  f"over sync, {prediction['speedup_async_over_overlap']:.2f}x over overlap, "
                  f"{prediction['speedup_async_over_best_sync']:.2f}x over colocated sync; best async split of the same GPUs "
                  f"over the best sync: {prediction['speedup_best_async_over_best_sync']:.2f}x[/]")


def main(argv: Sequence[str] | None = None) -> int:
    defaults = GpuLayout()
    parser = argparse.ArgumentParser(
        description="Predict steps/hour of sync, overlap and async RL on a GPU layout with a discrete-event model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python tools/async_model.py --rollout-gpus 16 --train-gpus 16 --max-staleness 2 --json async_model.json",
    )
    for name in ("rollout_gpus", "train_gpus", "server_tp", "max_running", "prompts", "n", "prompt_tokens"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("decode_step_s", "decode_per_seq_s", "decode_per_ctx_token_s", "prefill_per_token_s", "update_per_token_gpu_s",
                 "update_fixed_s", "sync_s"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--median-length", type=float, default=ZeroRLLengths.median)
    parser.add_argument("--sigma", type=float, default=ZeroRLLengths.sigma)
    parser.add_argument("--truncated", type=float, default=ZeroRLLengths.truncated)
    parser.add_argument("--max-tokens", type=int, default=ZeroRLLengths.max_tokens)
    parser.add_argument("--max-staleness", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="simulated RL steps per schedule (first 2 left out)")
    parser.add_argument("--no-split", action="store_true", help="skip the scan of rollout/trainer splits of the same GPUs for async")
    parser.add_argument("--json", default=None, help="write the prediction here")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    layout = GpuLayout(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GpuLayout)})
    lengths = ZeroRLLengths(args.median_length, args.sigma, args.truncated, args.max_tokens)
    if args.dry_run:
        print(f"async_model (dry run): {layout.rollout_gpus} rollout + {layout.train_gpus} trainer GPUs, max_staleness "
              f"{args.max_staleness}, {args.steps} simulated steps per schedule" + ("" if args.no_split else ", split scan")
              + f"; prediction to {args.json or 'the console'}")
        return 0
    info = length_percentiles(lengths)
    prediction = predict(layout, lengths, max_staleness=args.max_staleness, steps=args.steps, split_scan=not args.no_split)
    prediction["lengths"] = {"assumed": dataclasses.asdict(lengths), **info}
    print_prediction(prediction, info, title="predicted RL steps on the GPU layout (a model, not a measurement)")
    for row in prediction["async_split_scan"]:
        print(f"  async, {row['rollout_gpus']:3d} rollout + {row['train_gpus']:3d} trainer GPUs: "
              f"{row['steps_per_hour']:.1f} steps/hour, server idle {100 * row['server_idle_frac']:.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(prediction, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
