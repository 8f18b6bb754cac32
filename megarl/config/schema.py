"""The recipe schema: typed sections (pydantic models) with their defaults, YAML loading with `base:`
chains and command-line overrides (`actor.tp=2 rollout.n=8`). Each section checks its own fields;
the checks against the model and the files are megarl.config.checks.

This module imports no megarl package but the registries whose names a field may take (algorithms,
templates, data set names, evaluation protocols, reward schemes, extraction modes, transports), so
every component can import the section it is configured by. Errors are one line naming the field,
the value and the fix (examples in megarl/config/__init__.py).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from megarl.algorithms.registry import (
    AGG_MODES, CORRECTION_SETTINGS, KL_KINDS, algorithm_names, algorithm_settings, correction_names, get_algorithm, get_correction,
)
from megarl.data.templates import TEMPLATES
from megarl.evaluation.protocols import PROTOCOL_NAMES
from megarl.rewards.extraction import ExtractionMode
from megarl.rewards.grading import DEFAULT_TIMEOUT_S
from megarl.rewards.schemes import RewardScheme, load_reward_function
from megarl.rollout import protocol
from megarl.rollout.engines import ENGINE_NAMES, get_engine
from megarl.rollout.transports import TRANSPORTS


SectionT = TypeVar("SectionT", bound="Section")


class ConfigError(ValueError):
    """A recipe or override is invalid; the message is one line naming field, value and fix."""


class Section(BaseModel):
    # allow_inf_nan=False: `actor.lr=.inf` (or nan anywhere) is refused, naming the field
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs/${run.name}"
    seed: int = Field(1, ge=0, lt=2**64, description="any unsigned 64-bit integer")
    steps: int = Field(10, ge=1, description="RL steps (rollout + update) to run")
    resume: bool = True
    max_skipped_updates: int = Field(3, ge=1, description=(
        "optimizer steps in a row skipped for a non-finite loss or gradient before the run stops (non-zero exit)"))


class ModelConfig(Section):
    path: str = Field(..., description=(
        "HF model directory (converted on first use), a megarl checkpoint, or a torch_dist checkpoint (Megatron-LM / "
        "Megatron-Bridge root with latest_checkpointed_iteration.txt, or its iter_NNNNNNN/; config and tokenizer from "
        "its hf/ folder or model.tokenizer)"))
    tokenizer: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    config: str | None = Field(None, description=(
        "the model's config.json for planning where model.path is not on this machine (`megarl submit --dry-run`): "
        "a config megarl ships (megarl/model_configs: Qwen2.5-32B, Llama-3.1-8B, ...) or a path; training reads "
        "the config beside the weights"))


class ParallelConfig(Section):
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1, description=(
        "expert parallelism (mixture-of-experts models): each MoE layer's experts split over ep ranks; ep divides "
        "num_experts and the tp x dp ranks of a pipeline stage (megatron-core's expert groups)"))
    router_replay: bool | None = Field(None, description=(
        "train with the experts the rollout routed each token to (megatron-core's RouterReplay); null: on for "
        "mixture-of-experts models"))
    micro_batch_tokens: int = Field(8192, ge=16, description="token budget per packed micro-batch")
    recompute: Literal["selective", "full"] | None = None
    sequence_parallel: bool = Field(False, description=(
        "Megatron sequence parallelism (tp > 1): norms and dropout see 1/tp of the sequence, cutting activation memory"))
    distributed_optimizer: bool = False
    optimizer_offload: bool = Field(False, description=(
        "keep the optimizer state (fp32 master weights, Adam moments) in CPU memory and step it there "
        "(Megatron's HybridDeviceOptimizer; needs distributed_optimizer; on a CPU runtime the state is in host memory already)"))
    optimizer: Literal["adam", "sgd"] = Field("adam", description=(
        "Megatron's Adam (decoupled weight decay), or plain SGD without momentum: one step moves each weight by "
        "exactly lr x its gradient, which the parity and weight-sync tests check"))
    lr: float = Field(1e-6, gt=0)
    min_lr: float = 0.0
    lr_warmup_steps: int = Field(0, ge=0)
    lr_warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warmup as a fraction of all optimizer steps (used when lr_warmup_steps=0)")
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_horizon_steps: int | None = Field(None, ge=1, description=(
        "optimizer steps the LR schedule spans (lr_warmup_ratio and the decay to min_lr are fractions of it); null: the "
        "run's optimizer steps (run.steps x epochs x mini_batches). A run shorter than its horizon stops partway down "
        "the schedule (SimpleRL v0: a 20-episode cosine, trained about 120 steps)"))
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    @model_validator(mode="after")
    def _check_offload(self):
        if self.optimizer_offload and not self.distributed_optimizer:
            raise ValueError("optimizer_offload=true needs distributed_optimizer=true; set both")
        return self


class CriticConfig(ParallelConfig):
    lr: float = Field(5e-6, gt=0)
    value_clip: float | None = 0.5
    loss_agg: Literal["token-mean", "seq-mean-token-mean"] = Field("token-mean", description=(
        "value-loss aggregation: token-mean (mean over the mini-batch's tokens, verl's default) or seq-mean-token-mean "
        "(each sequence's token mean, then the mean over sequences: OpenRLHF's ValueLoss)"))


class AlgorithmConfig(Section):
    name: str = Field("grpo", description="a registered algorithm (megarl/algorithms/registry.py)")
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)
    dual_clip: float | None = Field(None, gt=1.0)
    loss_agg: Literal[AGG_MODES] = "token-mean"
    loss_constant: int | None = Field(None, ge=1, description="divisor for seq-sum-constant (Dr. GRPO: max generation length)")
    kl_coef: float = Field(0.0, ge=0)
    kl_type: Literal[KL_KINDS] = "low_var_kl"
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 1.0
    group_eps: float = 1e-6
    epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1, description="optimizer steps per rollout batch")
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = Field(4, ge=1)
    overlong_filter: bool = False
    importance_correction: str = Field("none", description=(
        "off-policy correction of the policy gradient toward the servers' behaviour policy, a registered one "
        "(megarl/algorithms/registry.py): none, tis (truncated IS), mis (masked IS), icepop, decoupled (decoupled PPO); "
        "every one but none recomputes the old log-probs and weights each token by pi_old / pi_behaviour"))
    importance_cap: float | None = Field(2.0, gt=0, description=(
        "upper bound of the importance weight: tis truncates at it; mis and icepop (beta) drop tokens or sequences "
        "above it; decoupled drops tokens whose behaviour weight exceeds it (AReaL's behav_imp_weight_cap, which "
        "it recommends at 5; null: no bound, decoupled only)"))
    importance_low: float | None = Field(None, gt=0, description=(
        "mis, icepop (alpha): lower bound; tokens or sequences whose weight is below it are dropped "
        "(null: 1 / importance_cap, verl's default)"))
    importance_level: Literal["token", "sequence", "geometric"] = Field("token", description=(
        "mis: the ratio compared with the bounds: per token, the sequence's product exp(sum of log-ratios), or "
        "its geometric mean exp(mean of log-ratios); a sequence's tokens are kept or dropped together"))
    whiten_advantages: bool = Field(False, description=(
        "whiten a group algorithm's advantages over every token of the global batch (ppo and the REINFORCE++ "
        "estimators always whiten)"))
    gspo_clip_low: float = Field(3e-4, ge=0, description="gspo: sequence ratio clipped below at 1 - this (GSPO paper: 3e-4)")
    gspo_clip_high: float = Field(4e-4, ge=0, description="gspo: sequence ratio clipped above at 1 + this (GSPO paper: 4e-4)")
    cispo_clip_low: float = Field(1.0, ge=0, le=1, description=(
        "cispo: importance weight clipped below at 1 - this (MiniMax-M1 sets no lower bound: 1.0)"))
    cispo_clip_high: float = Field(4.0, ge=0, description=(
        "cispo: importance weight clipped above at 1 + this (MiniMax-M1 tunes only this bound; 4.0 caps the weight at 5 "
        "as SkyRL's CISPO default after ScaleRL)"))

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in algorithm_names():
            raise ValueError(f"{name!r} is not a registered algorithm; choose one of: {', '.join(algorithm_names())}")
        return name

    @field_validator("importance_correction")
    @classmethod
    def _registered_correction(cls, name: str) -> str:
        if name not in correction_names():
            raise ValueError(f"{name!r} is not a registered importance correction; choose one of: {', '.join(correction_names())}")
        return name

    @model_validator(mode="after")
    def _check(self):
        if self.loss_agg == "seq-sum-constant" and not self.loss_constant:
            raise ValueError("loss_agg=seq-sum-constant needs algorithm.loss_constant (Dr. GRPO uses the max generation length)")
        self._check_algorithm_settings()
        self._check_correction()
        return self

    def _given(self, key: str) -> bool:
        """`key` was set (by the recipe, its base or an override) to a value other than its default. A value
        equal to the default changes nothing whichever algorithm runs, so a base may spell defaults out
        (configs/base/simplerl_zoo.yaml writes clip_low: 0.2) and a recipe built on it may switch algorithm."""
        return key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default

    def _unread(self, key: str, who: str, reads: tuple[str, ...], readers: str) -> str:
        return (f"{who} does not read algorithm.{key} (read by: {readers}; it reads: {', '.join(reads) or 'none of these'}); "
                f"remove {key}={getattr(self, key)}")

    def _check_algorithm_settings(self) -> None:
        """A given setting of another algorithm's estimator, loss or baseline (e.g. clip_high with gspo) is
        refused: it would be silently ignored."""
        reads = get_algorithm(self.name).reads
        for key, readers in algorithm_settings().items():
            if key not in reads and self._given(key):
                raise ValueError(self._unread(key, f"algorithm.name={self.name}", reads, ", ".join(readers)))

    def _check_correction(self) -> None:
        """The chosen correction's settings: a given setting it does not read is refused (it would be
        silently ignored); importance_correction=none ignores them all, so a recipe can switch it off."""
        spec = get_correction(self.importance_correction)
        if not spec.reweights:
            return
        for key in CORRECTION_SETTINGS:
            if key not in spec.reads and self._given(key):
                readers = ", ".join(name for name in correction_names() if key in get_correction(name).reads)
                raise ValueError(self._unread(key, f"importance_correction={spec.name}", spec.reads, readers))
        cap, low = self.importance_cap, self.importance_low
        if cap is None and not spec.cap_optional:
            raise ValueError(f"importance_correction={spec.name} needs algorithm.importance_cap (an upper bound > 0)")
        if cap is not None and low is not None and low >= cap:
            raise ValueError(f"algorithm.importance_low={low} must be below algorithm.importance_cap={cap}")


WEIGHT_SYNC_SUBDIR = "weight_sync"  # rollout.disk_dir's default, under the run directory


def critic_layout_problem(cfg: "Config") -> str | None:
    """Why the critic's layout can't run beside the actor's (they share the ranks), or None."""
    actor, critic = cfg.actor, cfg.critic
    if cfg.uses_critic and (critic.tp, critic.pp, critic.ep) != (actor.tp, actor.pp, actor.ep):
        return (f"critic.tp/pp/ep={critic.tp}/{critic.pp}/{critic.ep} must equal actor.tp/pp/ep={actor.tp}/{actor.pp}/{actor.ep} "
                "(actor and critic share the ranks); set them equal")
    return None


