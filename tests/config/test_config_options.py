"""The config's option lists are the implementation's: loss aggregations and KL estimators (the algorithm
registry, which `megarl.kernels.losses` implements), weight-sync transports, prompt templates and
evaluation protocols are each listed once, and a bad choice is refused naming every valid one."""

import ast
from pathlib import Path

import pytest

import megarl.config.schema
from megarl.algorithms.registry import AGG_MODES, KL_KINDS
from megarl.config import ConfigError, load_config
from megarl.data.templates import TEMPLATES
from megarl.evaluation.protocols import PROTOCOL_NAMES
from megarl.rollout.transports import TRANSPORTS

BASE = ["model.path=unused", "data.train=[toy-arith:rl_train]"]
# (section class, field) whose choices the implementation lists
IMPORTED = {("AlgorithmConfig", "loss_agg"), ("AlgorithmConfig", "kl_type"), ("RolloutConfig", "transport"),
            ("EvalConfig", "protocol")}


def test_config_spells_no_option_list_of_its_own():
    """Each of those fields is `Literal[NAMES]` with NAMES imported (before: the names were written out twice)."""
    tree = ast.parse(Path(megarl.config.schema.__file__).read_text())
    seen = {}
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        for item in cls.body:
            if isinstance(item, ast.AnnAssign) and (cls.name, getattr(item.target, "id", None)) in IMPORTED:
                seen[(cls.name, item.target.id)] = ast.unparse(item.annotation)
    assert seen == {("AlgorithmConfig", "loss_agg"): "Literal[AGG_MODES]", ("AlgorithmConfig", "kl_type"): "Literal[KL_KINDS]",
                    ("RolloutConfig", "transport"): "Literal[TRANSPORTS]", ("EvalConfig", "protocol"): "Literal[PROTOCOL_NAMES]"}


def test_implementations_use_the_same_lists():
    from megarl.kernels import losses
    from megarl.rollout import weight_sync

    assert losses.AGG_MODES is AGG_MODES and losses.KL_KINDS is KL_KINDS and weight_sync.TRANSPORTS is TRANSPORTS


@pytest.mark.parametrize("override,choices", [
    ("algorithm.loss_agg=sum", AGG_MODES), ("algorithm.kl_type=k4", KL_KINDS), ("rollout.transport=nccl", TRANSPORTS),
    ("eval.protocol=foo", PROTOCOL_NAMES), ("data.template=foo", tuple(TEMPLATES)),
])
def test_a_bad_choice_is_one_line_listing_the_valid_ones(override, choices):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*BASE, override], check_files=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(override.split("=")[0])
    assert all(repr(choice) in message or choice in message for choice in choices), message
