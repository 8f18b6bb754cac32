"""tools/check_newest.sh runs named tests from this suite: each one it names must exist (a renamed test
made its conversion step fail with "not found" while every release was fine)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_tests_check_newest_runs_exist():
    script = (REPO / "tools" / "check_newest.sh").read_text()
    ids = re.findall(r'"?(tests/[\w/]+\.py(?:::[\w\[\]-]+)?)"?', script)
    assert ids, "check_newest.sh names no tests"
    for test_id in sorted(set(ids)):  # one at a time: pytest given a file and a missing test in it collects the file
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", test_id],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, (test_id, out.stdout[-3000:] + out.stderr[-2000:])
