"""Data-parallel training: torchrun with two CPU ranks (gloo) trains what one process trains on the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from index.bundle import Bundle
from trainer.distributed import World, assert_in_step, rank_share
from trainer.warm_start import load_stage

TINY = ["--synthetic-users", "200", "--synthetic-items", "300", "--dim", "16", "--device", "cpu", "--eval-every", "1"]


def train_cli(tmp_path: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: reproducible sums, no oversubscription
    return subprocess.run(
        [sys.executable, *launcher, "-m", "trainer.cli", *TINY, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


def saved_ego(path: Path) -> torch.Tensor:
    return load_stage(path, "select", dataset="synthetic", n_nodes=500, dim=16).ego


def test_each_rank_takes_a_contiguous_part_of_every_global_batch() -> None:
    batch = tuple(torch.arange(10) + offset for offset in (0, 100, 200))
    short = tuple(torch.tensor([7]) + offset for offset in (0, 100, 200))
    parts = [rank_share([batch, short], World(rank=r, size=3)) for r in range(3)]
    assert all(len(p) == 1 for p in parts)  # the 1-triple batch cannot be split three ways: dropped
    assert torch.equal(torch.cat([p[0][0] for p in parts]), batch[0])
    assert [p[0][1].numel() for p in parts] == [4, 3, 3]
    assert torch.equal(parts[1][0][2], batch[2][4:7])
    assert rank_share([batch, short], World()) == [batch, short]


def one_and_two_ranks(
    tmp_path: Path, device: str, sync: str = "allreduce"
) -> tuple[float, float, list[dict[str, object]]]:
    """Max |Δ ego| between 2 ranks × 64 and 1 process × 128 triples a step, and between 1 × 64 and 1 × 128."""
    common = ["--method", "fp", "--epochs", "2", "--device", device, "--results-json", str(tmp_path / "r.json")]
    two = train_cli(
        tmp_path, *common, "--batch-size", "64", "--save-warm-start", "two.pt", "--bundle-root", "b2",
        "--grad-sync", sync, ranks=2,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    one = train_cli(tmp_path, *common, "--batch-size", "128", "--save-warm-start", "one.pt", "--bundle-root", "b1")
    assert one.returncode == 0, one.stderr
    control = train_cli(tmp_path, *common, "--batch-size", "64", "--save-warm-start", "half.pt", "--bundle-root", "b0")
    assert control.returncode == 0, control.stderr
    same_batches = (saved_ego(tmp_path / "two.pt") - saved_ego(tmp_path / "one.pt")).abs().max().item()
    other_batches = (saved_ego(tmp_path / "half.pt") - saved_ego(tmp_path / "one.pt")).abs().max().item()
    return same_batches, other_batches, json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("sync", ["allreduce", "ddp"])
def test_two_ranks_train_the_same_model_as_one_process_on_the_same_global_batches(tmp_path: Path, sync: str) -> None:
    same_batches, other_batches, records = one_and_two_ranks(tmp_path, "cpu", sync)
    assert same_batches < 1e-3 and same_batches < other_batches / 50, (same_batches, other_batches)
    assert [(r["world_size"], r["batch_size"]) for r in records] == [(2, 128), (1, 128), (1, 64)]
    assert records[0]["grad_sync"] == sync
    assert all(isinstance(r["samples_per_second"], float) and r["samples_per_second"] > 0 for r in records)
    assert abs(float(records[0]["exact_recall@20"]) - float(records[1]["exact_recall@20"])) < 0.02  # type: ignore[arg-type]
    assert len(list((tmp_path / "b2").glob("synthetic-*"))) == 1  # rank 0 alone publishes
    Bundle.load(tmp_path / "b2")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_graphed_steps_on_two_gpus_send_gradients_in_bf16_when_asked(tmp_path: Path) -> None:
    # A 2 × H200 run with --grad-compression bf16 followed the uncompressed run bit for bit (stop 13): this says
    # whether the compressed all-reduce is really part of the captured step.
    # CUDA's scatter kernels are not bit-reproducible, so two uncompressed runs give the noise floor: the bf16
    # run must land well outside it (and still close to the full-precision weights).
    common = ["--method", "fp", "--epochs", "2", "--batch-size", "64", "--device", "auto"]
    for name, compression in (("none", "none"), ("again", "none"), ("bf16", "bf16")):
        run = train_cli(
            tmp_path, *common, "--grad-compression", compression, "--save-warm-start", f"{name}.pt",
            "--bundle-root", name, "--results-json", str(tmp_path / "r.json"), ranks=2,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert all(r["cuda_graph"] for r in json.loads((tmp_path / "r.json").read_text()))
    full = saved_ego(tmp_path / "none.pt")
    noise = (saved_ego(tmp_path / "again.pt") - full).abs().max().item()
    apart = (saved_ego(tmp_path / "bf16.pt") - full).abs().max().item()
    assert 10 * noise < apart < 0.05, (noise, apart)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_two_gpus_train_the_same_model_as_one_gpu(tmp_path: Path) -> None:
    same_batches, other_batches, records = one_and_two_ranks(tmp_path, "auto")
    # CUDA's sparse and scatter kernels are not bit-reproducible, so the margin is wider than on the CPU.
    assert same_batches < other_batches / 5, (same_batches, other_batches)
    assert [r["world_size"] for r in records] == [2, 1, 1] and "cpu" not in str(records[0]["device"])


@pytest.mark.parametrize(
    "method",
    [
        ["--method", "hq", "--bits", "2"],
        ["--method", "gnaq", "--pretrain-epochs", "2"],
        ["--method", "bigear"],
        # DDP must leave the hashed input's sparse codebook lookup alone, as it does the adjacency.
        ["--method", "fp", "--input-layer", "hash", "--hash-bits", "32", "--hash-groups", "4", "--grad-sync", "ddp"],
    ],
)
def test_quantizers_with_epoch_hooks_stay_in_step_across_ranks(tmp_path: Path, method: list[str]) -> None:
    """HQ re-estimates δ from random probes every 5 epochs, GNAQ re-bins codes each step: every validation
    checks that both ranks hold identical parameters and buffers (trainer.distributed.assert_in_step)."""
    common = [*method, "--epochs", "6", "--patience", "10", "--results-json", str(tmp_path / "r.json")]
    two = train_cli(tmp_path, *common, "--batch-size", "64", "--bundle-root", "b2", ranks=2)
    assert two.returncode == 0, two.stderr
    one = train_cli(tmp_path, *common, "--batch-size", "128", "--bundle-root", "b1")
    assert one.returncode == 0, one.stderr
    records = json.loads((tmp_path / "r.json").read_text())
    assert abs(records[0]["exact_recall@20"] - records[1]["exact_recall@20"]) < 0.03


def _diverge(rank: int, store_path: str, perturb: bool) -> None:
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(store_path, 2), rank=rank, world_size=2
    )
    try:
        module = torch.nn.Linear(4, 4)
        torch.nn.init.constant_(module.weight, 0.5)
        torch.nn.init.zeros_(module.bias)
        if perturb and rank == 1:
            with torch.no_grad():
                module.weight[2, 3] += 1e-6
        assert_in_step([module], World(rank=rank, size=2))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("perturb", [False, True])
def test_a_rank_that_drifts_from_rank_0_is_caught(tmp_path: Path, perturb: bool) -> None:
    context = torch.multiprocessing.spawn(_diverge, args=(str(tmp_path / "store"), perturb), nprocs=2, join=False)
    if perturb:
        with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="rank 1 diverged from rank 0"):
            while not context.join():
                pass
    else:
        while not context.join():
            pass


def test_gradients_all_reduced_in_16_bits_train_close_to_full_precision(tmp_path: Path) -> None:
    common = ["--method", "fp", "--epochs", "3", "--batch-size", "64", "--results-json", str(tmp_path / "r.json")]
    variants = [("allreduce", "none"), ("allreduce", "fp16"), ("ddp", "fp16")]
    for sync, compression in variants:
        run = train_cli(
            tmp_path, *common, "--grad-sync", sync, "--grad-compression", compression,
            "--bundle-root", f"{sync}-{compression}", "--save-warm-start", f"{sync}-{compression}.pt", ranks=2,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    records = json.loads((tmp_path / "r.json").read_text())
    assert [(r["grad_sync"], r["grad_compression"]) for r in records] == variants
    assert all(abs(r["exact_recall@20"] - records[0]["exact_recall@20"]) < 0.02 for r in records)
    # The 16-bit sends were really used: the weights moved off the full-precision run's, but only slightly.
    full = saved_ego(tmp_path / "allreduce-none.pt")
    for sync in ("allreduce", "ddp"):
        apart = (saved_ego(tmp_path / f"{sync}-fp16.pt") - full).abs().max().item()
        assert 0 < apart < 0.01, (sync, apart)
    refused = train_cli(tmp_path, *common, "--grad-compression", "bf16", "--bundle-root", "bf16", ranks=2)
    assert refused.returncode != 0 and "recsys-train: error: --grad-compression bf16 needs GPUs" in refused.stderr


def test_stop_at_metric_ends_training_when_validation_reaches_it(tmp_path: Path) -> None:
    result = train_cli(
        tmp_path, "--method", "fp", "--epochs", "50", "--stop-at-metric", "0.0", "--bundle-root", "b",
        "--results-json", "r.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = json.loads((tmp_path / "r.json").read_text())
    assert record["best_epoch"] == 0 and record["target_seconds"] is not None
