"""SGLang 0.5.23's own `SchedulerWeightUpdaterManager`, importable on a CPU box without SGLang's GPU stack.

`sglang/srt/managers/scheduler_components/weight_updater.py` is imported from the installed package and
runs unchanged. Three of its imports pull in, through `sglang.srt.configs` and the scheduler, packages that
CI does not install (torchvision, tvm_ffi, compressed_tensors, ...). Only those three imports get stand-ins,
and each stand-in is built from SGLang's own source: the definitions the manager uses are compiled from the
installed files (read with `ast`, not imported):

- `sglang.srt.managers.io_struct`: the request/response structs it imports (`BaseReq` and the classes they
  need), with their real fields, defaults and msgspec semantics;
- `sglang.srt.disaggregation.utils`: `DisaggregationMode`;
- `sglang.srt.utils.weight_checker`: `overall_checksum`.

The stand-ins leave SGLang's names in `sys.modules` once the manager's module is imported (they stay
under `megarl_test_standin.<name>`, where their structs resolve their annotations). The manager's collaborators (the TP
worker and its model runners, the scheduler, the cache flush) are constructor arguments; `FakeWorker` records
what reaches them. Its TP CPU group is a real gloo group of one rank (the manager barriers on it).
"""

from __future__ import annotations

import ast
import datetime
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch.distributed as dist

MANAGER_MODULE = "sglang.srt.managers.scheduler_components.weight_updater"
STANDIN_PREFIX = "megarl_test_standin."  # stand-ins stay importable under this name only
_STANDINS = {
    "sglang.srt.managers.io_struct": None,  # the names the manager imports (filled from its source)
    "sglang.srt.disaggregation.utils": ["DisaggregationMode"],
    "sglang.srt.utils.weight_checker": ["overall_checksum"],
}


def _source_path(module: str) -> Path:
    parent, _, leaf = module.rpartition(".")
    spec = importlib.util.find_spec(parent)  # imports the parent package only
    return Path(spec.submodule_search_locations[0]) / f"{leaf}.py"


def _imported_names(tree: ast.Module, module: str) -> list[str]:
    return [a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == module for a in n.names]


def _standin(module: str, names: list[str]) -> types.ModuleType:
    """A module holding SGLang's own definitions of `names` (and the definitions they refer to)."""
    path = _source_path(module)
    tree = ast.parse(path.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    wanted, todo = set(), list(names)
    while todo:  # close over referenced top-level definitions (bases, annotations)
        name = todo.pop()
        if name in wanted or name not in defs:
            continue
        wanted.add(name)
        todo.extend(n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name))
    missing = set(names) - wanted
    if missing:
        raise ImportError(f"{path} defines no {sorted(missing)}: this stand-in is written for sglang 0.5.23")
    header = ("from __future__ import annotations\nimport hashlib\nfrom enum import Enum\n"
              "from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union\nimport msgspec\n"
              "from sglang.srt.utils.msgspec_utils import Base64Bytes, msgspec_struct_pydantic_core_schema\n")
    body = ast.Module(body=[n for n in tree.body if getattr(n, "name", None) in wanted], type_ignores=[])
    standin = types.ModuleType(STANDIN_PREFIX + module)  # its classes name it (msgspec resolves annotations there)
    standin.__file__ = str(path)
    sys.modules[standin.__name__] = standin
    exec(compile(header, f"<stand-in header of {module}>", "exec"), standin.__dict__)
    exec(compile(body, str(path), "exec"), standin.__dict__)
    return standin


def import_manager_module() -> types.ModuleType:
    """The installed `weight_updater` module (SGLang's code, unchanged), imported once."""
    if MANAGER_MODULE in sys.modules:
        return sys.modules[MANAGER_MODULE]
    manager_path = _source_path(MANAGER_MODULE)
    tree = ast.parse(manager_path.read_text())
    installed = []
    try:
        for module, names in _STANDINS.items():
            try:
                importlib.import_module(module)
                continue  # importable here: use the real one
            except ImportError:
                pass
            sys.modules[module] = _standin(module, names or _imported_names(tree, module))
            installed.append(module)
        return importlib.import_module(MANAGER_MODULE)
    finally:
        for module in installed:  # nothing else in this process sees a stand-in
            sys.modules.pop(module, None)


class Recorder:
    """What reached the manager's collaborators, in order."""

    def __init__(self):
        self.calls: list[tuple] = []


class FakeRunnerUpdater:
    """A model runner's `weight_updater`: what the manager calls on the GPU side, recorded."""

    def __init__(self, log: Recorder):
        self.log = log

    def begin_weight_update(self):
        self.log.calls.append(("runner.begin",))

    def end_weight_update(self, *, run_post_load):
        self.log.calls.append(("runner.end", run_post_load))

    def update_weights_from_tensor(self, named_tensors, load_format=None):
        self.log.calls.append(("runner.tensor", load_format, len(named_tensors)))
        return True, "Success"

    def receive_weights_from_distributed(self, names, dtypes, shapes, group_name, load_format):
        self.log.calls.append(("runner.receive", tuple(names), group_name, load_format))
        return list(zip(names, shapes))

    def load_weights_from_distributed(self, weights):
        self.log.calls.append(("runner.load", len(weights)))
        return True, "Succeeded to update parameter online."

    def update_weights_from_disk(self, model_path, load_format, recapture_cuda_graph=False):
        self.log.calls.append(("runner.disk", model_path))
        return True, "Succeeded to update model weights."


class FakeWorker:
    """The TP worker: one target runner; deserializes its own rank's payload as SGLang's worker does."""

    def __init__(self, log: Recorder):
        self.runner = types.SimpleNamespace(weight_updater=FakeRunnerUpdater(log))
        self.model_runner = self.runner
        self.log = log

    def weight_update_runners(self):
        return [("target", self.runner)]

    def deserialize_own_rank(self, serialized):
        self.log.calls.append(("worker.deserialize", len(serialized)))
        return [("payload", serialized[0])]

    def init_weights_update_group(self, recv_req):
        self.log.calls.append(("worker.init_group", recv_req.group_name))
        return True, "Succeeded to initialize group."

    def destroy_weights_update_group(self, recv_req):
        self.log.calls.append(("worker.destroy_group", recv_req.group_name))
        return True, "Succeeded to destroy group."


class FakeScheduler:
    def __init__(self, log: Recorder):
        self.log = log

    def record_weight_version_change(self, new_version):
        self.log.calls.append(("scheduler.version", new_version))


def one_rank_gloo_group():
    """A real gloo group of one rank for the manager's TP CPU group barrier (no default group needed)."""
    store = dist.HashStore()
    return dist.ProcessGroupGloo(store, 0, 1, datetime.timedelta(seconds=30))


def build_manager(module: types.ModuleType, log: Recorder):
    """SGLang's manager with recorded collaborators; its TP CPU group comes through SGLang's own
    `get_parallel().override(tp_group=...)`, as the scheduler's process groups would provide it."""
    from sglang.srt.runtime_context import get_parallel

    tp_group = types.SimpleNamespace(cpu_group=one_rank_gloo_group())
    with get_parallel().override(tp_group=tp_group):
        return module.SchedulerWeightUpdaterManager(
            tp_worker=FakeWorker(log), draft_worker=None, memory_saver_adapter=None,
            flush_cache=lambda empty_cache=False: log.calls.append(("flush", empty_cache)) or True,
            is_fully_idle=lambda **_: True, scheduler=FakeScheduler(log))
