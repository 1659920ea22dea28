"""`recsys-train --teacher auto`: one command trains the warm start, the wider teacher and the student."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from index.bundle import Bundle
from trainer.cli import given_options
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.recipe import FittedStage, best_teacher, fp_stages

TINY = ["--synthetic-users", "300", "--synthetic-items", "400", "--dim", "16", "--epochs", "2", "--eval-every", "1"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_one_command_trains_the_stages_once_and_publishes_only_the_student(tmp_path: Path) -> None:
    results, cache = tmp_path / "r.json", tmp_path / "stages"
    common = [*TINY, "--refit", "--teacher", "auto", "--stage-cache", str(cache), "--results-json", str(results)]
    first = run_cli(*common, "--method", "hq", "--bits", "2", "--bundle-root", str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "stage 1/3: fp d=16 warm start: training" in first.stderr
    softmax = "--lr 0.001 --temperature 0.2"
    for kind in (f"softmax, --reg 0.05 {softmax}", f"softmax, --reg 0.2 {softmax}", "bpr, --reg 0.0001 --lr 0.001"):
        assert f"stage 2/3: fp d=32 teacher ({kind}): training" in first.stderr  # the default candidates
    assert "stage 3/3: hq d=16 student" in first.stderr
    assert "(refit stage)" in first.stderr  # the student's refit starts from and distils the fp stages' refits

    published = [p for p in (tmp_path / "a").iterdir() if p.name != "CURRENT"]
    assert len(published) == 1  # the fp stages publish nothing
    bundle = Bundle.load(tmp_path / "a")
    assert bundle.manifest.method == "hq" and bundle.manifest.bits == 2 and bundle.manifest.dim == 16
    warm, *teachers, student = json.loads(results.read_text())
    assert [r["stage"] for r in (warm, *teachers, student)] == ["warm_start", *["teacher"] * 3, "student"]
    assert (warm["loss"], warm["dim"], warm["cached"]) == ("bpr", 16, False)
    assert [(t["loss"], t["reg"], t["dim"], t["cached"]) for t in teachers] == [
        ("softmax", 0.05, 32, False), ("softmax", 0.2, 32, False), ("bpr", 1e-4, 32, False)
    ]  # fmt: skip
    # The teacher that distils is the one with the best validation score.
    (teacher,) = [t for t in teachers if t["selected"]]
    assert teacher["valid_recall@20"] == max(t["valid_recall@20"] for t in teachers) > 0
    temperature = f" --temperature {teacher['temperature']:g}" if teacher["loss"] == "softmax" else ""
    named = f"{teacher['loss']}, --reg {teacher['reg']:g} --lr {teacher['lr']:g}{temperature}"
    assert f"stage 2/3: the teacher ({named}) distils" in first.stderr
    assert bundle.manifest.training["stages"] == [warm, *teachers]
    assert bundle.manifest.training["config"]["warm_start_from"] == warm["stage_file"]
    assert bundle.manifest.training["config"]["distillation"]["teacher"] == student["teacher"] == teacher["stage_file"]
    assert (student["distill_weight"], student["softmax_negatives"]) == (3.0, 1024)  # the best 2-bit recipe
    # The teacher read at the temperature its logits were trained under: a softmax one at its 0.2, BPR's at 1.
    assert student["distill_temperature"] == (0.2 if teacher["loss"] == "softmax" else 1.0)
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 4 and not list(cache.glob(".*"))  # no temporary file left behind
    assert sorted(p.name for p in (cache / "locks").iterdir()) == [f"{f.name}.lock" for f in files]
    written = {f: f.stat().st_mtime_ns for f in files}

    # A second student of the same width on the same data trains only itself; what it sets itself stays.
    second = run_cli(
        *common, "--method", "hq", "--bits", "1", "--distill-weight", "2", "--bundle-root", str(tmp_path / "b"),
        cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "warm start: cached" in second.stderr
    assert second.stderr.count("--reg 0.2 --lr 0.001 --temperature 0.2): cached") == 1
    assert "train fp" not in second.stderr
    assert {f: f.stat().st_mtime_ns for f in cache.glob("*.pt")} == written
    records = json.loads(results.read_text())[5:]
    assert [(r["stage"], r.get("cached")) for r in records] == [
        ("warm_start", True),
        ("teacher", True),
        ("teacher", True),
        ("teacher", True),
        ("student", None),
    ]
    # The cached teachers' validation scores choose the same teacher again.
    assert [r["selected"] for r in records[1:4]] == [t["selected"] for t in teachers]
    assert [r["valid_recall@20"] for r in records[1:4]] == [t["valid_recall@20"] for t in teachers]
    assert (records[4]["distill_weight"], records[4]["softmax_negatives"]) == (2.0, 0)  # 1-bit: no 2-bit defaults


def test_stage_options_steer_the_fp_stages_only(tmp_path: Path) -> None:
    results = tmp_path / "r.json"
    run = run_cli(
        *TINY, "--method", "hq", "--bits", "1", "--teacher", "auto", "--stage-cache", str(tmp_path / "stages"),
        "--stage-options", "--loss softmax --temperature 0.2 --lr 2e-3 --reg 0.2", "--results-json", str(results),
        "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warm, *teachers, student = json.loads(results.read_text())
    assert (warm["loss"], warm["temperature"], warm["lr"], warm["reg"]) == ("softmax", 0.2, 2e-3, 0.2)
    # The teachers take each of --teacher-options' default candidates over --stage-options.
    assert [(t["loss"], t["temperature"], t["lr"], t["reg"]) for t in teachers] == [
        ("softmax", 0.2, 1e-3, 0.05), ("softmax", 0.2, 1e-3, 0.2), ("bpr", 0.2, 2e-3, 0.2)
    ]  # fmt: skip
    assert (student["loss"], student["lr"]) == ("bpr", 1e-3)  # the student keeps the run's own


def test_teacher_options_steer_the_teacher_alone(tmp_path: Path) -> None:
    """A softmax-trained teacher beside a BPR warm start: --teacher-options go over --stage-options for stage 2."""
    results = tmp_path / "r.json"
    run = run_cli(
        *TINY, "--method", "hq", "--bits", "1", "--teacher", "auto", "--stage-cache", str(tmp_path / "stages"),
        "--stage-options", "--lr 2e-3", "--teacher-options", "--loss softmax --temperature 0.2",
        "--results-json", str(results), "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warm, teacher, student = json.loads(results.read_text())  # one string: that teacher alone
    assert (warm["loss"], warm["temperature"], warm["lr"]) == ("bpr", 1.0, 2e-3)
    assert (teacher["loss"], teacher["temperature"], teacher["lr"], teacher["selected"]) == ("softmax", 0.2, 2e-3, True)
    assert (student["loss"], student["lr"]) == ("bpr", 1e-3)
    assert student["distill_temperature"] == 0.2  # the teacher read at its own temperature, not the BPR student's 1


@pytest.mark.parametrize(
    ("options", "teacher"),
    [
        (["--teacher-options", "--loss bpr --reg 1e-4"], ("bpr", 1e-4)),  # #19's teacher
        (["--teacher-options", "--loss softmax --reg 0.1"], ("softmax", 0.1)),
    ],
)
def test_one_teacher_where_the_options_name_one(tmp_path: Path, options: list[str], teacher: tuple[str, float]) -> None:
    results = tmp_path / "r.json"
    run = run_cli(
        *TINY, "--method", "hq", "--bits", "1", "--teacher", "auto", "--stage-cache", str(tmp_path / "stages"),
        *options, "--results-json", str(results), "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    _, only, student = json.loads(results.read_text())
    assert (only["stage"], only["loss"], only["reg"], only["selected"]) == ("teacher", *teacher, True)
    assert student["teacher"] == only["stage_file"]


def test_without_the_flag_the_run_is_the_plain_one(tmp_path: Path) -> None:
    results, cache = tmp_path / "r.json", tmp_path / "stages"
    plain = run_cli(
        *TINY, "--method", "hq", "--bits", "2", "--stage-cache", str(cache), "--results-json", str(results),
        "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    (record,) = json.loads(results.read_text())
    assert "stage" not in record and "teacher" not in record and record["warm_start"] is False
    assert not cache.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "fp"], "use it with a --method other than fp"),
        (["--method", "hq", "--bits", "2", "--warm-start-from", "x.pt"], "drop --warm-start-from"),
        (["--method", "hq", "--bits", "2", "--input-layer", "hash"], "use it with --input-layer table"),
        (["--method", "hq", "--bits", "2", "--stage-options", "--dim 8 --lr 1e-3"], "--stage-options sets --dim:"),
        (["--method", "hq", "--bits", "2", "--teacher-options", "--bits 1"], "--teacher-options sets --bits:"),
        (["--method", "hq", "--bits", "2", "--stage-options", '"--lr 1'], "--stage-options '\"--lr 1': No closing"),
        (["--method", "hq", "--bits", "2", "--teacher-options", "--lr x"], "--teacher-options '--lr x': argument --lr"),
        (["--method", "hq", "--bits", "2", "--teacher-options", "--nope 1"], "unrecognized arguments: --nope 1"),
        (["--method", "hq", "--bits", "2", "--stage-options", "--lr -1"], "--stage-options: --lr must be >= 0, got -1"),
        # Every teacher's options are checked, not only the first's.
        (["--method", "hq", "--bits", "2", "--teacher-options", "--loss bpr", "--lr x"], "--teacher-options '--lr x'"),
        (
            ["--method", "hq", "--bits", "2", "--teacher-options", "--loss bpr", "--reg -1"],
            "--teacher-options: --reg must be >= 0, got -1",
        ),
        (
            ["--method", "hq", "--bits", "2", "--teacher-options", "--lr nan"],
            "--teacher-options: --lr must be >= 0, got nan",
        ),
    ],
)
def test_combinations_that_make_no_sense_are_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    (tmp_path / "x.pt").write_bytes(b"")
    result = run_cli(*options, "--teacher", "auto", "--bundle-root", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "b").exists() and not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    "options",
    [["--stage-options", "--lr 1e-3"], ["--teacher-options", "--lr 1e-3"],
     ["--teacher-options", "--loss bpr", "--lr 1e-3"], ["--stages-in-turn"]],
)  # fmt: skip
def test_what_steers_the_stages_is_refused_in_a_plain_run(tmp_path: Path, options: list[str]) -> None:
    result = run_cli(
        *TINY, "--method", "hq", "--bits", "2", *options, "--bundle-root", str(tmp_path / "b"), cwd=tmp_path
    )
    assert result.returncode == 2 and f"{options[0]}: only with --teacher auto" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "b").exists()


def test_given_options_are_those_on_the_command_line() -> None:
    given = given_options(["--method", "hq", "--bits", "2", "--softmax-negatives", "0", "--refit"])
    assert given == {"method", "bits", "softmax_negatives", "refit"}


STAGES = TrainConfig.of(method="fp", dim=8, epochs=2, eval_every=1, batch_size=2048, device="cpu")
IDENTITY = {"dataset": "synthetic"}


def stages_in(cache: Path, data: Dataset, *, side_by_side: bool = False) -> tuple[FittedStage, FittedStage]:
    warm, (teacher,) = fp_stages(
        data, STAGES, dim=8, with_refit=False, cache=cache, identity=IDENTITY, side_by_side=side_by_side
    )
    return warm, teacher


def ego_of(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["stages"]["select"]["ego"]


def test_side_by_side_the_teacher_trains_in_a_second_process_to_the_same_model(
    tmp_path: Path, tiny_data: Dataset
) -> None:
    in_turn = stages_in(tmp_path / "a", tiny_data)
    beside = stages_in(tmp_path / "b", tiny_data, side_by_side=True)
    for one, other in zip(in_turn, beside, strict=True):
        assert (one.name, one.cached, other.cached, one.path.name) == (other.name, False, False, other.path.name)
        assert one.epochs == other.epochs
        # Same seed and steps in another process: equal up to the order of float sums across threads.
        torch.testing.assert_close(ego_of(one.path), ego_of(other.path), rtol=0, atol=1e-6)
    again = stages_in(tmp_path / "b", tiny_data, side_by_side=True)
    assert [stage.cached for stage in again] == [True, True]


def test_several_teachers_train_beside_the_warm_start_and_the_best_on_validation_distils(
    tmp_path: Path, tiny_data: Dataset
) -> None:
    configs = [STAGES.with_options(reg=reg) for reg in (1e-4, 5.0, 1e-4)]  # 5.0: an L2 weight that ranks badly
    runs = {
        side_by_side: fp_stages(tiny_data, STAGES, dim=8, with_refit=False, cache=tmp_path / str(side_by_side),
                                identity=IDENTITY, side_by_side=side_by_side, teacher_configs=configs)
        for side_by_side in (False, True)
    }  # fmt: skip
    for warm, teachers in runs.values():
        assert [t.config.optim.reg for t in teachers] == [1e-4, 5.0]  # a configuration given twice trains once
        assert all(not t.cached and t.valid is not None for t in (warm, *teachers))
        assert best_teacher(teachers) is teachers[0] and teachers[0].valid > teachers[1].valid  # type: ignore[operator]
    for one, other in zip(runs[False][1], runs[True][1], strict=True):  # each in a process of its own, the same
        torch.testing.assert_close(ego_of(one.path), ego_of(other.path), rtol=0, atol=1e-6)
        assert one.valid == pytest.approx(other.valid, abs=1e-6)
    _, cached = fp_stages(tiny_data, STAGES, dim=8, with_refit=False, cache=tmp_path / "True", identity=IDENTITY,
                          teacher_configs=configs)  # fmt: skip
    assert [(t.cached, t.valid) for t in cached] == [(True, t.valid) for t in runs[True][1]]  # the score was saved


def test_best_teacher_prefers_a_score_to_none() -> None:
    stage = FittedStage("teacher", STAGES, Path("a.pt"), cached=True, seconds=1.0, epochs=1, valid=None)
    scored = FittedStage("teacher", STAGES, Path("b.pt"), cached=True, seconds=1.0, epochs=1, valid=0.01)
    assert best_teacher([stage, scored]) is scored and best_teacher([stage]) is stage


def hold_lock(path: Path) -> object:
    """What another run training the stage holds: the stage's lock file, locked."""
    handle = (path.parent / "locks" / f"{path.name}.lock").open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


