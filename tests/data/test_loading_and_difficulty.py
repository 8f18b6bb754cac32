"""Data loading from every supported format, shipped sets, difficulty presets and overlap checks."""

from __future__ import annotations

import json

import pytest

from megarl.data import (
    TrainEvalOverlapError,
    check_no_overlap,
    drop_overlapping,
    find_overlap,
    load_difficulty_preset,
    load_records,
    select_by_level,
)
from megarl.data.cli import main as data_main
from megarl.datasets import EVAL_SETS, TRAIN_SETS, dataset_path, list_datasets, verify_checksums

ROWS = [
    {"id": "p1", "problem": "What is $1+1$?", "answer": "2", "level": 1, "subject": "Algebra"},
    {"id": "p2", "problem": "Solve $x^2=4$.", "answer": ["2", "-2"], "level": "Level 4"},
    {"id": "p3", "problem": "Compute 3*3.", "answer": 9, "source_note": "kept in extra"},
]


def check_rows(records):
    assert [r.id for r in records] == ["p1", "p2", "p3"]
    assert records[1].answer == ["2", "-2"] and records[2].answer == "9"
    assert [r.level for r in records] == [1, 4, None]
    assert records[2].extra == {"source_note": "kept in extra"}


def test_shipped_sets_are_complete_and_match_their_checksums():
    assert set(EVAL_SETS) | set(TRAIN_SETS) == set(list_datasets())
    assert all(verify_checksums().values())
    assert len(load_records("math500")) == 500 and len(load_records("gsm8k")) == 1319  # alias
    assert (dataset_path("math500").parent / "README.md").is_file()
    with pytest.raises(FileNotFoundError, match="known sets"):
        dataset_path("math5000")


def test_jsonl_json_parquet_and_folders(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    check_rows(load_records(jsonl))
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps(ROWS))
    check_rows(load_records(as_json))
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    rows_for_parquet = [{**r, "answer": json.dumps(r["answer"]) if isinstance(r["answer"], list) else str(r["answer"]),
                         "level": r.get("level") if isinstance(r.get("level"), int) else None} for r in ROWS]
    parquet.write_table(pyarrow.Table.from_pylist(rows_for_parquet), tmp_path / "b.parquet")
    records = load_records(tmp_path / "b.parquet")
    assert [r.problem for r in records] == [r["problem"] for r in ROWS]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "1.jsonl").write_text(jsonl.read_text())
    (folder / "2.jsonl").write_text(json.dumps({"id": "p4", "problem": "q", "answer": "a"}) + "\n")
    assert [r.id for r in load_records(folder)] == ["p1", "p2", "p3", "p4"]


def test_hf_datasets_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"id": r["id"], "question": r["problem"], "final": str(r["answer"])} for r in ROWS]
    dataset_dict = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    dataset_dict.save_to_disk(str(tmp_path / "hf"))
    records = load_records(tmp_path / "hf", problem_key="question", answer_key="final", split="test")
    assert [r.id for r in records] == ["p1"] and records[0].problem == ROWS[0]["problem"]
    with pytest.raises(ValueError, match="set problem_key"):
        load_records(tmp_path / "hf")  # rows have "question", not "problem"


def test_bad_sources_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a shipped set"):
        load_records(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "problem": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_records(bad)
    with pytest.raises(ValueError, match="unknown data format"):
        (tmp_path / "x.csv").write_text("a,b\n")
        load_records(tmp_path / "x.csv")


def test_difficulty_presets_follow_simplerl_zoo():
    hard = load_difficulty_preset("hard")
    assert len(hard) == 8886 and {r.level for r in hard} == {3, 4, 5}
    medium = load_difficulty_preset("medium")
    assert {r.level for r in medium} == {1, 2, 3, 4}
    easy = load_difficulty_preset("easy")
    assert len(easy) == 7473 + 958
    assert {r.level for r in easy} == {None, 1}
    assert {r.level for r in select_by_level(hard, 5, 5)} == {5}
    with pytest.raises(ValueError, match="unknown difficulty preset"):
        load_difficulty_preset("brutal")
    with pytest.raises(ValueError, match="has a 'level' field"):
        select_by_level(load_records("gsm8k_train")[:10], 1, 2)


def test_train_eval_overlap_is_refused_by_normalized_text():
    math500 = load_records("math500")
    train = load_records("math_lvl3to5_train")[:200]
    assert find_overlap(train) == []
    leaked = math500[7]
    # The same problem with other spacing, $ signs and \dfrac must still be caught.
    disguised = leaked.problem.replace(" ", "  ").replace("\\frac", "\\dfrac").upper()
    polluted = train + [type(leaked)(id="copy-1", problem=disguised, answer=leaked.answer)]
    found = find_overlap(polluted)
    assert [(o.train_id, o.eval_set, o.eval_id) for o in found] == [("copy-1", "math500", leaked.id)]
    with pytest.raises(TrainEvalOverlapError, match="1 training prompts appear"):
        check_no_overlap(polluted)
    assert len(drop_overlapping(polluted)) == 200


def test_shipped_training_sets_do_not_overlap_eval_sets():
    evaluation = {name: load_records(name) for name in EVAL_SETS}
    for name in TRAIN_SETS:
        assert find_overlap(load_records(name), evaluation) == [], name


def test_data_cli(tmp_path, capsys):
    assert data_main(["list"]) == 0
    assert "math500" in capsys.readouterr().out
    out = tmp_path / "lvl5.jsonl"
    assert data_main(["select", "math_lvl3to5_train", "--levels", "5-5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["level"] == 5 for r in rows)
    polluted = tmp_path / "polluted.jsonl"
    polluted.write_text(out.read_text() + dataset_path("gsm8k_test").read_text().splitlines()[0] + "\n")
    assert data_main(["overlap", str(polluted)]) == 1
    assert data_main(["select", str(polluted), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "appear in evaluation sets" in capsys.readouterr().err
    assert data_main(["overlap", str(polluted), "--drop-out", str(tmp_path / "clean.jsonl")]) == 0
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == len(rows)


def test_data_list_shows_the_demos_generated_sets(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert data_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("toy-arith:rl_train", "toy-arith:heldout", "toy-arith-long:rl_train", "math500"):
        assert name in out, name
