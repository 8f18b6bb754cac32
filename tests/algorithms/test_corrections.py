"""The off-policy corrections (algorithm.importance_correction) on hand-computed cases and against a plain
Python reference, their masking at token and sequence level, how a weight reaches the loss, the registry
and config validation, and the old-log-prob plan they need."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_utils import free_port
from test_registry import _compares_an_algorithm_name  # any names: here the corrections'

import megarl
from megarl.algorithms import corrections
from megarl.algorithms.losses import LossNormalizer, actor_loss
from megarl.algorithms.registry import (
    CORRECTION_FNS, CORRECTIONS, CorrectionSpec, correction_fn, correction_names, declare_correction, get_correction,
    register_correction,
)
from megarl.config import AlgorithmConfig, ConfigError, load_config
from megarl.algorithms.losses import LossTargets
from megarl.train.batch import TrainSequence, build_microbatches
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors
from megarl.train.stages.update import UpdateTotals, attach_targets, correction_metrics

BASE = ["model.path=unused", "data.train=[toy-arith:rl_train]"]

# Two sequences: 4 response tokens, then 3 (one padding slot). The test gives the ratios
# rho = pi_prox / pi_behav per token; the log-probs below are built so that exp(prox - behav) = rho.
RHO = [[0.25, 1.0, 3.0, 1.5], [0.8, 2.5, 1.2, 1.0]]
MASK = torch.tensor([[True, True, True, True], [True, True, True, False]])


def _logps(rho=RHO, mask=MASK):
    prox = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.7, -1.3, -0.2, -3.0]], dtype=torch.float64)
    behav = prox - torch.tensor(rho, dtype=torch.float64).log()
    return prox, behav, mask


def _run(name, **settings):
    prox, behav, mask = _logps()
    algo = AlgorithmConfig(importance_correction=name, **settings)
    return correction_fn(get_correction(name))(prox, behav, mask, algo)


def _check(out, weights, masked, weight_mean, ratio_mean, masked_frac, truncated_frac=0.0):
    torch.testing.assert_close(out.weights, torch.tensor(weights, dtype=torch.float64), atol=1e-6, rtol=0)
    assert out.dropped.tolist() == masked
    stats = {k: float(v) for k, v in out.stats.items()}
    assert stats == pytest.approx({"weight_mean": weight_mean, "ratio_mean": ratio_mean, "masked_frac": masked_frac,
                                   "truncated_frac": truncated_frac, "tokens": 7.0}, abs=1e-6)


F, T = False, True
ALL_KEPT = [[F, F, F, F], [F, F, F, F]]
RHO_MEAN = (0.25 + 1 + 3 + 1.5 + 0.8 + 2.5 + 1.2) / 7  # 10.25 / 7, over the 7 real tokens


def test_none_weighs_every_token_one():
    _check(_run("none"), [[1, 1, 1, 1], [1, 1, 1, 0]], ALL_KEPT, 1.0, 1.0, 0.0)


def test_tis_by_hand():
    """min(rho, 2): 3.0 -> 2 and 2.5 -> 2 (2 of 7 truncated); weights sum 0.25+1+2+1.5+0.8+2+1.2 = 8.75, mean 1.25.
    The padding slot (rho 1) weighs 0."""
    _check(_run("tis", importance_cap=2.0), [[0.25, 1, 2, 1.5], [0.8, 2, 1.2, 0]], ALL_KEPT, 8.75 / 7, RHO_MEAN, 0.0,
           truncated_frac=2 / 7)


def test_tis_far_off_policy_token_keeps_weights_and_statistics_finite():
    """A log-ratio of 100 overflows exp in float32: the weight is the cap, the ratio statistic exp(20)-bounded."""
    prox, behav = torch.tensor([[0.0, -1.0]]), torch.tensor([[-100.0, -1.0]])
    out = corrections.truncated_is(prox, behav, torch.tensor([[T, T]]), AlgorithmConfig(importance_correction="tis"))
    assert out.weights.tolist() == [[2.0, 1.0]] and all(math.isfinite(float(v)) for v in out.stats.values())


def test_mis_token_level_by_hand():
    """Bounds [1/2, 2] (importance_low defaults to 1 / cap, verl's default): 0.25 < 0.5, 3.0 > 2 and 2.5 > 2
    are dropped; kept tokens keep their untruncated ratio: 1 + 1.5 + 0.8 + 1.2 = 4.5, mean 4.5 / 7."""
    _check(_run("mis", importance_cap=2.0), [[0, 1, 0, 1.5], [0.8, 0, 1.2, 0]],
           [[T, F, T, F], [F, T, F, F]], 4.5 / 7, RHO_MEAN, 3 / 7)


def test_mis_sequence_level_by_hand():
    """Sequence ratio = product of its token ratios: 0.25 * 1 * 3 * 1.5 = 1.125 (in [0.5, 2]: all 4 tokens kept,
    each weighted 1.125) and 0.8 * 2.5 * 1.2 = 2.4 (> 2: all 3 dropped). ratio_mean is the token mean of the
    sequence ratios: (4 * 1.125 + 3 * 2.4) / 7 = 11.7 / 7."""
    _check(_run("mis", importance_cap=2.0, importance_level="sequence"), [[1.125] * 4, [0, 0, 0, 0]],
           [[F, F, F, F], [T, T, T, F]], 4.5 / 7, 11.7 / 7, 3 / 7)


def test_mis_geometric_level_by_hand():
    """Geometric mean of the token ratios: 1.125 ** (1/4) = exp(0.1177830 / 4) = 1.0298836 (in [0.9, 1.2]: kept) and
    2.4 ** (1/3) = exp(0.8754687 / 3) = 1.3388659 (> 1.2: dropped)."""
    a, b = 1.0298836, 1.3388659
    _check(_run("mis", importance_cap=1.2, importance_low=0.9, importance_level="geometric"), [[a] * 4, [0, 0, 0, 0]],
           [[F, F, F, F], [T, T, T, F]], 4 * a / 7, (4 * a + 3 * b) / 7, 3 / 7)


def test_icepop_by_hand():
    """M(rho; alpha=0.5, beta=5) = rho on [0.5, 5], else 0: only 0.25 is out; kept tokens weighted by rho:
    1 + 3 + 1.5 + 0.8 + 2.5 + 1.2 = 10, mean 10 / 7."""
    _check(_run("icepop", importance_low=0.5, importance_cap=5.0), [[0, 1, 3, 1.5], [0.8, 2.5, 1.2, 0]],
           [[T, F, F, F], [F, F, F, F]], 10 / 7, RHO_MEAN, 1 / 7)


def test_decoupled_by_hand():
    """Behaviour weight pi_prox / pi_behav, tokens above the cap (2) dropped, no lower bound (0.25 kept):
    0.25 + 1 + 1.5 + 0.8 + 1.2 = 4.75; without a cap every token keeps its ratio."""
    _check(_run("decoupled", importance_cap=2.0), [[0.25, 1, 0, 1.5], [0.8, 0, 1.2, 0]],
           [[F, F, T, F], [F, T, F, F]], 4.75 / 7, RHO_MEAN, 2 / 7)
    _check(_run("decoupled", importance_cap=None), [[0.25, 1, 3, 1.5], [0.8, 2.5, 1.2, 0]], ALL_KEPT, RHO_MEAN, RHO_MEAN, 0.0)


# ---- against a plain Python reference ------------------------------------------------------------
def _reference(name, prox, behav, mask, algo):
    """Per-element weights, written from each source's formula with Python floats."""
    high = algo.importance_cap
    low = algo.importance_low if algo.importance_low is not None else (1 / high if high else 0.0)
    out = []
    for p_row, b_row, m_row in zip(prox.tolist(), behav.tolist(), mask.tolist()):
        lr = [p - b for p, b, m in zip(p_row, b_row, m_row) if m]
        if name == "mis" and algo.importance_level == "sequence":
            seq = math.exp(max(min(sum(lr), 20), -20))
        elif name == "mis" and algo.importance_level == "geometric":
            seq = math.exp(max(min(sum(lr) / max(len(lr), 1), 20), -20))
        row = []
        for p, b, m in zip(p_row, b_row, m_row):
            if not m:
                row.append(0.0)
                continue
            rho = math.exp(max(min(p - b, 20), -20))
            if name == "none":
                w = 1.0
            elif name == "tis":
                w = min(math.exp(p - b), high)
            elif name == "decoupled":
                w = rho if high is None or rho <= high else 0.0
            else:  # mis, icepop
                r = seq if name == "mis" and algo.importance_level != "token" else rho
                w = r if low <= r <= high else 0.0
            row.append(w)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


# (name, settings, drops tokens on this batch)
CASES = [("none", {}, False), ("tis", {"importance_cap": 1.5}, False), ("mis", {"importance_cap": 1.6}, True),
         ("mis", {"importance_cap": 3.0, "importance_low": 0.7, "importance_level": "sequence"}, True),
         ("mis", {"importance_cap": 1.3, "importance_level": "geometric"}, True),
         ("icepop", {"importance_low": 0.5, "importance_cap": 5.0}, True), ("icepop", {"importance_cap": 1.4}, True),
         ("decoupled", {"importance_cap": 1.5}, True), ("decoupled", {"importance_cap": None}, False)]


@pytest.mark.parametrize("name,settings,drops", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_python_reference(name, settings, drops):
    g = torch.Generator().manual_seed(7)
    prox = torch.randn(6, 9, generator=g, dtype=torch.float64) - 2
    behav = prox + 0.5 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    behav[0, 0] = prox[0, 0] + 30.0  # a far-off-policy token: rho = exp(-30), clamped to exp(-20) where the source does
    lengths = torch.tensor([9, 7, 5, 3, 1, 0])
    mask = torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)
    algo = AlgorithmConfig(importance_correction=name, **settings)
    out = correction_fn(get_correction(name))(prox, behav, mask, algo)
    want = _reference(name, prox, behav, mask, algo)
    torch.testing.assert_close(out.weights, want, atol=1e-12, rtol=1e-12)
    dropped = (want == 0) & mask
    assert out.dropped.tolist() == dropped.tolist() and bool(dropped.any()) == drops
    assert float(out.stats["masked_frac"]) == pytest.approx(float(dropped.sum() / mask.sum()))
    assert float(out.stats["weight_mean"]) == pytest.approx(float(want.sum() / mask.sum()))


# ---- masking semantics -----------------------------------------------------------------------------
def test_sequence_level_keeps_or_drops_a_sequence_whole_and_token_level_token_by_token():
    """The same log-ratios at both levels: sequence 0's tokens are each in bounds but their product is not
    (1.9 ** 3 = 6.859 > 4), so token level keeps all three and sequence level drops all three; sequence 1
    has one far token (rho 10) between two that cancel it (0.3 * 10 * 0.3 = 0.9), so token level drops
    that one token and sequence level keeps all three."""
    prox, behav, mask = _logps(rho=[[1.9, 1.9, 1.9, 1.0], [0.3, 10.0, 0.3, 1.0]])
    mask = torch.tensor([[T, T, T, F], [T, T, T, F]])
    token = corrections.masked_is(prox, behav, mask, AlgorithmConfig(importance_correction="mis", importance_cap=4.0,
                                                                     importance_low=0.25))
    seq = corrections.masked_is(prox, behav, mask, AlgorithmConfig(importance_correction="mis", importance_cap=4.0,
                                                                   importance_low=0.25, importance_level="sequence"))
    assert token.dropped.tolist() == [[F, F, F, F], [F, T, F, F]]
    assert seq.dropped.tolist() == [[T, T, T, F], [F, F, F, F]]
    torch.testing.assert_close(seq.weights[1, :3].float(), torch.full((3,), 0.9), atol=1e-6, rtol=0)


def test_bounds_are_inclusive():
    """A ratio equal to a bound is kept (verl and slime test low <= rho <= high, AReaL rho <= cap): rho = 1
    exactly (equal log-probs) at importance_low = 1 (icepop) and at importance_cap = 1 (mis, decoupled)."""
    prox, behav, mask = _logps(rho=[[1.0, 0.5, 1.0, 1.0], [1.0, 1.5, 1.0, 1.0]])
    assert (torch.exp(prox - behav)[:, [0, 2, 3]] == 1).all()
    outside = [[F, T, F, F], [F, T, F, F]]  # 0.5 and 1.5
    ice = corrections.icepop(prox, behav, mask, AlgorithmConfig(importance_correction="icepop", importance_low=1.0,
                                                                importance_cap=1.2))
    mis = corrections.masked_is(prox, behav, mask, AlgorithmConfig(importance_correction="mis", importance_low=0.9,
                                                                   importance_cap=1.0))
    dec = corrections.decoupled(prox, behav, mask, AlgorithmConfig(importance_correction="decoupled", importance_cap=1.0))
    assert ice.dropped.tolist() == mis.dropped.tolist() == outside
    assert dec.dropped.tolist() == [[F, F, F, F], [F, T, F, F]]


def _targets(name, **settings):
    """Loss targets of the hand-computed batch with the correction's weights attached."""
    prox, behav, mask = _logps()
    algo = AlgorithmConfig(importance_correction=name, dual_clip=3.0, **settings)
    out = correction_fn(get_correction(name))(prox, behav, mask, algo)
    adv = torch.tensor([[1.0, -2.0, 0.5, -1.0], [2.0, 1.0, -0.5, 0.0]], dtype=torch.float64)
    return algo, out, LossTargets(loss_mask=mask, advantages=adv, old_logp=prox, behaviour_logp=behav,
                                  is_weights=out.weights)


def test_dropped_tokens_get_no_gradient_but_stay_in_the_token_mean():
    """Through the trainer's actor loss (grpo: PPO clip, token-mean over 7 tokens): a dropped token's
    log-prob gets zero gradient, a kept one's is the uncorrected gradient times its weight, both with
    the 7-token denominator (AReaL's and slime's convention: dropping does not rescale the others)."""
    algo, out, targets = _targets("icepop", importance_low=0.5, importance_cap=2.0)
    norm = LossNormalizer(tokens=7, sequences=2, num_microbatches=1, dp=1)
    logp = targets.old_logp.clone().requires_grad_(True)  # ratio 1: d loss / d logp_t = -A_t w_t / 7
    loss, _ = actor_loss(logp, torch.zeros_like(logp), targets, algo, norm)
    loss.backward()
    want = -targets.advantages * out.weights / 7
    torch.testing.assert_close(logp.grad, want, atol=1e-12, rtol=0)
    assert (logp.grad[out.dropped] == 0).all() and out.dropped.sum() == 3  # 0.25, 3.0, 2.5 are outside [0.5, 2]


def test_decoupled_loss_matches_areal_formula():
    """Decoupled PPO as AReaL writes it (realhf ppo_functional.actor_loss_fn): per-token PPO loss against the
    proximal policy (dual clip 3) times the behaviour weight, zero above the cap, summed over the loss mask and
    divided by its token count. The trainer's path (the weight multiplies the advantage) gives the same."""
    algo, out, targets = _targets("decoupled", importance_cap=2.0)
    g = torch.Generator().manual_seed(1)
    logp = targets.old_logp + 0.4 * torch.randn(targets.old_logp.shape, generator=g, dtype=torch.float64)
    norm = LossNormalizer(tokens=7, sequences=2, num_microbatches=1, dp=1)
    loss, _ = actor_loss(logp, torch.zeros_like(logp), targets, algo, norm)
    adv, prox, behav, mask = targets.advantages, targets.old_logp, targets.behaviour_logp, targets.loss_mask
    ratio = torch.exp(logp - prox)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - algo.clip_low, 1 + algo.clip_high))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * algo.dual_clip), pg)
    behav_w = torch.exp(prox - behav)
    behav_w = torch.where((behav_w <= algo.importance_cap) & mask, behav_w, torch.zeros_like(behav_w))
    want = torch.where(mask, pg * behav_w, torch.zeros_like(pg)).sum() / mask.sum()
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)


