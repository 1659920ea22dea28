"""Sampled-user evaluation: a fixed sample, the full evaluation when it covers everyone, and its spread."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from index.codes import CodeLayout
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.evaluate import device_metrics, evaluation_users, held_out_of, served_path_metrics
from trainer.train import train


def truth(n_users: int = 200, n_items: int = 50, seed: int = 0) -> sp.csr_matrix:
    held = np.random.default_rng(seed).random((n_users, n_items)) < 0.05
    held[::7] = False  # users without held-out items are never sampled
    return sp.csr_matrix(held.astype(np.float32))


def test_the_sample_is_fixed_by_its_seed_and_holds_only_users_with_held_out_items() -> None:
    held = truth()
    first, again, other = (evaluation_users(held, 40, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.size == 40 and np.unique(first).size == 40 and np.all(np.diff(first) > 0)
    assert np.all(np.diff(held.indptr)[first] > 0)


def test_a_sample_as_large_as_the_users_is_every_user() -> None:
    held = truth()
    everyone = np.flatnonzero(np.diff(held.indptr) > 0)
    for count in (0, everyone.size, 10 * everyone.size):
        np.testing.assert_array_equal(evaluation_users(held, count, 3), everyone)


def vectors(held: sp.csr_matrix, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(held.shape[0], dim, generator=generator), torch.randn(held.shape[1], dim, generator=generator)


def test_device_metrics_of_a_sample_are_those_of_its_users_alone() -> None:
    held, seen = truth(), truth(seed=1)
    users, items = vectors(held)
    sample = evaluation_users(held, 30, 0)
    sampled = device_metrics(users, items, held, seen, integer_scores=False, users=sample, spread=True)
    alone = device_metrics(users, items, held_out_of(held, sample), seen, integer_scores=False)
    assert {k: v for k, v in sampled.items() if not k.endswith("_se") and k != "users"} == alone
    assert sampled["users"] == 30
    full = device_metrics(users, items, held, seen, integer_scores=False)
    assert full == device_metrics(users, items, held, seen, integer_scores=False, users=evaluation_users(held, 0, 0))


def test_the_standard_error_is_the_spread_of_per_user_recall() -> None:
    held = sp.csr_matrix(np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], np.float32))
    users = torch.tensor([[1.0], [1.0], [1.0]])
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0]])  # every user ranks items 0, 1, 2, 3
    metrics = device_metrics(users, items, held, sp.csr_matrix(held.shape), integer_scores=False, ks=(1,), spread=True)
    per_user = np.array([1.0, 0.5, 0.0])  # recall@1
    assert metrics["recall@1"] == pytest.approx(per_user.mean())
    assert metrics["recall@1_se"] == pytest.approx(per_user.std(ddof=1) / np.sqrt(3))


def test_the_served_path_ranks_the_same_sample() -> None:
    held, seen = truth(), truth(seed=1)
    codes = np.random.default_rng(0).integers(0, 256, size=(held.shape[0] + held.shape[1], 1), dtype=np.uint8)
    layout = CodeLayout.SIGN1
    sample = evaluation_users(held, 25, 0)
    user_codes, item_codes = codes[: held.shape[0]], codes[held.shape[0] :]
    sampled = served_path_metrics(user_codes, item_codes, layout, 8, held, seen, users=sample)
    alone = served_path_metrics(user_codes, item_codes, layout, 8, held_out_of(held, sample), seen)
    assert sampled == alone


class Untouchable:
    """A test matrix that fails the moment anything reads it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"model selection read the test set ({name})")


def test_selection_on_a_sample_never_reads_the_test_set(tiny_data: Dataset) -> None:
    hidden = dataclasses.replace(tiny_data, test=Untouchable())
    config = TrainConfig.of(method="hq", bits=2, dim=16, epochs=4, eval_every=2, eval_users=50, device="cpu")
    result = train(hidden, config)
    assert [h["epoch"] for h in result.history] == [1, 3]
    assert result.best_valid["users"] == 50 and 0 < result.best_valid["recall@20_se"] < 1
    full = train(tiny_data, config.with_options(eval_users=0))
    assert "users" not in full.best_valid and "recall@20_se" not in full.best_valid
