"""The algorithm registry: one entry per RL algorithm naming its advantage estimator, policy loss and needs.

As verl registers advantage estimators and policy losses under names (`register_adv_est`,
`register_policy_loss` in verl/trainer/ppo/core_algos.py), megarl registers:
- estimators (`EstimatorSpec`, declared here with the settings each reads; each implementation registers
  itself with `@register_advantage_estimator` in `megarl/algorithms/advantages.py`),
- policy losses (`PolicyLossSpec`, declared here with the settings each reads; each implementation registers
  itself with `@register_policy_loss` in `megarl/algorithms/losses.py`),
- algorithms (`register_algorithm(AlgorithmSpec(...))` below): estimator + loss + whether a critic is
  trained, the group baseline (if any) computed over each prompt's samples, and fixed settings,
- off-policy corrections (`CorrectionSpec`, declared below and chosen by
  `algorithm.importance_correction`; each implementation registers itself with `@register_correction`
  in `megarl/algorithms/corrections.py`), independent of the algorithm.

Config validation and the trainer ask this registry; nothing else tests algorithm or correction names.
What an algorithm reads (`AlgorithmSpec.reads`: its estimator's, loss's and group baseline's settings) is
all the config accepts of the algorithm-specific settings (`algorithm_settings()`); corrections likewise.
Adding an algorithm is one `register_algorithm` entry (plus its estimator, or its loss's `declare_policy_loss`
entry and `@register_policy_loss` function, when they are new); adding a correction is one
`declare_correction` entry plus its `@register_correction` function. The option lists the config imports
(`AGG_MODES`, `KL_KINDS`) are here too. This module imports no torch, so loading a recipe stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class EstimatorSpec:
    """How per-token advantages are made from each sequence's outcome score."""

    name: str
    token_rewards: bool  # builds per-token rewards (score on the last token), so KL can go in the reward
    whitens: bool  # whitens its advantages over the global batch itself
    summary: str
    reads: tuple[str, ...] = ()  # the algorithm.* settings it uses


SEQUENCE = EstimatorSpec("sequence", token_rewards=False, whitens=False,
                         summary="the sequence's score on every response token")
GAE = EstimatorSpec("gae", token_rewards=True, whitens=True, reads=("gamma", "lam"),
                    summary="GAE over token rewards with the critic's values, whitened")
RETURNS = EstimatorSpec("returns", token_rewards=True, whitens=True, reads=("gamma",),
                        summary="discounted returns of token rewards, whitened (REINFORCE++)")


@dataclass(frozen=True)
class PolicyLossSpec:
    """A policy loss: `reads` holds the algorithm.* settings that only some losses use (every loss reads
    loss_agg, loss_constant and the KL and entropy terms)."""

    name: str
    reads: tuple[str, ...]
    summary: str


# The algorithm.* settings each group baseline (a `megarl.kernels.group_advantages` mode) uses; a mode
# missing here reads none.
BASELINE_READS: dict[str, tuple[str, ...]] = {"mean_std": ("group_eps",)}


@dataclass(frozen=True)
class AlgorithmSpec:
    """One RL algorithm. `group_baseline` is the `megarl.kernels.group_advantages` mode applied to each prompt's
    rewards before the estimator (None: the estimator sees the raw reward); `requires` holds algorithm
    settings the method is defined with (config validation enforces them)."""

    name: str
    estimator: EstimatorSpec
    policy_loss: str
    group_baseline: str | None = None
    critic: bool = False
    requires: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def reads(self) -> tuple[str, ...]:
        """The algorithm-specific settings it uses: its estimator's, its policy loss's and its baseline's."""
        return (*self.estimator.reads, *get_policy_loss(self.policy_loss).reads,
                *BASELINE_READS.get(self.group_baseline or "", ()))

    @property
    def group_based(self) -> bool:
        return self.group_baseline is not None

    @property
    def min_n(self) -> int:
        """Smallest rollout.n: a group baseline needs two samples per prompt."""
        return 2 if self.group_based else 1


@dataclass(frozen=True)
class CorrectionSpec:
    """An off-policy correction: per-token weights on the policy gradient from the proximal (the actor's
    recomputed) and the behaviour (the servers') log-probs. `reweights`: it needs both, so the old
    log-probs are recomputed and never replaced by the behaviour ones. `reads`: the `algorithm.importance_*`
    settings it uses (config validation refuses a changed setting it does not read)."""

    name: str
    reweights: bool
    reads: tuple[str, ...] = ()
    cap_optional: bool = False  # importance_cap may be None (no upper bound)
    source: str = ""


