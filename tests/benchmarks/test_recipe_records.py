"""benchmarks.recipe_records: a recipe call's students join the quality records, measured against fp d = 64."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from benchmarks.recipe_records import main


def add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def student(dataset: str, recall: float, **more: object) -> dict[str, object]:
    return {"stage": "student", "dataset": dataset, "method": "hq", "dim": 64, "bits": 2, "item_bytes": 16.0,
            "bytes_per_node": 16.0, "valid_recall@20": recall + 0.02, "recall@20": recall, "ndcg@20": recall / 2,
            **more}  # fmt: skip


def test_students_join_the_quality_records_with_their_wall_time(tmp_path: Path, capsys: object) -> None:
    archive = tmp_path / "recipe.tgz"
    stages = [{"stage": "warm_start", "dataset": "gowalla", "method": "fp", "dim": 64, "cached": False},
              {"stage": "teacher", "dataset": "gowalla", "method": "fp", "dim": 128, "cached": True}]  # fmt: skip
    with tarfile.open(archive, "w:gz") as tar:
        add(tar, "records/gowalla_hq2_d64.json", json.dumps([*stages, student("gowalla", 0.18)]))
        add(tar, "walls.txt", "gowalla hq2_d64 exit 0 wall 780 s\ngowalla other exit 1 wall 5 s\n")
    quality, records = tmp_path / "quality.json", tmp_path / "recipe.json"
    reference = [  # two fp d=64 runs: the one with the better validation is the 100 %, whatever its test
        {"grid": "fp-lift", "run": "a", "dataset": "gowalla", "method": "fp", "dim": 64, "valid_recall@20": 0.21,
         "recall@20": 0.20},
        {"grid": "fp-lift", "run": "b", "dataset": "gowalla", "method": "fp", "dim": 64, "valid_recall@20": 0.20,
         "recall@20": 0.25},
    ]  # fmt: skip
    quality.write_text(json.dumps(reference))
    assert main([str(archive), "--out", str(quality), "--records", str(records), "--commit", "abc"]) == 0
    (added,) = [r for r in json.loads(quality.read_text()) if r.get("grid") == "recipe"]
    assert (added["run"], added["recipe_wall_s"], added["recipe_exit"], added["commit"]) == ("hq2_d64", 780, 0, "abc")
    assert [r["stage"] for r in json.loads(records.read_text())] == ["warm_start", "teacher", "student"]
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "| gowalla | hq2_d64 | 16 | 0.2000 | 0.1800 | 0.0900 | 90.0 % of 0.2000 | 13.0 |" in out


def test_a_missing_archive_is_one_line(tmp_path: Path, capsys: object) -> None:
    assert main([str(tmp_path / "nope.tgz"), "--out", str(tmp_path / "q.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # type: ignore[attr-defined]
