"""Generate stage (driver rank): encode prompts, sample n responses each from the rollout servers,
grade them, replace uniform groups (dynamic sampling) and build the step's training sequences."""

from __future__ import annotations

import dataclasses
from typing import Any

from megarl.config import Config, RewardConfig
from megarl.data import render_prompt
from megarl.data.prompt_stream import PromptStream
from megarl.monitoring.reflection import reflection_rates
from megarl.rollout import multi_turn
from megarl.rollout import routed_experts
from megarl.rollout.client import RolloutClient, Sample, SamplingParams
from megarl.runtime.distributed import fold_seed
from megarl.train.batch import TrainSequence
from megarl.train.stages import metrics as step_metrics
from megarl.train.stages import reward


@dataclasses.dataclass
class RolloutBatch:
    """One step's batch: the training sequences, what the rollout reports, and a few samples to log."""

    seqs: list[TrainSequence]
    metrics: dict
    samples: list[dict]
    prompt_ids: list[str] = dataclasses.field(default_factory=list)  # the ids of its groups' prompts, in group order

    def to_state(self) -> dict:
        """JSON form (a checkpoint's trainer state)."""
        return {"seqs": [dataclasses.asdict(s) for s in self.seqs], "metrics": self.metrics, "samples": self.samples,
                "prompt_ids": self.prompt_ids}

    @classmethod
    def from_state(cls, state: dict) -> "RolloutBatch":
        return cls([TrainSequence(**s) for s in state["seqs"]], state["metrics"], state["samples"], state.get("prompt_ids", []))


@dataclasses.dataclass
class RolloutSetup:
    """What generation needs besides the prompt stream, fixed for the run (built on the driver)."""

    cfg: Config
    client: RolloutClient
    tokenizer: Any
    template: Any
    stops: list[str]
    reward: RewardConfig
    tools: multi_turn.ToolRunner | None = None  # tool.enabled: the interpreter of multi-turn rollouts
    spec: Any = None  # the model's ModelSpec (MoE: reads the rollout's routed experts for routing replay)

    def close(self) -> None:
        """Stops what the setup started: the interpreter's sandboxes (tool.enabled)."""
        if self.tools is not None:
            self.tools.close()


def make_setup(cfg: Config, client: RolloutClient, tokenizer, spec: Any = None) -> RolloutSetup:
    """The run's RolloutSetup: its template, stop strings and the recipe's reward section."""
    from megarl.data import get_template, stop_strings

    template = get_template(cfg.data.template)
    tools = multi_turn.ToolRunner(cfg.tool, tokenizer) if cfg.tool.enabled else None
    return RolloutSetup(cfg, client, tokenizer, template, stop_strings(template, tokenizer, template_stops=cfg.rollout.template_stops),
                        cfg.reward, tools, spec)


def encode_prompt(setup: RolloutSetup, problem: str) -> tuple[list[int], bool]:
    """Token ids of the rendered prompt (left-truncated to data.max_prompt_tokens) and whether it was cut."""
    limit = setup.cfg.data.max_prompt_tokens
    ids = setup.tokenizer(render_prompt(setup.template, problem, setup.tokenizer), add_special_tokens=False)["input_ids"]
    return (ids[-limit:], True) if len(ids) > limit else (ids, False)


def rollout_seed(run_seed: int, step: int, round_: int) -> int:
    """Base sampling seed of one rollout round of `step` (0-based); the client adds the prompt
    index (< 4096) and the server the sample index, so every sample of a run has its own random
    stream and a resumed run samples exactly what the uninterrupted one did. Folded into 51 bits
    so that base + prompt index stays below 2**63 (SGLang's sampling_seed is a signed 64-bit long)
    for any run.seed."""
    return fold_seed((run_seed * 100_003 + step) * 32 + round_, 51) * 4096


def sampling_params(setup: RolloutSetup, seed: int, max_new_tokens: int | None = None) -> SamplingParams:
    """The rollout's sampling settings with base seed `seed` (and fewer new tokens for a continuation)."""
    rc = setup.cfg.rollout
    return SamplingParams(
        max_new_tokens=rc.max_new_tokens if max_new_tokens is None else max_new_tokens, temperature=rc.temperature,
        top_p=rc.top_p, top_k=rc.top_k, stop=setup.stops, stop_token_ids=list(rc.stop_token_ids), sampling_seed=seed,
    )


@dataclasses.dataclass
class Group:
    """One prompt's graded samples."""

    row: Any
    prompt_ids: list[int]
    samples: list[Sample]
    grades: list

    @property
    def uniform(self) -> bool:
        """Every sample got the same reward (no learning signal for a group baseline)."""
        return max(g.reward for g in self.grades) == min(g.reward for g in self.grades)


def token_versions(sample: Sample) -> list[int] | None:
    """The policy version of each output token (None when the server's version is not a step number)."""
    if sample.token_versions is not None:
        return list(sample.token_versions)
    version = sample.weight_version
    return [int(version)] * len(sample.output_ids) if version is not None and str(version).isdigit() else None


def min_version(sample: Sample) -> int | None:
    """The oldest policy version among the sample's output tokens (None: no tokens, or no step numbers;
    -1 for a segment whose server gave no step number)."""
    if sample.token_versions is not None:
        return min(sample.token_versions, default=None)
    version = sample.weight_version
    return int(version) if sample.output_ids and version is not None and str(version).isdigit() else None


