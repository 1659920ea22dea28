"""BPR sampling: real training pairs, unseen negatives, and the weighting each mode promises."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.sampling import BPRSampler


def skewed_train() -> sp.csr_matrix:
    """User 0 has 40 items, users 1..4 one each: interaction sampling favours user 0, user sampling does not."""
    rows = [0] * 40 + [1, 2, 3, 4]
    cols = list(range(40)) + [40, 41, 42, 43]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(6, 400))  # user 5: no items


def draw(mode: str, epochs: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sampler = BPRSampler(skewed_train(), torch.device("cpu"), mode=mode)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    batches = [b for _ in range(epochs) for b in sampler.epoch(16, generator)]
    return tuple(torch.cat([b[i] for b in batches]) for i in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("mode", ["user", "interaction"])
def test_positives_are_training_pairs_and_negatives_are_not(mode: str) -> None:
    train = skewed_train().toarray()
    users, positives, negatives = draw(mode)
    assert users.numel() == 200 * 44
    assert train[users.numpy(), positives.numpy()].all()
    # User 0 holds 10 % of the catalogue; after the redraws a rare leftover may remain (as documented).
    assert train[users.numpy(), negatives.numpy()].mean() < 1e-3
    assert 5 not in set(users.tolist())  # a user without training items is never drawn


def test_user_sampling_weighs_every_user_alike() -> None:
    users, positives, _ = draw("user")
    counts = np.bincount(users.numpy(), minlength=6)[:5]
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    heavy_items = np.bincount(positives[users == 0].numpy(), minlength=40)
    assert (heavy_items > 0).all()  # every item of the heavy user comes up


def test_interaction_sampling_visits_each_pair_once_per_epoch() -> None:
    users, positives, _ = draw("interaction", epochs=1)
    pairs = sorted(zip(users.tolist(), positives.tolist(), strict=True))
    train = skewed_train().tocoo()
    assert pairs == sorted(zip(train.row.tolist(), train.col.tolist(), strict=True))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        BPRSampler(skewed_train(), torch.device("cpu"), mode="items")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["user", "interaction"])
def test_ids_are_kept_narrow_and_are_the_ids_a_wide_sampler_draws(mode: str) -> None:
    narrow = BPRSampler(skewed_train(), torch.device("cpu"), mode=mode)  # type: ignore[arg-type]
    wide = BPRSampler(skewed_train(), torch.device("cpu"), mode=mode)  # type: ignore[arg-type]
    wide.id_dtype, wide.users, wide.items = torch.int64, wide.users.long(), wide.items.long()  # what ids past 2³¹ get
    drawn = [s.epoch(16, torch.Generator().manual_seed(3)) for s in (narrow, wide)]
    for narrow_batch, wide_batch in zip(*drawn, strict=True):
        for a, b in zip(narrow_batch, wide_batch, strict=True):
            assert a.dtype == torch.int32 and b.dtype == torch.int64
            assert torch.equal(a.long(), b)
