"""Generate stage (driver rank): encode prompts, sample n responses each from the rollout servers,
grade them, replace uniform groups (dynamic sampling) and build the step's training sequences."""

from __future__ import annotations

import dataclasses
from typing import Any

from megarl.config import Config
from megarl.data import render_prompt
from megarl.data.prompt_stream import PromptStream
from megarl.monitoring.reflection import reflection_rates
from megarl.rewards.schemes import RewardConfig
from megarl.rollout.client import RolloutClient, SamplingParams
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

    def to_state(self) -> dict:
        """JSON form (a checkpoint's trainer state)."""
        return {"seqs": [dataclasses.asdict(s) for s in self.seqs], "metrics": self.metrics, "samples": self.samples}

    @classmethod
    def from_state(cls, state: dict) -> "RolloutBatch":
        return cls([TrainSequence(**s) for s in state["seqs"]], state["metrics"], state["samples"])


@dataclasses.dataclass
class RolloutSetup:
    """What generation needs besides the prompt stream, fixed for the run (built on the driver)."""

    cfg: Config
    client: RolloutClient
    tokenizer: Any
    template: Any
    stops: list[str]
    reward: RewardConfig


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


def generate(setup: RolloutSetup, prompts: PromptStream, step: int) -> RolloutBatch:
    """Sample and grade step `step`'s batch: data.prompts_per_step groups of rollout.n sequences,
    taking prompts from `prompts` until dynamic sampling has enough groups."""
    cfg, rc = setup.cfg, setup.cfg.rollout
    want = cfg.data.prompts_per_step
    groups, sampled, filtered, rounds, truncated_prompts, versions = [], [], 0, 0, 0, set()
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
        sampling = SamplingParams(
            max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
            stop=setup.stops, stop_token_ids=list(rc.stop_token_ids), sampling_seed=rollout_seed(cfg.run.seed, step, rounds),
        )
        outputs = setup.client.generate([ids for ids, _ in encoded], sampling, n=rc.n)
        flat = [s for group in outputs for s in group]
        versions.update(s.weight_version for s in flat)
        grades = reward.grade(flat, [rows[s.prompt_index].answer for s in flat], setup.reward, cfg.data.template)
        for p, (row, (ids, _), group) in enumerate(zip(rows, encoded, outputs)):
            g = grades[p * rc.n:(p + 1) * rc.n]
            sampled.append((group, g))
            if cfg.algorithm.dynamic_sampling and max(x.reward for x in g) == min(x.reward for x in g):
                filtered += 1
                continue
            groups.append((row, ids, group, g))
    seqs = [
        TrainSequence(
            prompt_ids=ids, response_ids=list(sample.output_ids), reward=float(grade.reward), group=gi,
            behaviour_logp=sample.logprobs, truncated=sample.finish_reason == "length", correct=bool(grade.correct),
            loss_weight=0.0 if (cfg.algorithm.overlong_filter and sample.finish_reason == "length") else 1.0,
        )
        for gi, (row, ids, group, g) in enumerate(groups) for sample, grade in zip(group, g)
    ]
    all_grades = [x for _, g in sampled for x in g]
    reflection = reflection_rates([s.text for group, _ in sampled for s in group], [bool(x.correct) for x in all_grades],
                                  cfg.logging.reflection_words)
    metrics = step_metrics.rollout_metrics(seqs, all_grades, prompts=len(groups), filtered=filtered, rounds=rounds,
                                           truncated_prompts=truncated_prompts, epoch=prompts.epoch, weight_versions=versions,
                                           reflection=reflection)
    samples = [
        {"prompt": setup.tokenizer.decode(ids), "response": group[0].text, "gold": row.answer, "reward": g[0].reward}
        for row, ids, group, g in groups[:cfg.logging.samples_per_step]
    ]
    return RolloutBatch(seqs, metrics, samples)
