"""The algorithm registry is the one place that knows algorithms: config validation and the trainer ask it,
its entries are complete, and adding an algorithm is one entry."""

import ast
from pathlib import Path

import pytest

import megarl
from megarl.algorithms import advantages, losses  # noqa: F401  (registers the estimators and losses)
from megarl.algorithms.registry import (
    ALGORITHMS, SEQUENCE, AlgorithmSpec, algorithm_names, algorithm_settings, estimator_fn, get_algorithm, policy_loss_fn,
    register_algorithm,
)
from megarl.config import ConfigError, load_config

BASE = ["model.path=unused", "data.train=[toy-arith:rl_train]"]

# name: (estimator, loss, critic, group baseline, min n) -- the table the README shows
EXPECTED = {
    "ppo": ("gae", "ppo_clip", True, None, 1),
    "grpo": ("sequence", "ppo_clip", False, "mean_std", 2),
    "drgrpo": ("sequence", "ppo_clip", False, "mean", 2),
    "rloo": ("sequence", "ppo_clip", False, "leave_one_out", 2),
    "reinforce_pp": ("returns", "ppo_clip", False, None, 1),
    "reinforce_pp_baseline": ("returns", "ppo_clip", False, "mean", 2),
    "gspo": ("sequence", "gspo", False, "mean_std", 2),
    "cispo": ("sequence", "cispo", False, "mean_std", 2),
}


def _load(*overrides):
    return load_config(None, [*BASE, *overrides], check_files=False)


def test_registry_table_and_every_entry_has_its_functions():
    assert set(algorithm_names()) == set(EXPECTED)
    for name, (estimator, loss, critic, baseline, min_n) in EXPECTED.items():
        spec = get_algorithm(name)
        assert (spec.estimator.name, spec.policy_loss, spec.critic, spec.group_baseline, spec.min_n) == (
            estimator, loss, critic, baseline, min_n), name
        assert callable(estimator_fn(spec)) and callable(policy_loss_fn(spec))


def test_unknown_algorithm_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError) as err:
        _load("algorithm.name=foo")
    message = str(err.value)
    assert "\n" not in message and message.startswith("algorithm.name: 'foo' is not a registered algorithm; choose one of: ")
    assert all(name in message for name in EXPECTED)