def colocated_transport_problem(transport: str, *, colocate: bool, gpus: bool) -> str | None:
    """Why `transport` cannot serve colocated servers on GPUs (None when it can). The distributed transport's
    NCCL group would hold trainer rank 0 and the server rank on the same GPU, which NCCL refuses; CUDA IPC
    (the tensor transport) is the path for a GPU shared by trainer and server."""
    if colocate and gpus and transport == "distributed":
        return ("rollout.transport=distributed with colocated servers on GPUs puts trainer rank 0 and a server rank on "
                "one GPU in one NCCL group, which NCCL refuses; set rollout.transport=tensor (colocated on one node) "
                "or disk (several nodes, shared filesystem)")
    return None


class RolloutConfig(Section):
    engine: Literal[ENGINE_NAMES] = "builtin"
    servers: list[str] = Field(default_factory=list, description="server URLs; empty: megarl starts its own")
    num_servers: int = Field(1, ge=1)
    server_tp: int = Field(1, ge=1)
    router: bool = False
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    max_new_tokens: int = Field(1024, ge=1)
    stop_token_ids: list[int] = Field(default_factory=list, description="token ids that end a response (a recipe's model-specific stops)")
    template_stops: bool = Field(True, description=(
        "stop at the template's stop strings (the ChatML turn end, r1's </answer>); false: only at EOS and "
        "stop_token_ids (Dr. GRPO's qwen_math run unsets every stop)"))
    transport: Literal[TRANSPORTS] = "tensor"
    bucket_mb: int = Field(512, ge=1)
    disk_dir: str | None = Field(None, description=(
        "transport=disk: the directory each push is written to, which every rollout server must read (a shared "
        f"filesystem); unset: <run.output_dir>/{WEIGHT_SYNC_SUBDIR}, the run directory"))
    colocate: bool = False
    mem_fraction_static: float = Field(0.5, gt=0, lt=1, description=(
        "colocated SGLang servers: fraction of each GPU for their weights and KV cache (--mem-fraction-static); "
        "the rest is the trainer's"))
    mode: Literal["sync", "overlap", "async"] = Field("sync", description=(
        "sync: generate, then train; overlap: the next step's batch generates on the servers while this step trains "
        "(one step off-policy, the PPO ratio against the servers' behaviour log-probs); async: a producer keeps every "
        "server busy and the trainer takes finished groups from a buffer (megarl/train/stages/produce.py)"))
    max_staleness: int = Field(1, ge=0, description=(
        "async: the most optimizer steps the policy that produced any token of a trained sample may lag the trained "
        "policy; older samples are regenerated (0: every token from the current policy)"))
    partial: bool = Field(False, description=(
        "async: at a weight update, in-flight requests are aborted and continued with the new weights from their "
        "prefix (per-token policy versions kept); false: the update waits for them to finish"))
    request_timeout_s: float = Field(protocol.REQUEST_TIMEOUT_S, gt=0, description="one /generate request, client and built-in server")
    max_concurrency: int = Field(protocol.MAX_CONCURRENCY, ge=1, description="/generate requests the client keeps in flight")
    max_batch_sequences: int = Field(protocol.MAX_BATCH_SEQUENCES, ge=1, description="built-in servers: sequences decoded together")

    @property
    def off_policy(self) -> bool:
        """Batches may come from an older policy than the one trained (overlap, async)."""
        return self.mode != "sync"


