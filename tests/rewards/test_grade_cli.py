"""`megarl grade`: JSON Lines in and out, summary on stderr, clear errors with line numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megarl.commands.grade import main


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def test_grade_file_to_out(tmp_path, capsys):
    source = tmp_path / "rollouts.jsonl"
    write_jsonl(source, [
        {"id": "a", "response": "so \\boxed{\\frac12}", "answer": "0.5"},
        {"id": "b", "response": "so \\boxed{3}", "answer": "4", "finish_reason": {"type": "stop"}},
        {"id": "c", "response": " x </think> <answer>7</answer>", "answer": ["7", "seven"], "template": "r1"},
        {"id": "d", "response": "no box, 12", "answer": 12},
    ])
    out = tmp_path / "graded.jsonl"
    assert main([str(source), "--out", str(out), "--timeout", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["correct"] for r in rows] == [True, False, True, False]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert rows[0]["extracted"] == "\\frac12" and rows[3]["extracted"] is None
    assert rows[1]["finish_reason"] == {"type": "stop"}  # input fields are kept
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "accuracy 0.5000 (2/4)" in captured.err and "answers/s" in captured.err and "slowest answer" in captured.err


def test_grade_stdout_through_console_script(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [{"id": 1, "response": "\\boxed{2}", "answer": "2"}])
    run = subprocess.run([sys.executable, "-m", "megarl.cli", "grade", str(source), "--scheme", "simplerl"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["reward"] == 1.0
    assert "accuracy 1.0000" in run.stderr


@pytest.mark.parametrize("rows, message", [
    ([{"id": 1, "response": "x", "answer": "1"}, "{not json"], "line 2: not valid JSON"),
    ([{"id": 1, "response": "x"}], "line 1: missing field(s) answer"),
    ([{"id": 1, "answer": "1"}, {"id": 2, "response": "x", "answer": "1"}], "line 1: missing field(s) response"),
    ([{"id": 1, "response": "x", "answer": "1", "template": "llama"}], "line 1: unknown template 'llama'"),
    (["[1, 2]"], "line 1: expected a JSON object"),
])
def test_bad_input_names_the_line(tmp_path, capsys, rows, message):
    source = tmp_path / "bad.jsonl"
    write_jsonl(source, rows)
    out = tmp_path / "out.jsonl"
    assert main([str(source), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_missing_file(capsys):
    assert main(["/nonexistent/rollouts.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_grades_a_training_runs_samples_file_as_written(tmp_path, capsys):
    """samples.jsonl as the trainer's MetricsLogger writes it: `gold`, no `id`."""
    from megarl.monitoring.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, {}, wandb_mode="disabled")
    logger.record_samples(3, [{"prompt": "1+1=", "response": "\\boxed{2}", "gold": "2", "reward": 1.0},
                             {"prompt": "2+2=", "response": "\\boxed{5}", "gold": "4", "reward": 0.0}])
    capsys.readouterr()
    out = tmp_path / "graded.jsonl"
    assert main([str(tmp_path / "samples.jsonl"), "--out", str(out), "--template", "none"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False]
    assert [r["id"] for r in rows] == ["line 1", "line 2"] and rows[0]["step"] == 3
    assert "accuracy 0.5000 (1/2)" in capsys.readouterr().err
