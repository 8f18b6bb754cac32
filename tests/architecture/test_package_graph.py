"""megarl's packages form layers: an import of megarl.X.Y from a module of megarl.Z is an arrow Z -> X,
and the arrows between packages have no circle.

The arrows are read from the source as in test_import_graph (every import, at module level or in a
function; not under `if TYPE_CHECKING:`). A top-level module (megarl/doctor.py) is a package of its
own; megarl/__init__.py is `megarl`. The layers below are the README's ("Architecture"): a package
may import packages on lower floors only, and the README lists the same floors.
"""

from __future__ import annotations

import re
from pathlib import Path

from test_import_graph import PACKAGE_ROOT, find_cycles, import_graph

# Bottom to top. A package imports only packages on floors below its own.
LAYERS: list[tuple[str, ...]] = [
    ("megarl", "runtime", "kernels", "datasets", "model_configs", "sandbox"),
    ("monitoring", "models", "algorithms", "rewards"),
    ("checkpoint",),
    ("model_source",),
    ("rollout",),
    ("data",),
    ("evaluation", "demo"),
    ("config",),
    ("train", "launch"),
    ("commands", "cli", "doctor"),
]
README = PACKAGE_ROOT.parent / "README.md"


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, dict[str, list[tuple[str, str]]]]:
    """{package: {package it imports: [(importing module, imported module), ...]}}."""
    graph: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for module, targets in import_graph().items():
        arrows = graph.setdefault(package_of(module), {})
        for target in sorted(targets):
            if package_of(target) != package_of(module):
                arrows.setdefault(package_of(target), []).append((module, target))
    return graph


def one_circle(graph: dict[str, dict], members: list[str]) -> list[str]:
    """A closed walk through a strongly connected component: [a, b, ..., a]."""
    inside = set(members)
    start = members[0]
    parents = {start: None}
    queue = [start]
    while queue:  # breadth-first, for the shortest circle back to `start`
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                walk = [node]
                while parents[walk[-1]] is not None:
                    walk.append(parents[walk[-1]])
                return [start, *reversed(walk[:-1]), start] if len(walk) > 1 else [start, node, start]
            if target in inside and target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError(f"{members} is not strongly connected")


def describe(graph: dict[str, dict], circle: list[str]) -> str:
    steps = []
    for here, there in zip(circle, circle[1:]):
        module, target = graph[here][there][0]
        steps.append(f"{here} -> {there} ({module} imports {target})")
    return "; ".join(steps)


def test_the_circle_finder_names_the_arrows():
    graph = {"a": {"b": [("megarl.a.x", "megarl.b.y")]}, "b": {"c": [("megarl.b.y", "megarl.c")]},
             "c": {"a": [("megarl.c", "megarl.a.z")]}, "d": {"a": [("megarl.d", "megarl.a")]}}
    assert find_cycles({name: set(arrows) for name, arrows in graph.items()}) == [["a", "b", "c"]]
    circle = one_circle(graph, ["a", "b", "c"])
    assert circle == ["a", "b", "c", "a"]
    assert describe(graph, circle) == ("a -> b (megarl.a.x imports megarl.b.y); b -> c (megarl.b.y imports megarl.c); "
                                       "c -> a (megarl.c imports megarl.a.z)")
    assert package_of("megarl.train.stages.update") == "train" and package_of("megarl") == "megarl"


def test_megarl_packages_import_each_other_without_a_circle():
    graph = package_graph()
    circles = [one_circle(graph, members) for members in find_cycles({p: set(a) for p, a in graph.items()})]
    assert not circles, "package circles (move the shared piece down a floor, or the importing code up): " + " | ".join(
        describe(graph, circle) for circle in circles)


def test_every_package_imports_only_lower_floors():
    floor = {package: level for level, packages in enumerate(LAYERS) for package in packages}
    graph = package_graph()
    unplaced = sorted(set(graph) - set(floor))
    assert not unplaced, f"packages on no floor of LAYERS (add them): {unplaced}"
    upward = [f"{package} -> {target} ({arrows[0][0]} imports {arrows[0][1]})"
              for package, targets in sorted(graph.items()) for target, arrows in sorted(targets.items())
              if floor[target] >= floor[package]]
    assert not upward, "imports of a package on the same or a higher floor: " + "; ".join(upward)


def test_cli_modules_are_imported_by_no_library_module():
    """The command-line modules sit on top: library code never imports one (the dispatcher does)."""
    def is_cli(module: str) -> bool:
        return package_of(module) in LAYERS[-1] or re.search(r"(^|_)cli$", module.rsplit(".", 1)[-1]) is not None

    graph = import_graph()
    wrong = [f"{module} imports {target}" for module, targets in sorted(graph.items()) if not is_cli(module)
             for target in sorted(targets) if is_cli(target)]
    assert not wrong, "; ".join(wrong)


def test_the_readme_shows_the_same_floors():
    text = README.read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| *\d+ *\|", line)]
    shown = [tuple(sorted(re.findall(r"`(\w+)`", row.split("|")[2]))) for row in rows]
    assert shown == [tuple(sorted(packages)) for packages in reversed(LAYERS)], shown


def test_no_library_module_imports_the_demo():
    """The demo is a plugin: it registers its models and prompt sets; only the `megarl` command loads it."""
    wrong = [f"{module} imports {target}" for module, targets in sorted(import_graph().items())
             if package_of(module) not in ("demo", "cli") for target in sorted(targets) if package_of(target) == "demo"]
    assert not wrong, "; ".join(wrong)


def test_the_trainer_loop_stays_a_page_of_stages():
    """megarl/train/trainer.py holds the loop and its state; stage code belongs in megarl/train/stages
    (issue 24 set the ceiling at the 364 lines it had when the stages were split out)."""
    lines = (PACKAGE_ROOT / "train" / "trainer.py").read_text().count("\n")
    assert lines <= 364, f"megarl/train/trainer.py has {lines} lines; move stage code into megarl/train/stages"
