"""recsys-train as a user runs it: bad input is one readable line and exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from index.bundle import Bundle
from trainer.config import ModelConfig, OptimConfig


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_malformed_dataset_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "broken"
    data.mkdir()
    (data / "train.txt").write_text("0 1 2\n1 x 3\n")
    (data / "test.txt").write_text("0 3\n")
    result = run_cli("--dataset", str(data), "--bundle-root", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "train.txt:2" in result.stderr
    assert not (tmp_path / "b").exists()


def test_binary_methods_need_a_dimension_divisible_by_8(tmp_path: Path) -> None:
    result = run_cli("--method", "ste", "--dim", "12", "--bundle-root", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "recsys-train: error: --dim must be a multiple of 8 for binary codes, got 12"


def test_missing_named_dataset_says_where_it_looked(tmp_path: Path) -> None:
    result = run_cli("--dataset", "nope", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("recsys-train: error:") and str(tmp_path) in result.stderr


def test_trains_and_publishes_a_bundle(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    result = run_cli(
        "--epochs", "2", "--eval-every", "1", "--synthetic-users", "200", "--synthetic-items", "300",
        "--method", "ste", "--dim", "16", "--bundle-root", str(tmp_path / "b"), "--results-json", str(results),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundle = Bundle.load(tmp_path / "b")
    assert bundle.manifest.method == "ste" and bundle.manifest.n_users == 200
    assert "recall@20" in result.stdout and '"recall@20"' in results.read_text()
    (record,) = json.loads(results.read_text())
    assert record["lr"] == OptimConfig.lr and record["dim"] == 16 and record["layers"] == ModelConfig.layers
    assert record["table_parameters"] == record["input_parameters"] == 500 * 16  # the table is the input layer
    assert list(record["phase_seconds"]) == ["load", "train", "export"]  # where a large run's time goes
    assert list(record["export_seconds"]) == ["codes", "test_device", "test_served", "cold_start", "publish"]
    assert abs(sum(record["export_seconds"].values()) - record["phase_seconds"]["export"]) < 0.5
    for phase in record["export_seconds"]:  # logged as each ends: a run stopped midway shows where it was
        assert f"export: {phase} took" in result.stderr
    peaks = list(record["phase_host_peak_gib"].values())  # where host memory went: the peak so far, as each ended
    assert list(record["phase_host_peak_gib"]) == ["load", "train", "export"] and peaks == sorted(peaks)
    assert 0.05 < peaks[0] < 8  # this process's resident set, in GiB: a test run holds a few hundred MB


def test_fp_saves_a_warm_start_that_a_quantized_run_uses(tmp_path: Path) -> None:
    common = ["--epochs", "2", "--eval-every", "1", "--synthetic-users", "200", "--synthetic-items", "300"]
    common += ["--dim", "16", "--refit", "--results-json", str(tmp_path / "r.json")]
    warm = tmp_path / "fp.pt"
    fp = run_cli(
        *common, "--method", "fp", "--save-warm-start", str(warm), "--bundle-root", str(tmp_path / "a"), cwd=tmp_path
    )
    assert fp.returncode == 0, fp.stderr
    hq = run_cli(
        *common,
        "--method",
        "hq",
        "--bits",
        "1",
        "--warm-start-from",
        str(warm),
        "--bundle-root",
        str(tmp_path / "b"),
        cwd=tmp_path,
    )
    assert hq.returncode == 0, hq.stderr
    assert "warm start from" in hq.stderr and "(refit stage)" in hq.stderr  # the refit starts from fp's refit
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in records] == ["fp", "hq"] and records[1]["warm_start"] is True
    # the fp stage's time is counted (strictly more: tests/trainer/test_warm_start.py; here both may round to 0.0)
    assert records[1]["train_seconds"] >= records[0]["train_seconds"]


def test_warm_start_options_are_checked_before_training(tmp_path: Path) -> None:
    wrong_method = run_cli("--method", "ste", "--save-warm-start", str(tmp_path / "x.pt"), cwd=tmp_path)
    assert wrong_method.returncode == 2 and "use it with --method fp" in wrong_method.stderr
    missing = run_cli("--method", "ste", "--warm-start-from", str(tmp_path / "none.pt"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_a_results_file_that_is_not_a_list_is_refused_before_training(tmp_path: Path) -> None:
    results = tmp_path / "r.json"
    results.write_text('{"not": "a list"}')
    result = run_cli("--results-json", str(results), "--bundle-root", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 2 and "not a list" in result.stderr and "Traceback" not in result.stderr
    assert results.read_text() == '{"not": "a list"}' and not (tmp_path / "b").exists()


def test_a_run_sized_past_the_machine_is_one_line_naming_what_to_shrink(tmp_path: Path) -> None:
    # A 1 TB embedding table (500 nodes × 5·10⁸ dimensions): the host cannot allocate it, and the user is told so
    result = run_cli(
        "--synthetic-users", "200", "--synthetic-items", "300", "--dim", str(5 * 10**8), "--epochs", "1",
        "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if " INFO " not in line]  # the data's summary aside
    assert line.startswith("recsys-train: error: out of memory (")
    assert "1000.0 GB" in line and "--batch-size" in line
    assert not (tmp_path / "b").exists()


def test_a_diverging_run_publishes_nothing_and_says_so_in_one_line(tmp_path: Path) -> None:
    # Adam at lr 1e30 takes the embeddings to infinity in its first step: every validation sees a NaN loss
    result = run_cli(
        "--synthetic-users", "200", "--synthetic-items", "300", "--dim", "16", "--epochs", "3", "--eval-every", "1",
        "--lr", "1e30", "--bundle-root", str(tmp_path / "b"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the training loss is not finite (diverged); no earlier epoch to keep" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys-train: error: the training diverged: after 1 epochs the model holds NaN")
    assert not (tmp_path / "b").exists()


def unusable_outputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each output option given a place it cannot write, and the words of its refusal."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    long = str(tmp_path / ("n" * 300))
    return {
        "bundle root a file": (["--bundle-root", str(a_file)], "--bundle-root"),
        "bundle root under a file": (["--bundle-root", str(a_file / "sub")], "is not a directory"),
        "bundle root a fifo": (["--bundle-root", str(fifo)], "is not a directory"),
        "results a directory": (["--results-json", str(tmp_path)], "not a regular file"),
        "results a fifo": (["--results-json", str(fifo)], "not a regular file"),
        "results under a file": (["--results-json", str(a_file / "r.json")], "is not a directory"),
        "results name too long": (["--results-json", long], "--results-json"),
        "checkpoints a file": (["--checkpoint-dir", str(a_file), "--eval-every", "1"], "--checkpoint-dir"),
        "stage cache a file": (
            ["--method", "hq", "--bits", "2", "--teacher", "auto", "--stage-cache", str(a_file)],
            "--stage-cache",
        ),  # fmt: skip
        "dataset name too long": (["--dataset", long], "File name too long"),
        "device unknown": (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
        "device not for training": (["--device", "meta"], "--device must be"),
    }


def test_an_output_that_cannot_be_written_is_refused_in_one_line_before_training(tmp_path: Path) -> None:
    for name, (options, words) in unusable_outputs(tmp_path).items():
        result = run_cli("--synthetic-users", "200", "--synthetic-items", "300", "--dim", "16", "--epochs", "1",
                         *options, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
        assert len(lines) == 1 and lines[0].startswith("recsys-train: error: ") and words in lines[0], (name, lines)
        assert "train fp" not in result.stderr and "train ste" not in result.stderr, name  # refused before training


def test_sigterm_stops_a_run_in_one_line_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "--synthetic-users", "300", "--synthetic-items", "400", "--dim", "16",
         "--epochs", "100000", "--eval-every", "1", "--bundle-root", str(tmp_path / "b")],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        seen = ""
        while "recall@20" not in seen:  # training: a validation has been written
            line = process.stderr.readline()
            assert line, f"recsys-train ended before training: {seen[-2000:]}"
            seen += line
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 130 and "Traceback" not in rest, rest[-2000:]
    assert rest.strip().splitlines()[-1].startswith("recsys-train: interrupted")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
