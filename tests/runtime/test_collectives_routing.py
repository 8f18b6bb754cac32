"""Every collective in megarl/, kernels/ and tools/ goes through megarl.runtime.collectives.

The helpers there put tensors on the device the process group maps (the GPU under NCCL); a direct
torch.distributed call elsewhere is how CPU bookkeeping tensors reached an NCCL group before
("No backend type associated with device type cpu"). This test reads the source, so it also
covers code paths the CPU tests never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("megarl", "kernels", "tools")
ALLOWED = ROOT / "megarl" / "runtime"
COLLECTIVES = frozenset({
    "all_gather", "all_gather_into_tensor", "_all_gather_base", "all_gather_object", "all_reduce", "all_to_all",
    "all_to_all_single", "barrier", "batch_isend_irecv", "broadcast", "broadcast_object_list", "gather",
    "gather_object", "irecv", "isend", "monitored_barrier", "recv", "recv_object_list", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "_reduce_scatter_base", "scatter", "scatter_object_list", "send", "send_object_list",
})
MODULE = "torch.distributed"


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def direct_collectives(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: name` for each torch.distributed collective used in `source` directly:
    `dist.x` (any alias of torch.distributed), `torch.distributed.x`, `from torch.distributed import x`."""
    tree = ast.parse(source, filename)
    aliases = {MODULE}  # dotted names that mean torch.distributed in this file
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == MODULE and a.asname:
                    aliases.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases.update(a.asname or a.name for a in node.names if a.name == "distributed")
        elif isinstance(node, ast.ImportFrom) and node.module == MODULE:
            found += [f"{filename}:{node.lineno}: from {MODULE} import {a.name}" for a in node.names if a.name in COLLECTIVES]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and _dotted(node.value) in aliases:
            found.append(f"{filename}:{node.lineno}: {_dotted(node)}")
    return found


def test_detector_sees_every_spelling():
    source = (
        "import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
        "from torch.distributed import all_gather_object, get_rank\n"
        "dist.all_reduce(x)\ntorch.distributed.barrier()\nd2.broadcast(x, 0)\nf = dist.send\n"
        "dist.get_rank()\nother.all_reduce(x)\n"
    )
    found = direct_collectives(source)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "from torch.distributed import all_gather_object", "dist.all_reduce", "torch.distributed.barrier",
        "d2.broadcast", "dist.send",
    ])


def test_no_direct_collectives_outside_megarl_runtime():
    files = [p for top in SCANNED for p in sorted((ROOT / top).rglob("*.py")) if ALLOWED not in p.parents]
    assert len(files) > 50  # the scan really reads the tree
    found = [hit for p in files for hit in direct_collectives(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, (
        "direct torch.distributed collectives outside megarl/runtime/ (use megarl.runtime.collectives, which puts "
        "tensors on the group's device):\n" + "\n".join(found)
    )
