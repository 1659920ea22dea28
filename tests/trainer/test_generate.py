"""`recsys-generate` and the power-law synthetic data it writes: determinism, shape, and the loader reading it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data import SyntheticConfig, load_dataset
from trainer.data import generate as generate_module
from trainer.data.generate import main, write_synthetic
from trainer.data.synthetic import items_per_user, latent_structure, pareto_exponent

POWER_LAW = SyntheticConfig(
    n_users=3000, n_items=4000, mean_items_per_user=12, max_items_per_user=800, activity="power-law", seed=4
)


def test_file_is_the_same_whatever_the_threads_and_changes_with_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate_module, "USERS_PER_BLOCK", 500)  # several blocks
    one = write_synthetic(POWER_LAW, tmp_path / "one.csv", threads=1)
    three = write_synthetic(POWER_LAW, tmp_path / "three.csv", threads=3)
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "three.csv").read_bytes()
    assert one.interactions == three.interactions == len((tmp_path / "one.csv").read_text().splitlines()) - 1
    other = SyntheticConfig(**{**POWER_LAW.__dict__, "seed": 5})
    write_synthetic(other, tmp_path / "other.csv", threads=1)
    assert (tmp_path / "other.csv").read_bytes() != (tmp_path / "one.csv").read_bytes()
    assert not list(tmp_path.glob(".*partial"))


def test_power_law_activity_has_the_mean_asked_for_and_a_heavy_tail() -> None:
    config = SyntheticConfig(n_users=10, n_items=100_000, mean_items_per_user=20, max_items_per_user=10_000,
                             activity="power-law")  # fmt: skip
    counts = items_per_user(config, np.random.default_rng(0), 400_000)
    assert counts.min() == 3 and counts.max() <= 10_000
    assert abs(counts.mean() - 20) < 1.0
    alpha = pareto_exponent(20.0, 10_000)
    for k in (10, 100, 1000):  # P(count >= k) = (3 / k) ** alpha: a straight line on log-log axes
        assert (counts >= k).mean() == pytest.approx((3 / k) ** alpha, rel=0.15)
    geometric = items_per_user(
        SyntheticConfig(n_items=100_000, mean_items_per_user=20), np.random.default_rng(0), 400_000
    )
    assert (counts >= 200).mean() > 100 * max((geometric >= 200).mean(), 1e-6)  # far heavier than geometric


def test_pareto_exponent_gives_the_capped_mean() -> None:
    alpha = pareto_exponent(20.0, 10_000)
    k = np.arange(4, 10_001)
    assert 3 + ((3 / k) ** alpha).sum() == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(ValueError, match="cap"):
        pareto_exponent(50.0, 40)


def test_written_file_has_popularity_and_communities(tmp_path: Path) -> None:
    config = SyntheticConfig(**{**POWER_LAW.__dict__, "n_communities": 10})
    path = write_synthetic(config, tmp_path / "g.csv").path
    users, items = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64).T
    latent = latent_structure(config)
    assert (latent.item_community[items] == latent.user_community[users]).mean() > 0.5  # 0.1 if unstructured
    counts = np.sort(np.bincount(items, minlength=config.n_items))[::-1]
    assert counts[: config.n_items // 10].sum() / counts.sum() > 0.4
    assert (np.diff(users * config.n_items + items) > 0).all()  # sorted by (user, item), no duplicates


@pytest.mark.parametrize("suffix", [".csv", ".inter"])
def test_loader_reads_the_file_as_its_exact_parser_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = write_synthetic(POWER_LAW, tmp_path / f"g{suffix}").path
    fast = load_dataset(str(path))
    monkeypatch.setattr("trainer.data.formats.read_table", lambda *args, **kwargs: None)  # line by line
    exact = load_dataset(str(path))
    assert fast.user_ids == exact.user_ids and fast.item_ids == exact.item_ids
    for a, b in [(fast.train, exact.train), (fast.valid, exact.valid), (fast.test, exact.test)]:
        assert a.shape == b.shape and (a != b).nnz == 0
    assert fast.n_users == POWER_LAW.n_users and fast.test.nnz > 0


def test_cli_writes_the_file_and_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "cli.inter"
    assert main(["--users", "200", "--items", "300", "--out", str(out), "--seed", "3"]) == 0
    assert out.read_text().startswith("user_id:token\titem_id:token\n")
    assert capsys.readouterr().out.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--users", "0", "--items", "10"], "--users must be >= 1, got 0"),
        (["--users", "10", "--items", "10", "--interactions-per-user", "2"], "--interactions-per-user must be >= 3"),
        (["--users", "10", "--items", "10", "--interactions-per-user", "nan"], "--interactions-per-user must be"),
        (["--users", "10", "--items", "10", "--popularity-exponent", "inf"], "--popularity-exponent must be >= 0"),
        (["--users", "10", "--items", "10", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--users", "10", "--items", "100", "--interactions-per-user", "60"], "below the per-user cap"),
        (["--users", "10", "--items", "10", "--threads", "0"], "--threads must be >= 1"),
        # A draw sized past the host (745 GiB of community ids): the allocation it could not make, not a traceback
        (["--users", "100", "--items", "100", "--communities", str(10**11)], "out of memory (Unable to allocate"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys-generate: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


def test_unknown_suffix_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--users", "10", "--items", "1000", "--out", str(tmp_path / "x.txt")]) == 2
    assert "expected a .csv or .inter path" in capsys.readouterr().err