def build_batch(setup: RolloutSetup, groups: list[Group], sampled: list[Group], *, filtered: int, rounds: int,
                truncated_prompts: int, epoch: int) -> RolloutBatch:
    """The step's batch from its kept `groups` (all `sampled` ones count in the reward metrics)."""
    cfg = setup.cfg
    seqs = [
        TrainSequence(
            prompt_ids=group.prompt_ids, response_ids=list(sample.output_ids), reward=float(grade.reward), group=gi,
            behaviour_logp=sample.logprobs, truncated=sample.finish_reason == "length", correct=bool(grade.correct),
            loss_weight=0.0 if ((cfg.algorithm.overlong_filter and sample.finish_reason == "length")
                                or multi_turn.filtered_out(sample, cfg.tool)) else 1.0,
            versions=token_versions(sample), loss_mask=getattr(sample, "loss_mask", None),
            routes=routed_experts.from_sample(sample.meta_info, setup.spec, len(group.prompt_ids) + len(sample.output_ids))
            if setup.client.return_routed_experts else None,
        )
        for gi, group in enumerate(groups) for sample, grade in zip(group.samples, group.grades)
    ]
    all_grades = [x for g in sampled for x in g.grades]
    reflection = reflection_rates([s.text for g in sampled for s in g.samples], [bool(x.correct) for x in all_grades],
                                  cfg.logging.reflection_words)
    versions = {s.weight_version for g in sampled for s in g.samples}
    versions.update(str(v) for s in seqs if (v := min((x for x in s.versions or () if x >= 0), default=None)) is not None)
    metrics = step_metrics.rollout_metrics(seqs, all_grades, prompts=len(groups), filtered=filtered, rounds=rounds,
                                           truncated_prompts=truncated_prompts, epoch=epoch, weight_versions=versions,
                                           reflection=reflection)
    metrics.update(multi_turn.tool_metrics([s for g in sampled for s in g.samples]))
    samples = [
        {"prompt": setup.tokenizer.decode(g.prompt_ids), "response": g.samples[0].text, "gold": g.row.answer,
         "reward": g.grades[0].reward}
        for g in groups[:cfg.logging.samples_per_step]
    ]
    return RolloutBatch(seqs, metrics, samples, [str(g.row.id) for g in groups])


def generate(setup: RolloutSetup, prompts: PromptStream, step: int) -> RolloutBatch:
    """Sample and grade step `step`'s batch: data.prompts_per_step groups of rollout.n sequences,
    taking prompts from `prompts` until dynamic sampling has enough groups."""
    cfg, rc = setup.cfg, setup.cfg.rollout
    want = cfg.data.prompts_per_step
    groups, sampled, filtered, rounds, truncated_prompts = [], [], 0, 0, 0
    while len(groups) < want:
        rounds += 1
        if rounds > cfg.algorithm.dynamic_sampling_max_rounds + (0 if cfg.algorithm.dynamic_sampling else 1):
            raise RuntimeError(
                f"dynamic sampling could not fill {want} prompt groups in {rounds - 1} rounds "
                f"({filtered} groups had identical rewards); raise algorithm.dynamic_sampling_max_rounds, "
                "use harder/easier data, or turn dynamic_sampling off"
            )
        rows = prompts.take(want - len(groups))
        encoded = [encode_prompt(setup, r.problem) for r in rows]
        truncated_prompts += sum(cut for _, cut in encoded)
        outputs = multi_turn.generate(setup.client, [ids for ids, _ in encoded],
                                      sampling_params(setup, rollout_seed(cfg.run.seed, step, rounds)), rc.n, setup.tools)
        flat = [s for group in outputs for s in group]
        grades = reward.grade(flat, [rows[s.prompt_index].answer for s in flat], setup.reward, cfg.data.template)
        for p, (row, (ids, _), samples) in enumerate(zip(rows, encoded, outputs)):
            group = Group(row, ids, samples, grades[p * rc.n:(p + 1) * rc.n])
            sampled.append(group)
            if cfg.algorithm.dynamic_sampling and group.uniform:
                filtered += 1
                continue
            groups.append(group)
    return build_batch(setup, groups, sampled, filtered=filtered, rounds=rounds, truncated_prompts=truncated_prompts,
                       epoch=prompts.epoch)


class Prefetcher:
    """rollout.mode=overlap: the next step's batch generates in a background thread on the servers'
    current weights while this step trains; `finish` waits for it before the weights change, so the
    batch is exactly one optimizer step stale."""

    def __init__(self):
        self._batch = None  # a Future, or the finished RolloutBatch (also one restored from a checkpoint)
        self._pool = None

    def start(self, setup: RolloutSetup, prompts: PromptStream, step: int) -> None:
        if self._batch is not None:  # restored from a mid-step checkpoint
            return
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="megarl-rollout")
        self._batch = self._pool.submit(generate, setup, prompts, step)

    def finish(self) -> RolloutBatch | None:
        """The prefetched batch once generated (raising its error, if any); None when there is none."""
        if self._batch is not None and not isinstance(self._batch, RolloutBatch):
            self._batch = self._batch.result()
        return self._batch

    def take(self) -> RolloutBatch | None:
        batch, self._batch = self.finish(), None
        return batch

    def restore(self, state: dict) -> None:
        self._batch = RolloutBatch.from_state(state)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
