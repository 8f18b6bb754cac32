"""Code, tests and docs cite only Markdown files the repository has (a file outside it, such as a design
note that was never committed, leaves the reader nowhere to look)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = ["megarl", "kernels", "tools", "tests", "docs", "slurm", "README.md"]
# Cited by name without being repository files: upstream projects' READMEs, and reports a tool writes.
NOT_REPOSITORY_FILES = {"README.md", "gpu_check.md"}
CITED = re.compile(r"[A-Za-z0-9_./-]+\.md\b")


def test_every_cited_markdown_file_is_in_the_repository():
    have = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    missing = []
    for top in SEARCHED:
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if path.suffix not in (".py", ".md", ".sh", ".j2", ".yaml", ".txt") or path == Path(__file__):
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for cited in CITED.findall(line):
                    name = cited.rsplit("/", 1)[-1]
                    if name not in have and name not in NOT_REPOSITORY_FILES:
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {cited}")
    assert not missing, "cited files that are not in the repository: " + "; ".join(missing)