def _source_list(value: Any, presets: bool) -> Any:
    """A list of data sources (megarl.data.sources): a lone value is refused as such, and every name that
    is not a path must be a known set (paths are checked in validate_semantics, with the files)."""
    from megarl.data.sources import name_problem, one_value_for_a_list

    if isinstance(value, str):
        raise ValueError(one_value_for_a_list(value))
    if isinstance(value, list):
        for item in value:
            problem = name_problem(item, presets=presets) if isinstance(item, str) else None
            if problem:
                raise ValueError(problem)
    return value


class DataConfig(Section):
    train: list[str] = Field(..., min_length=1, description="training prompts: shipped sets, presets, generated sets, files")
    template: str = Field("qwen-boxed", description=f"a prompt template of megarl.data.templates ({', '.join(TEMPLATES)})")
    prompts_per_step: int = Field(8, ge=1, le=4096)
    max_prompt_tokens: int = Field(1024, ge=1)
    levels: list[int] | None = None
    shuffle: bool = True
    eval_sets: list[str] = Field(default_factory=list, description="sets whose prompts must never be trained on")

    @field_validator("train", "eval_sets", mode="before")
    @classmethod
    def _sources(cls, value: Any, info) -> Any:
        return _source_list(value, presets=info.field_name == "train")

    @field_validator("template")
    @classmethod
    def _registered_template(cls, name: str) -> str:
        if name not in TEMPLATES:
            close = difflib.get_close_matches(name, TEMPLATES, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{name!r} is not a prompt template; {hint}choose one of: {', '.join(TEMPLATES)}")
        return name


class RewardConfig(Section):
    """How rollouts are graded and rewarded (megarl.rewards.schemes reads this section directly).

    The scheme and extraction names are the ones megarl.rewards implements (`RewardScheme`,
    `ExtractionMode`); a name it does not implement is refused here, listing the known ones.
    """

    scheme: RewardScheme = Field("binary", description=(
        "simplerl (+1 / -0.5 wrong / -1 without a box), binary (1 / 0, truncated 0: Dr. GRPO), hf-math-verify (1 / 0, "
        "truncated graded: SimpleRL-Zoo) or r1 (1 only with the r1 format); "
        "see megarl.rewards.schemes"))
    extraction: ExtractionMode = Field(
        "boxed", description="answer extraction: boxed (strict) or qwen-math (Qwen2.5-Math's order, SimpleRL's); see megarl.rewards.extraction")
    format_weight: float = Field(0.0, ge=0, description="added when the format is followed (r1 shape, or a \\boxed{} answer); 0: off")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="hard limit in seconds on grading one answer (symbolic comparison)")
    custom: str | None = Field(None, description="'module:function' returning rewards for your own task")

    @field_validator("custom")
    @classmethod
    def _importable(cls, path: str | None) -> str | None:
        if path is not None:
            load_reward_function(path)  # fail when the recipe loads, not mid-training
        return path


