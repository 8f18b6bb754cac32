"""One place names CUDA: `megarl/runtime/` (device.py picks the device; megatron_on_cpu.py and
collectives.py adapt Megatron and torch.distributed around it). Everything else asks those helpers,
so this walks the source of megarl/, kernels/ and tools/ and fails on a `torch.cuda` attribute or a
"cuda" device string anywhere else (docstrings and comments may still mention CUDA)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "cuda" and isinstance(node.value, ast.Name) and node.value.id == "torch":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: torch.cuda")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value.strip().lower()
            if text == "cuda" or text.startswith("cuda:"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_only_the_runtime_package_names_cuda():
    offences = []
    for top in ("megarl", "kernels", "tools"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.is_relative_to(ROOT / "megarl" / "runtime"):
                continue
            offences += _offences(path)
    assert not offences, "name the device through megarl.runtime.device instead:\n" + "\n".join(offences)