@pytest.mark.parametrize("other_run_saves_it", [True, False])
def test_a_stage_another_run_holds_is_waited_for(
    tmp_path: Path, tiny_data: Dataset, caplog: pytest.LogCaptureFixture, other_run_saves_it: bool
) -> None:
    """Reused once the other run saves it; trained here if that run stopped without saving it."""
    _, teacher = stages_in(tmp_path / "first", tiny_data)
    cache = tmp_path / "cache"
    (cache / "locks").mkdir(parents=True)
    held = hold_lock(cache / teacher.path.name)
    found: list[tuple[FittedStage, FittedStage]] = []
    caplog.set_level(logging.INFO, logger="trainer.recipe")
    worker = threading.Thread(target=lambda: found.append(stages_in(cache, tiny_data)))
    worker.start()
    deadline = time.monotonic() + 60
    while "another run is training it; waiting" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert worker.is_alive() and "another run is training it; waiting" in caplog.text  # the teacher waited for
    if other_run_saves_it:
        shutil.copy(teacher.path, cache / teacher.path.name)
    held.close()  # type: ignore[attr-defined]
    worker.join(timeout=120)
    warm_here, teacher_here = found[0]
    assert not warm_here.cached and teacher_here.cached == other_run_saves_it
    torch.testing.assert_close(ego_of(teacher_here.path), ego_of(teacher.path), rtol=0, atol=1e-6)