class ToolConfig(Section):
    """Tool-integrated rollouts: a Python interpreter in a sandbox (megarl.rollout.multi_turn, docs/tool_use.md)."""

    enabled: bool = False
    format: str = Field("torl", description="how code and output are marked: a format of megarl.rollout.multi_turn.TOOL_FORMATS")
    stop: str | None = Field(None, description="the string that ends a code turn (None: the format's)")
    max_turns: int = Field(2, ge=1, description="model turns per sample; max_turns - 1 interpreter calls at most")
    timeout_s: float = Field(5.0, gt=0, description="wall-clock limit of one interpreter call")
    memory_mb: int = Field(1024, ge=64, description="address space of each process of a call")
    output_chars: int = Field(256, ge=16, description="the output shown to the model is cut to this many characters")
    workers: int = Field(4, ge=1, description="warm sandboxes (megarl.sandbox.SandboxPool)")
    filter_error_trajectories: bool = Field(False, description="no loss on a sample whose last tool call failed")
    filter_void_turns: bool = Field(False, description="no loss on a sample with a turn that closed without code (SimpleTIR)")

    @field_validator("format")
    @classmethod
    def _registered_format(cls, name: str) -> str:
        from megarl.rollout.multi_turn import get_tool_format

        get_tool_format(name)
        return name


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="evaluate every k steps (0: never)")
    benchmarks: list[str] = Field(default_factory=list, description="shipped evaluation sets, generated sets or files")
    protocol: Literal[PROTOCOL_NAMES] = Field(
        "custom", description="a paper's sampling and scoring (megarl.evaluation.protocols); custom: n/temperature/top_p/max_new_tokens below")
    n: int = Field(1, ge=1)
    temperature: float = 0.0
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = 1024
    limit: int | None = None
    stop_token_ids: list[int] | None = Field(None, description=(
        "token ids that end an evaluation response (upstream harnesses set their own per model); null: rollout.stop_token_ids"))

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        return _source_list(value, presets=False)