@pytest.mark.parametrize("overrides,message", [
    (["algorithm.name=gspo"], r"algorithm.name=gspo needs algorithm.loss_agg=seq-mean-token-mean"),
    (["algorithm.name=cispo", "algorithm.loss_agg=seq-mean-token-mean"], r"algorithm.name=cispo needs algorithm.loss_agg=token-mean"),
    (["algorithm.name=drgrpo"], r"algorithm.name=drgrpo needs algorithm.loss_agg=seq-sum-constant"),
    (["algorithm.name=reinforce_pp_baseline", "rollout.n=1"], r"rollout.n=1: group baselines need at least 2 samples per prompt"),
    (["algorithm.name=cispo", "algorithm.kl_in_reward=true", "algorithm.kl_coef=0.1"],
     r"kl_in_reward=true needs token-level rewards \(ppo, reinforce_pp, reinforce_pp_baseline\), not cispo"),
    (["algorithm.name=ppo", "algorithm.whiten_advantages=true"], r"ppo's estimator \(gae\) whitens already"),
    (["algorithm.cispo_clip_low=1.5"], r"algorithm.cispo_clip_low=1.5: Input should be less than or equal to 1"),
])
def test_constraints_come_from_the_registry(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _load(*overrides)


# A valid value other than the default for each algorithm-specific setting.
CHANGED = {"gamma": 0.99, "lam": 0.95, "clip_low": 0.1, "clip_high": 0.28, "dual_clip": 3.0, "group_eps": 1e-5,
           "gspo_clip_low": 1e-4, "gspo_clip_high": 5e-4, "cispo_clip_low": 0.5, "cispo_clip_high": 2.0}


def _own_requirements(name):
    spec = get_algorithm(name)
    extra = ["algorithm.loss_constant=64"] if spec.requires.get("loss_agg") == "seq-sum-constant" else []
    return [f"algorithm.name={name}", *(f"algorithm.{k}={v}" for k, v in spec.requires.items()), *extra]


def test_gspo_refuses_clip_high_naming_the_setting_and_its_readers():
    with pytest.raises(ConfigError) as err:
        _load("algorithm.name=gspo", "algorithm.loss_agg=seq-mean-token-mean", "algorithm.clip_high=0.28")
    message = str(err.value)
    assert "\n" not in message
    assert message == ("algorithm: algorithm.name=gspo does not read algorithm.clip_high (read by: ppo, grpo, drgrpo, rloo, "
                       "reinforce_pp, reinforce_pp_baseline; it reads: gspo_clip_low, gspo_clip_high, group_eps); "
                       "remove clip_high=0.28")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_algorithm_takes_its_own_settings_and_refuses_the_others(name):
    assert set(algorithm_settings()) == set(CHANGED)
    reads = get_algorithm(name).reads
    own = [f"algorithm.{key}={CHANGED[key]}" for key in CHANGED if key in reads]
    cfg = _load(*_own_requirements(name), *own, "rollout.n=4")
    assert all(getattr(cfg.algorithm, key) == CHANGED[key] for key in CHANGED if key in reads)
    for key in set(CHANGED) - set(reads):
        with pytest.raises(ConfigError, match=rf"algorithm.name={name} does not read algorithm.{key} "):
            _load(*_own_requirements(name), f"algorithm.{key}={CHANGED[key]}")


def test_a_base_that_spells_out_defaults_can_switch_algorithm():
    """configs/base/simplerl_zoo.yaml writes clip_low and clip_high at their defaults: a recipe built on it may
    still run gspo (a value equal to the default is not given), but not with a changed clip."""
    recipe = Path(__file__).parents[2] / "configs" / "simplerl_zoo_qwen2.5_7b.yaml"
    switch = ["algorithm.name=gspo", "algorithm.loss_agg=seq-mean-token-mean"]
    assert load_config(recipe, switch, check_files=False).algorithm.name == "gspo"
    with pytest.raises(ConfigError, match="does not read algorithm.clip_low"):
        load_config(recipe, [*switch, "algorithm.clip_low=0.3"], check_files=False)


def test_registry_answers_critic_and_group_questions():
    assert _load("algorithm.name=ppo", "rollout.n=1").uses_critic
    assert not _load("algorithm.name=reinforce_pp", "rollout.n=1").uses_critic
    cfg = _load("algorithm.name=reinforce_pp_baseline", "algorithm.kl_in_reward=true", "algorithm.kl_coef=0.01")
    assert cfg.algorithm.gspo_clip_low == 3e-4 and cfg.algorithm.cispo_clip_high == 4.0 and not cfg.algorithm.whiten_advantages
    assert _load("algorithm.name=gspo", "algorithm.loss_agg=seq-mean-token-mean", "algorithm.whiten_advantages=true")


def test_a_loss_must_be_declared_with_what_it_reads():
    from megarl.algorithms.registry import register_policy_loss

    with pytest.raises(KeyError, match="policy loss 'not_declared' is not declared; add a PolicyLossSpec"):
        register_policy_loss("not_declared")


def test_adding_an_algorithm_is_one_entry():
    """A new entry (here: GRPO's baseline with the CISPO loss and whitening allowed) is accepted by the config
    and answered by the registry with no other change."""
    spec = register_algorithm(AlgorithmSpec("test_only_cispo_rloo", SEQUENCE, "cispo", group_baseline="leave_one_out"))
    try:
        cfg = _load("algorithm.name=test_only_cispo_rloo", "rollout.n=4", "algorithm.cispo_clip_high=2.0")
        assert not cfg.uses_critic and get_algorithm(cfg.algorithm.name) is spec
        assert spec.reads == ("cispo_clip_low", "cispo_clip_high")  # its loss's; leave_one_out reads nothing
        with pytest.raises(ConfigError, match="test_only_cispo_rloo does not read algorithm.group_eps"):
            _load("algorithm.name=test_only_cispo_rloo", "algorithm.group_eps=0.01")
        with pytest.raises(ConfigError, match="group baselines need at least 2"):
            _load("algorithm.name=test_only_cispo_rloo", "rollout.n=1")
        with pytest.raises(ValueError, match="registered twice"):
            register_algorithm(spec)
    finally:
        del ALGORITHMS["test_only_cispo_rloo"]


def _compares_an_algorithm_name(node: ast.AST, names: set[str]) -> bool:
    if not isinstance(node, ast.Compare):
        return False
    for side in [node.left, *node.comparators]:
        values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        if any(isinstance(v, ast.Constant) and v.value in names for v in values):
            return True
    return False


def test_no_algorithm_name_tests_outside_the_registry():
    """`x == "ppo"`, `name in ("grpo", ...)`: megarl/ asks the registry instead (before it, this found
    config.py lines 208, 329, 338, 348 and trainer.py line 556)."""
    root = Path(megarl.__file__).parent
    names = set(EXPECTED)
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "algorithms" / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if _compares_an_algorithm_name(node, names):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, found