# The loss aggregations and KL estimators `megarl.kernels.losses` implements (algorithm.loss_agg, algorithm.kl_type);
# named here, without torch, so the config lists exactly these.
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-sum-constant")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl")

ALGORITHMS: dict[str, AlgorithmSpec] = {}
ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
POLICY_LOSS_SPECS: dict[str, PolicyLossSpec] = {}
CORRECTIONS: dict[str, CorrectionSpec] = {}
CORRECTION_FNS: dict[str, Callable] = {}
# The algorithm settings a correction may read (each has its one default in AlgorithmConfig).
CORRECTION_SETTINGS = ("importance_cap", "importance_low", "importance_level")


def _add_spec(table: dict, spec, kind: str):
    if spec.name in table:
        raise ValueError(f"{kind} {spec.name!r} is registered twice; pick another name")
    table[spec.name] = spec
    return spec


def _into(table: dict[str, Callable], name: str) -> Callable[[Callable], Callable]:
    """A decorator storing its function in `table` under `name`."""

    def register(fn: Callable) -> Callable:
        table[name] = fn
        return fn

    return register


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    return _add_spec(ALGORITHMS, spec, "algorithm")


def register_advantage_estimator(spec: EstimatorSpec) -> Callable[[Callable], Callable]:
    """Decorator: `fn(inputs: AdvantageInputs, algo: AlgorithmConfig, dp_group) -> TokenAdvantages`."""
    return _into(ADVANTAGE_ESTIMATORS, spec.name)


def declare_policy_loss(spec: PolicyLossSpec) -> PolicyLossSpec:
    return _add_spec(POLICY_LOSS_SPECS, spec, "policy loss")