class CheckpointConfig(Section):
    every: int = Field(0, ge=0)
    keep_last: int = Field(2, ge=1)
    async_save: bool = Field(False, description=(
        "write resume checkpoints (torch_dist) in the background with megatron-core's async writer while training "
        "continues; the checkpoint is complete (COMPLETE, checksums, pruning) at the next save or at exit"))
    hf_export_every: int = Field(0, ge=0)


class LoggingConfig(Section):
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "megarl"
    samples_per_step: int = Field(2, ge=0, description="sample responses written to samples.jsonl each step")
    samples_every: int = Field(10, ge=0, description=(
        "print a table of those samples on the console every k steps (0: never); the file gets them every step"))
    reflection_words: list[str] = Field(
        default_factory=lambda: ["wait", "recheck", "retry", "alternatively", "however", "let me check", "verify"]
    )


class SlurmConfig(Section):
    """The job's Slurm settings for `megarl submit`; its flags override them (launch.layout.LaunchOptions.from_recipe)."""

    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    gpus_per_node: int = 8
    nodes: int = 1
    rollout_nodes: int = 0
    setup: str = ""


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    actor: ParallelConfig = ParallelConfig()
    critic: CriticConfig = CriticConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    rollout: RolloutConfig = RolloutConfig()
    data: DataConfig
    reward: RewardConfig = RewardConfig()
    tool: ToolConfig = ToolConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    slurm: SlurmConfig = SlurmConfig()

    @property
    def uses_critic(self) -> bool:
        return get_algorithm(self.algorithm.name).critic

    @property
    def weight_sync_dir(self) -> str:
        """Where the disk transport writes: rollout.disk_dir, or the run directory's weight_sync folder."""
        return self.rollout.disk_dir or str(Path(self.run.output_dir) / WEIGHT_SYNC_SUBDIR)