# ---- attach_targets and the update's statistics -------------------------------------------------------
def _seqs_and_tensors(with_behaviour=True):
    prox, behav, _ = _logps()
    seqs = [TrainSequence(prompt_ids=[1, 2], response_ids=[3, 4, 5, 6], reward=1.0, group=0),
            TrainSequence(prompt_ids=[1], response_ids=[7, 8, 9], reward=0.0, group=0)]
    tensors = [SequenceTensors(old_logp=prox[0].float(), advantages=torch.ones(4),
                               behaviour_logp=behav[0].float() if with_behaviour else None),
               SequenceTensors(old_logp=prox[1, :3].float(), advantages=torch.ones(3),
                               behaviour_logp=behav[1, :3].float() if with_behaviour else None)]
    return seqs, tensors


@pytest.fixture
def one_rank_group():
    """A default process group of this one process (the metrics' all-reduce needs one)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_attach_targets_weights_tokens_and_counts_statistics(one_rank_group):
    seqs, tensors = _seqs_and_tensors()
    mbs = build_microbatches(seqs, 64, torch.device("cpu"))
    totals = UpdateTotals()
    algo = AlgorithmConfig(importance_correction="mis", importance_cap=2.0)
    (mb,) = attach_targets(mbs, seqs, tensors, algo, totals)
    expected = {0: [0, 1, 0, 1.5], 1: [0.8, 0, 1.2, 0]}  # test_mis_token_level_by_hand
    for row, i in enumerate(mb.seq_ids):
        torch.testing.assert_close(mb.targets.is_weights[row], torch.tensor(expected[i]), atol=1e-6, rtol=0)
    attach_targets(mbs, seqs, tensors, algo, totals)  # a second epoch counts again: the means do not move
    metrics = correction_metrics(totals, reporter=True)
    assert metrics == pytest.approx({"is/weight_mean": 4.5 / 7, "is/ratio_mean": RHO_MEAN, "is/masked_frac": 3 / 7,
                                     "is/truncated_frac": 0.0}, abs=1e-6)
    assert correction_metrics(totals, reporter=False) == {}  # another TP rank's copy is not counted


def test_attach_targets_without_behaviour_logprobs_is_an_error():
    seqs, tensors = _seqs_and_tensors(with_behaviour=False)
    mbs = build_microbatches(seqs, 64, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"importance_correction=icepop needs the servers' behaviour log-prob .* 2 of 2"):
        attach_targets(mbs, seqs, tensors, AlgorithmConfig(importance_correction="icepop"), UpdateTotals())
    (mb,) = attach_targets(mbs, seqs, tensors, AlgorithmConfig(), UpdateTotals())  # none needs none
    assert mb.targets.is_weights is None


# ---- registry, config, plan ------------------------------------------------------------------------
def test_every_declared_correction_has_its_function():
    assert set(correction_names()) == {"none", "tis", "mis", "icepop", "decoupled"} == set(CORRECTION_FNS)
    assert all(CORRECTIONS[n].reweights == (n != "none") for n in CORRECTIONS)
    with pytest.raises(KeyError, match="not declared"):
        register_correction("not_declared")


def test_adding_a_correction_is_one_entry():
    """A declared spec and its registered function: the config accepts the name, checks its settings, and the
    plan recomputes the old log-probs for it, with no other change."""
    spec = declare_correction(CorrectionSpec("test_only_half", reweights=True, source="test"))
    try:
        register_correction("test_only_half")(lambda prox, behav, mask, algo: None)
        cfg = _load("algorithm.importance_correction=test_only_half", "rollout.mode=overlap")
        assert get_correction(cfg.algorithm.importance_correction) is spec and OldLogprobPlan.from_config(cfg).recompute
        with pytest.raises(ConfigError, match="test_only_half does not read algorithm.importance_cap"):
            _load("algorithm.importance_correction=test_only_half", "algorithm.importance_cap=3")
        with pytest.raises(ValueError, match="registered twice"):
            declare_correction(spec)
    finally:
        del CORRECTIONS["test_only_half"], CORRECTION_FNS["test_only_half"]


def _load(*overrides):
    return load_config(None, [*BASE, *overrides], check_files=False)


@pytest.mark.parametrize("overrides,message", [
    (["algorithm.importance_correction=foo"],
     r"^algorithm.importance_correction: 'foo' is not a registered importance correction; choose one of: "
     r"none, tis, mis, icepop, decoupled$"),
    (["algorithm.importance_correction=icepop", "algorithm.importance_level=sequence"],
     r"importance_correction=icepop does not read algorithm.importance_level \(read by: mis; it reads: importance_cap, "
     r"importance_low\); remove importance_level=sequence"),
    (["algorithm.importance_correction=tis", "algorithm.importance_low=0.5"],
     r"importance_correction=tis does not read algorithm.importance_low"),
    (["algorithm.importance_correction=mis", "algorithm.importance_cap=null"],
     r"importance_correction=mis needs algorithm.importance_cap"),
    (["algorithm.importance_correction=icepop", "algorithm.importance_low=3", "algorithm.importance_cap=2"],
     r"algorithm.importance_low=3.0 must be below algorithm.importance_cap=2.0"),
    (["algorithm.importance_correction=mis", "algorithm.importance_level=seq"], r"algorithm.importance_level='seq'"),
    (["algorithm.importance_cap=0"], r"algorithm.importance_cap=0: Input should be greater than 0"),
])
def test_config_errors_name_the_setting_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _load(*overrides)


def test_config_accepts_each_correction_with_its_settings():
    assert _load("algorithm.importance_correction=decoupled", "algorithm.importance_cap=null").algorithm.importance_cap is None
    cfg = _load("algorithm.importance_correction=mis", "algorithm.importance_level=geometric", "algorithm.importance_low=0.8")
    assert (cfg.algorithm.importance_cap, cfg.algorithm.importance_low) == (2.0, 0.8)
    # none reads nothing and ignores the rest, so a recipe's settings survive switching it off
    assert _load("algorithm.importance_correction=none", "algorithm.importance_level=sequence").algorithm.importance_level == "sequence"


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name", ["none", "tis", "mis", "icepop", "decoupled"])
def test_every_correction_recomputes_the_old_logprobs(name, overlap):
    """A correction needs the proximal (recomputed) log-probs and keeps the behaviour ones as its second input:
    no single pass, never the behaviour log-probs as the ratio's denominator; without one, off-policy rollouts
    take the ratio against the behaviour log-probs and on-policy one-epoch runs use a single pass."""
    plan = OldLogprobPlan.from_config(_load(f"algorithm.importance_correction={name}", f"rollout.mode={'overlap' if overlap else 'sync'}"))
    if name == "none":
        assert (plan.single_pass, plan.ratio_vs_behaviour, plan.recompute) == (True, overlap, False)
    else:
        assert (plan.single_pass, plan.ratio_vs_behaviour, plan.recompute) == (False, False, True)


def test_no_correction_name_tests_outside_the_registry():
    """`importance_correction == "tis"`: megarl/ asks the registry (`reweights`) instead (before it, this found
    train/stages/update.py:89)."""
    root = Path(megarl.__file__).parent
    names = set(correction_names()) - {"none"}  # "none" is also a value of other settings (data.template)
    found = [f"{path.relative_to(root)}:{node.lineno}" for path in sorted(root.rglob("*.py"))
             if path != root / "algorithms" / "registry.py"
             for node in ast.walk(ast.parse(path.read_text())) if _compares_an_algorithm_name(node, names)]
    assert not found, found