def get_policy_loss(name: str) -> PolicyLossSpec:
    if name not in POLICY_LOSS_SPECS:
        raise KeyError(f"policy loss {name!r} is not declared; add a PolicyLossSpec in megarl/algorithms/registry.py")
    return POLICY_LOSS_SPECS[name]


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator for a declared loss's implementation: `fn(logp, old_logp, advantages, mask, algo: AlgorithmConfig)
    -> (scalar loss, stats)`, stats holding detached clipfrac, dual_clipfrac, ppo_kl (the trainer logs them for
    every loss)."""
    get_policy_loss(name)
    return _into(POLICY_LOSSES, name)


def declare_correction(spec: CorrectionSpec) -> CorrectionSpec:
    return _add_spec(CORRECTIONS, spec, "correction")


def register_correction(name: str) -> Callable[[Callable], Callable]:
    """Decorator for a declared correction's implementation: `fn(proximal_logp, behaviour_logp, mask, algo:
    AlgorithmConfig) -> corrections.Correction` on [B, T] matrices whose rows are sequences."""
    if name not in CORRECTIONS:
        raise KeyError(f"correction {name!r} is not declared; add a CorrectionSpec in megarl/algorithms/registry.py")
    return _into(CORRECTION_FNS, name)


def correction_names() -> tuple[str, ...]:
    return tuple(CORRECTIONS)


def get_correction(name: str) -> CorrectionSpec:
    try:
        return CORRECTIONS[name]
    except KeyError:
        raise ValueError(f"algorithm.importance_correction={name!r} is not registered; choose one of: "
                         f"{', '.join(CORRECTIONS)}") from None


def correction_fn(spec: CorrectionSpec) -> Callable:
    return _lookup(CORRECTION_FNS, spec.name, "correction", "megarl/algorithms/corrections.py")


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def algorithm_settings() -> dict[str, tuple[str, ...]]:
    """Each algorithm-specific setting (one some registered algorithm reads and another does not) -> the
    algorithms that read it. Config validation refuses a changed one that the chosen algorithm does not read."""
    readers: dict[str, list[str]] = {}
    for spec in ALGORITHMS.values():
        for key in spec.reads:
            readers.setdefault(key, []).append(spec.name)
    return {key: tuple(names) for key, names in readers.items() if len(names) < len(ALGORITHMS)}


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm.name={name!r} is not registered; choose one of: {', '.join(ALGORITHMS)}") from None


def _lookup(table: dict[str, Callable], name: str, kind: str, where: str) -> Callable:
    if name not in table:
        raise KeyError(f"{kind} {name!r} has no registered implementation; register one in {where} (have: {', '.join(table)})")
    return table[name]


def estimator_fn(spec: AlgorithmSpec) -> Callable:
    return _lookup(ADVANTAGE_ESTIMATORS, spec.estimator.name, "advantage estimator", "megarl/algorithms/advantages.py")


def policy_loss_fn(spec: AlgorithmSpec) -> Callable:
    return _lookup(POLICY_LOSSES, spec.policy_loss, "policy loss", "megarl/algorithms/losses.py")


# ---- the policy losses (each implementation registers itself in megarl/algorithms/losses.py) ----
declare_policy_loss(PolicyLossSpec("ppo_clip", reads=("clip_low", "clip_high", "dual_clip"),
                                   summary="PPO's clipped token ratio (clip-higher, optional dual clip)"))
declare_policy_loss(PolicyLossSpec("gspo", reads=("gspo_clip_low", "gspo_clip_high"),
                                   summary="GSPO's clipped sequence ratio"))
declare_policy_loss(PolicyLossSpec("cispo", reads=("cispo_clip_low", "cispo_clip_high"),
                                   summary="CISPO's clipped stop-gradient importance weight"))


# ---- the algorithms -----------------------------------------------------------------------------
register_algorithm(AlgorithmSpec(
    "ppo", GAE, "ppo_clip", critic=True, source="PPO with a critic (SimpleRL; Schulman et al. 2017)"))
register_algorithm(AlgorithmSpec(
    "grpo", SEQUENCE, "ppo_clip", group_baseline="mean_std", source="GRPO: (r - group mean) / group std (DeepSeekMath)"))
register_algorithm(AlgorithmSpec(
    "drgrpo", SEQUENCE, "ppo_clip", group_baseline="mean", requires={"loss_agg": "seq-sum-constant"},
    source="Dr. GRPO: r - group mean, token sums divided by a constant, its unbiased loss"))
register_algorithm(AlgorithmSpec(
    "rloo", SEQUENCE, "ppo_clip", group_baseline="leave_one_out", source="RLOO: r - mean of the other samples"))
register_algorithm(AlgorithmSpec(
    "reinforce_pp", RETURNS, "ppo_clip", source="REINFORCE++ (Hu et al. 2025): whitened returns"))
register_algorithm(AlgorithmSpec(
    "reinforce_pp_baseline", RETURNS, "ppo_clip", group_baseline="mean",
    source="REINFORCE++-baseline (Hu et al. 2025; OpenRLHF reinforce_baseline): r - group mean, returns, whitened"))
register_algorithm(AlgorithmSpec(
    "gspo", SEQUENCE, "gspo", group_baseline="mean_std", requires={"loss_agg": "seq-mean-token-mean"},
    source="GSPO (Zheng et al. 2025): sequence-level ratio and clipping, mean over sequences"))
register_algorithm(AlgorithmSpec(
    "cispo", SEQUENCE, "cispo", group_baseline="mean_std", requires={"loss_agg": "token-mean"},
    source="CISPO (MiniMax-M1 2025): clipped stop-gradient importance weights, token mean"))


# ---- the off-policy corrections (algorithm.importance_correction) --------------------------------
declare_correction(CorrectionSpec("none", reweights=False, source="no correction"))
declare_correction(CorrectionSpec(
    "tis", reweights=True, reads=("importance_cap",),
    source="truncated IS, min(rho, cap) per token (Yao et al. 2025, 'Your Efficient RL Framework Secretly Brings You "
           "Off-Policy RL Training'; verl rollout_is truncate mode)"))
declare_correction(CorrectionSpec(
    "mis", reweights=True, reads=CORRECTION_SETTINGS,
    source="masked IS: tokens or sequences whose ratio leaves [low, cap] dropped, the rest weighted by it "
           "(verl mismatch_helper.compute_rollout_importance_weights, mask mode; Liu, Li et al. 2025)"))
declare_correction(CorrectionSpec(
    "icepop", reweights=True, reads=("importance_cap", "importance_low"),
    source="IcePop (Ling Team 2025, Ring-1T arXiv 2510.18855): tokens whose train/inference ratio leaves "
           "[alpha, beta] dropped, the rest weighted by it"))
declare_correction(CorrectionSpec(
    "decoupled", reweights=True, reads=("importance_cap",), cap_optional=True,
    source="decoupled PPO (Hilton et al. 2021, arXiv 2110.00641; AReaL, Fu et al. 2025, arXiv 2505.24298): "
           "behaviour weight pi_prox / pi_behav, tokens above behav_imp_weight_cap dropped"))