# ---- loading ------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


# Keys that were replaced: what to write instead.
RENAMED_KEYS = {"rollout.overlap": "rollout.mode (overlap for true, sync for false)"}


def _check_keys(data: dict, model: type[BaseModel], prefix: str = "") -> None:
    for key, value in data.items():
        if key not in model.model_fields:
            dotted = prefix + key
            if dotted in RENAMED_KEYS:
                raise ConfigError(f"{dotted} was replaced by {RENAMED_KEYS[dotted]}")
            close = difflib.get_close_matches(dotted, _known_keys(Config), n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(model.model_fields)}"
            raise ConfigError(f"unknown key {dotted!r}{hint}")
        ann = model.model_fields[key].annotation
        if isinstance(value, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(value, ann, prefix + key + ".")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. actor.tp=2)")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return data


def _substitute(cfg: Config) -> None:
    cfg.run.output_dir = cfg.run.output_dir.replace("${run.name}", cfg.run.name)


def _format_validation_error(err: ValidationError, data: dict, section: str | None = None) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in ((section,) if section else ()) + tuple(first["loc"]))
    value = data
    for part in first["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    msg = first["msg"]
    if first["type"] == "missing":
        return f"{loc} is required but missing; add it to the recipe or pass {loc}=VALUE"
    if first["type"] == "finite_number":
        return f"{loc}={value!r}: must be a finite number (not inf or nan)"
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{loc or 'config'}: {msg}" if loc else msg
    return f"{loc}={value!r}: {msg}"


def build_section(section: type[SectionT], name: str, values: dict[str, Any]) -> SectionT:
    """One section from a command line's values, its own defaults for the rest: for CLIs that run
    without a recipe (`megarl eval`, `megarl grade`), so their defaults are this module's too.
    Raises ConfigError naming `name.field`, the value and the problem."""
    try:
        return section(**values)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, values, section=name)) from None


def _merge(base: dict, delta: dict) -> dict:
    """`delta` over `base`, section by section (a list or a value replaces the base's)."""
    merged = dict(base)
    for key, value in delta.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's YAML as a dict, with `base: other.yaml` (relative to the recipe) merged under it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; see configs/ for the shipped recipes")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(p.name for p in _seen)}); remove one base")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, model, actor, ...)")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={base!r} must be a recipe file name, e.g. base: simplerl_zoo_base.yaml")
    return _merge(read_recipe(path.parent / base, (*_seen, path.resolve())), data)


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """`FILE:LINE:COLUMN: not valid YAML: PROBLEM` (1-based, where the parser stopped)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context = getattr(err, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def read_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """The recipe and overrides, each section validated, without the checks against the model and files
    (megarl.config.checks.validate_semantics, which imports torch): quick. Raises ConfigError."""
    data: dict = read_recipe(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    _check_keys(data, Config)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, data)) from None
    _substitute(cfg)
    return cfg
