"""Each default lives in one place: megarl.config. Components take the recipe's sections (or a
dataclass without defaults built from them), and the CLIs that run without a recipe build the same
sections from their flags, so no default is written twice and none can drift.

Before this rule, `OptimSettings` (models/training.py), `WorkerSettings` (train/workers.py),
`EvalSettings` (evaluation/harness.py) and a second `RewardConfig` (rewards/schemes.py) each
repeated the sections' defaults, and the trainer's evaluation graded with EvalSettings' own
5 s limit whatever `reward.timeout_s` said.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import typing
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

import megarl
from megarl import config
from megarl.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ParallelConfig,
    RewardConfig,
    Section,
)

PACKAGE = Path(megarl.__file__).parent

# component module -> the sections it is configured by (their fields must not get a second default there)
COMPONENTS = {
    "models/training.py": [ParallelConfig],
    "train/workers.py": [ParallelConfig],
    "evaluation/harness.py": [EvalConfig, RewardConfig, DataConfig],
    "rewards/schemes.py": [RewardConfig, DataConfig],
    "checkpoint/manager.py": [CheckpointConfig],
}


def _sections() -> list[type[Section]]:
    return [obj for obj in vars(config).values()
            if isinstance(obj, type) and issubclass(obj, Section) and obj not in (Section, config.Config)]


def _defaults_in(tree: ast.AST) -> list[tuple[str, object, int]]:
    """(name, literal value, line) of every function parameter default and class-level field default."""
    found = []

    def literal(node):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return ast.unparse(node)

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs = list(zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            found += [(a.arg, literal(d), d.lineno) for a, d in pairs]
        elif isinstance(node, ast.ClassDef):
            found += [(s.target.id, literal(s.value), s.lineno) for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None]
    return found


def repeated_defaults(source: str, sections: list[type[Section]]) -> list[str]:
    """Defaults in `source` that restate a field default of one of `sections` (same name, same value)."""
    own = {}
    for section in sections:
        for name, field in section.model_fields.items():
            if field.default is not PydanticUndefined:
                own.setdefault(name, []).append((section.__name__, field.default))
    hits = []
    for name, value, line in _defaults_in(ast.parse(source)):
        for section, default in own.get(name, []):
            if type(value) is type(default) and value == default:
                hits.append(f"line {line}: {name}={value!r} repeats {section}.{name}")
    return hits


def test_the_finder_sees_a_repeated_default():
    source = ("import dataclasses\n@dataclasses.dataclass\nclass S:\n    lr: float = 1e-6\n    kind: str = 'x'\n"
              "def wrap(model, clip_grad=1.0, other=3):\n    pass\n")
    assert sorted(repeated_defaults(source, [ParallelConfig])) == [
        "line 4: lr=1e-06 repeats ParallelConfig.lr", "line 6: clip_grad=1.0 repeats ParallelConfig.clip_grad"]
    assert repeated_defaults("def f(lr=2e-6, keep_last=2):\n    pass\n", [ParallelConfig]) == []


@pytest.mark.parametrize("module", sorted(COMPONENTS))
def test_components_restate_no_section_default(module):
    hits = repeated_defaults((PACKAGE / module).read_text(), COMPONENTS[module])
    assert not hits, f"megarl/{module}: take the section instead of restating its defaults: " + "; ".join(hits)


def test_no_second_class_named_like_a_section():
    names = {section.__name__ for section in _sections()}
    twins = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "config" / "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in names:
                twins.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} class {node.name}")
    assert not twins, "a second class named like a megarl.config section: " + "; ".join(twins)


def test_settings_built_from_sections_have_no_defaults():
    from megarl.evaluation.harness import EvalSettings
    from megarl.train.workers import WorkerSettings

    for settings, sections in ((WorkerSettings, {"parallel": ParallelConfig}),
                               (EvalSettings, {"eval": EvalConfig, "reward": RewardConfig})):
        with_default = [f.name for f in dataclasses.fields(settings)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert not with_default, f"{settings.__name__} has defaults for {with_default}; they belong in megarl.config"
        hints = typing.get_type_hints(settings, localns=vars(config))  # sections named as types only (TYPE_CHECKING)
        assert {name: hints[name] for name in sections} == sections


def test_eval_cli_takes_the_sections_defaults():
    from megarl.commands.eval import build_parser, eval_settings

    parser = build_parser()
    args = parser.parse_args(["--model", "m", "--benchmarks", "math500"])
    settings = eval_settings(args)
    assert settings.eval == EvalConfig(benchmarks=["math500"])
    assert settings.reward == RewardConfig()
    assert settings.template == DataConfig.model_fields["template"].default
    given = eval_settings(parser.parse_args(["--model", "m", "--n", "3", "--top-p", "0.9", "--extraction", "qwen-math"]))
    assert (given.eval.n, given.eval.top_p, given.reward.extraction) == (3, 0.9, "qwen-math")
    with pytest.raises(ConfigError, match=r"eval.n=0: Input should be greater than or equal to 1"):
        eval_settings(parser.parse_args(["--model", "m", "--n", "0"]))


def test_grade_cli_takes_the_sections_defaults(capsys):
    from megarl.commands.grade import build_parser, main, reward_section

    parser = build_parser()
    assert reward_section(parser.parse_args(["rows.jsonl"])) == RewardConfig()
    given = reward_section(parser.parse_args(["rows.jsonl", "--scheme", "simplerl", "--timeout", "2", "--extraction", "qwen-math"]))
    assert (given.scheme, given.timeout_s, given.extraction) == ("simplerl", 2.0, "qwen-math")
    assert main(["rows.jsonl", "--timeout", "0"]) == 2
    assert "reward.timeout_s=0.0: Input should be greater than 0" in capsys.readouterr().err


def test_worker_lr_schedule_comes_from_the_section():
    """Warmup over lr_warmup_ratio of the run's optimizer steps, then cosine down to min_lr
    (Megatron's OptimizerParamScheduler), checked against hand-computed values."""
    import torch

    from megarl.train.workers import _scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    par = ParallelConfig(lr=1e-3, min_lr=1e-4, lr_warmup_ratio=0.25, lr_schedule="cosine")
    scheduler = _scheduler(optimizer, par, optimizer_steps=8)  # warmup ceil(0.25 * 8) = 2 steps
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(8):
        scheduler.step(increment=1)
        lrs.append(optimizer.param_groups[0]["lr"])
    cosine = [1e-4 + 0.5 * (math.cos(math.pi * k / 6) + 1) * 9e-4 for k in range(1, 7)]
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, *cosine])
    constant = _scheduler(optimizer, ParallelConfig(lr=2e-6), optimizer_steps=8)
    assert optimizer.param_groups[0]["lr"] == 2e-6 and constant.lr_warmup_steps == 0
