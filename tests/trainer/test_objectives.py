"""The ranking losses on small tensors: the softmax is the closed form, its gradients favour hard negatives."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import bpr
from trainer.objectives import RankingLoss, sampled_softmax


def test_softmax_equals_its_closed_form() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 3.0]])
    loss = sampled_softmax(users, positives, negatives, scale=0.5)
    # user 0: logits 0.5·[2 | 1, −1, 0]; user 1: 0.5·[2 | 2, 0, 6]
    expected = [
        math.log(sum(math.exp(0.5 * s) for s in (2, 1, -1, 0))) - 1.0,
        math.log(sum(math.exp(0.5 * s) for s in (2, 2, 0, 6))) - 1.0,
    ]
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_softmax_pushes_hardest_negative_most() -> None:
    users = torch.tensor([[1.0, 0.0]])
    positives = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.9, 0.1], [-1.0, 0.0]], requires_grad=True)
    sampled_softmax(users, positives, negatives, scale=4.0).backward()
    assert negatives.grad is not None
    hard, easy = negatives.grad[0, 0].item(), negatives.grad[1, 0].item()
    assert hard > 0 and easy > 0 and hard > 50 * easy  # gradient descent lowers both scores, the close one far more


def test_lower_temperature_sharpens_and_bpr_ignores_it() -> None:
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)
    warm = RankingLoss("softmax", temperature=1.0)(users, positives, negatives, 1.0)
    cold = RankingLoss("softmax", temperature=0.1)(users, positives, negatives, 1.0)
    assert warm.item() != pytest.approx(cold.item())
    assert sampled_softmax(users, positives, negatives, 10.0).item() == pytest.approx(cold.item())
    assert RankingLoss("bpr", temperature=0.1)(users, positives, negatives, 0.5).item() == pytest.approx(
        bpr(users, positives, negatives, 0.5).item()
    )


def test_shared_negatives_are_the_first_n() -> None:
    torch.manual_seed(1)
    users, positives, negatives = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)
    capped = RankingLoss("softmax", negatives=2)
    assert torch.equal(capped.shared(negatives), negatives[:2])
    assert capped(users, positives, negatives, 1.0).item() == pytest.approx(
        sampled_softmax(users, positives, negatives[:2], 1.0).item()
    )
    assert torch.equal(RankingLoss("softmax").shared(negatives), negatives)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "hinge"}, "loss must be one of"), ({"temperature": 0.0}, "positive"), ({"negatives": -1}, "negatives")],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankingLoss(**kwargs)  # type: ignore[arg-type]
