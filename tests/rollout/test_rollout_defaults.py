"""Rollout defaults live once: the config's rollout section (megarl.config.RolloutConfig, which reads
megarl.rollout.protocol), and every library and CLI default of the same setting equals it.

Before this rule the client kept in flight 64 requests by default where the config said 256 (so
`megarl eval` and `megarl data filter`, which build the client without a recipe, used 64), the
built-in server batched 64 sequences where `megarl serve` batched 256, and the request timeout
was written in four files. Sampling defaults are SGLang's own, and the engine kind is never
tested by name outside megarl.rollout.engines (adding an engine is one entry there).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import typing
from pathlib import Path

import pytest

import megarl
from megarl.config import RolloutConfig

PACKAGE = Path(megarl.__file__).parent
# Modules whose functions and classes take rollout settings as parameters (client, server, fleet, CLIs).
MODULES = ["megarl.rollout.client", "megarl.rollout.server", "megarl.rollout.scheduler", "megarl.rollout.serve_cli",
           "megarl.rollout.fleet", "megarl.rollout.weight_sync", "megarl.rollout.engine", "megarl.rollout.commands",
           "megarl.launch.node_servers", "megarl.commands.eval", "megarl.data.cli"]
SETTINGS = ("request_timeout_s", "max_concurrency", "max_batch_sequences")


def _callables(module):
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield obj.__name__, obj
            for name, member in vars(obj).items():
                if inspect.isfunction(member):
                    yield f"{obj.__name__}.{name}", member
        elif inspect.isfunction(obj):
            yield obj.__name__, obj


def library_defaults() -> list[tuple[str, str, object]]:
    """(where, setting, default) of every parameter or argparse flag named like a rollout setting."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for where, obj in _callables(module):
            try:
                parameters = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            found += [(f"{name}.{where}", key, p.default) for key, p in parameters.items()
                      if key in SETTINGS and p.default is not inspect.Parameter.empty]
        parser = getattr(module, "build_parser", None)
        if parser is not None:
            actions = parser()._actions
            found += [(f"{name} --{a.dest.replace('_', '-')}", a.dest, a.default) for a in actions
                      if isinstance(a, argparse.Action) and a.dest in SETTINGS]
    return found


def test_library_and_cli_defaults_are_the_configs():
    config = RolloutConfig()
    found = library_defaults()
    seen = {setting for _, setting, _ in found}
    # the client's two settings and the server's batch size are found (the scan sees what it checks)
    assert {"request_timeout_s", "max_concurrency"} <= seen
    differ = [f"{where}: {setting}={default!r} but rollout.{setting}={getattr(config, setting, None)!r}"
              for where, setting, default in found if default != getattr(config, setting, object())]
    assert not differ, "a rollout default differs from the config's: " + "; ".join(differ)


def test_the_clis_without_a_recipe_build_clients_with_the_library_defaults():
    """`megarl eval` and `megarl data filter` pass no concurrency or timeout of their own to RolloutClient."""
    for path in (PACKAGE / "commands" / "eval.py", PACKAGE / "data" / "cli.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", getattr(node.func, "attr", None)) == "RolloutClient"]
        assert calls, f"{path} builds no RolloutClient any more; update this test"
        for call in calls:
            given = {k.arg for k in call.keywords} & set(SETTINGS)
            assert not given, f"{path}:{call.lineno} passes {given} to RolloutClient; take the defaults"


def sglang_sampling_defaults() -> dict[str, object] | None:
    """Field defaults of SGLang's SamplingParams, read from the installed source with ast (importing it loads torch)."""
    spec = importlib.util.find_spec("sglang")
    path = Path(spec.submodule_search_locations[0]) / "srt" / "sampling" / "sampling_params.py" if spec else None
    if path is None or not path.exists():
        return None
    tree = ast.parse(path.read_text())
    arithmetic = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)  # e.g. TOP_K_ALL = 1 << 30
    constants = {t.id: eval(ast.unparse(node.value), {"__builtins__": {}}) for node in tree.body  # noqa: S307
                 if isinstance(node, ast.Assign) and all(isinstance(n, arithmetic) for n in ast.walk(node.value))
                 for t in node.targets if isinstance(t, ast.Name)}
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SamplingParams")
    return {s.target.id: constants[s.value.id] if isinstance(s.value, ast.Name) else ast.literal_eval(s.value)
            for s in cls.body if isinstance(s, ast.AnnAssign) and s.value is not None}


def test_sampling_defaults_are_sglangs():
    """megarl's SamplingParams (client and built-in server alike) defaults to what SGLang does without the field."""
    from megarl.rollout.protocol import TOP_K_ALL, SamplingParams

    theirs = sglang_sampling_defaults()
    if theirs is None:
        pytest.skip("sglang is not installed (pip install --no-deps sglang)")
    ours = SamplingParams()
    for name in SamplingParams.field_names():
        value = getattr(ours, name)
        value = TOP_K_ALL if name == "top_k" and value == -1 else value  # -1: SGLang's API spelling of "all"
        value = None if value == [] else value  # an empty stop list is not sent: SGLang's None
        assert name in theirs and value == theirs[name], f"SamplingParams.{name}={value!r}, SGLang's default {theirs.get(name)!r}"


def test_sampling_params_round_trip_through_the_wire():
    from megarl.rollout.protocol import SamplingParams

    sent = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=20, min_p=0.05, stop=["\n"],
                          stop_token_ids=[3], ignore_eos=True, skip_special_tokens=False, no_stop_trim=True,
                          sampling_seed=11)
    assert SamplingParams.from_request(sent.to_request(n=4)) == SamplingParams(**{**vars(sent), "n": 4})
    assert "stop" not in SamplingParams().to_request()  # SGLang's default (None), not []


def test_engines_are_one_table():
    from megarl.rollout.engines import ENGINE_NAMES, ENGINES, get_engine

    assert set(typing.get_args(RolloutConfig.model_fields["engine"].annotation)) == set(ENGINE_NAMES) == set(ENGINES)
    with pytest.raises(ValueError, match=r"rollout engine 'sglan' is unknown; did you mean 'sglang'\?"):
        get_engine("sglan")
    tests = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "rollout" / "engines.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in ENGINE_NAMES for c in [node.left, *node.comparators]):
                tests.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not tests, "the engine is tested by name; read its megarl.rollout.engines entry instead: " + ", ".join(tests)
