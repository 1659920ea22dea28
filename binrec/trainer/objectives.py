"""Ranking losses on an encoded batch: BPR (one negative per positive) or a sampled softmax (many).

BPR compares each positive with one random item, so once a model ranks the positive above a typical item
the gradient vanishes, long before it ranks it in the top 20 of tens of thousands. The sampled softmax
compares each positive with every negative drawn for the batch (all triples' negatives, shared across the
batch's users): a user's positive is pushed above the hardest of thousands of items at once, which is
what Recall@20 rewards and what a low-bit code, with its few distinct scores, most needs.

Both take the already-quantized vectors, so every quantizer trains against the values it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from binrec.trainer.loss import bpr

LossKind = Literal["bpr", "softmax"]
LOSS_KINDS: tuple[LossKind, ...] = ("bpr", "softmax")


def shared_negative_logits(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``scale · ⟨u, i⟩`` of each user's own positive, ``[B]``, and of every shared negative, ``[B, N]``."""
    positive = scale * (users * positives).sum(dim=1)
    negative = scale * users @ negatives.T
    return positive, negative


def sampled_softmax(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, scale: float
) -> torch.Tensor:
    """mean over the batch of −log softmax(positive | positive, all N shared negatives), logits ``scale · ⟨u, i⟩``."""
    positive, negative = shared_negative_logits(users, positives, negatives, scale)
    logits = torch.cat([positive[:, None], negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@dataclass(frozen=True)
class RankingLoss:
    """The training loss on quantized vectors; ``scale`` is the quantizer's score scale (its temperature).

    ``temperature`` divides the softmax's logits further (not BPR's, whose scale the quantizer sets): a small
    temperature concentrates the loss on the negatives that score close to the positive.
    """

    kind: LossKind = "bpr"
    temperature: float = 1.0
    negatives: int = 0  # the softmax's shared negatives: the first this many of the batch's (0: all of them)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"the softmax temperature must be positive, got {self.temperature}")
        if self.negatives < 0:
            raise ValueError(f"the softmax's negatives must be 0 (all) or positive, got {self.negatives}")

    def __call__(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, scale: float
    ) -> torch.Tensor:
        if self.kind == "bpr":
            return bpr(users, positives, negatives, scale)
        return sampled_softmax(users, positives, self.shared(negatives), scale / self.temperature)

    def shared(self, negatives: torch.Tensor) -> torch.Tensor:
        """The negatives every user of the batch is compared with (rows of ``negatives``, item ids or vectors)."""
        return negatives[: self.negatives] if self.negatives else negatives


BPR = RankingLoss()  # the default loss (frozen: one instance serves every default)
