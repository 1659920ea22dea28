"""Ranking losses on an encoded batch: BPR (one negative per positive) or a sampled softmax (many).

BPR compares each positive with one random item, so once a model ranks the positive above a typical item
the gradient vanishes, long before it ranks it in the top 20 of tens of thousands. The sampled softmax
compares each positive with every negative drawn for the batch (all triples' negatives, shared across the
batch's users): a user's positive is pushed above the hardest of thousands of items at once, which is
what Recall@20 rewards and what a low-bit code, with its few distinct scores, most needs.

Both take the already-quantized vectors, so every quantizer trains against the values it serves. The training
objective (``ranking_loss``) adds LightGCN's L2 term and, with a teacher, the distillation term
(trainer.distillation) over the same quantized vectors; ``parallel_objective`` makes it one module that data
parallelism can wrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainer.distillation import RankingDistillation
from trainer.distributed import GradCompression, GradSync, World, data_parallel
from trainer.loss import bpr
from trainer.model import LightGCN
from trainer.quantization import Quantizer

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


def ranking_loss(
    model: LightGCN,
    quantizer: Quantizer,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    reg: float,
    loss: RankingLoss = BPR,
    distillation: RankingDistillation | None = None,
) -> torch.Tensor:
    """The ranking loss (BPR by default) on the quantized representations, L2 on the batch's ego embeddings
    (LightGCN's form) and, with a teacher, the distillation term over the same quantized item vectors."""
    user_rep, item_rep = quantizer.node_representations(model)
    u = quantizer(user_rep[users], "user")
    if distillation is None:
        p = quantizer(item_rep[positives], "item")
        n = quantizer(item_rep[negatives], "item")
    else:  # the teacher's lists repeat items many times over: quantize every item once, then gather (quantizers
        # act on each row alone, so the values and gradients are the same)
        items = quantizer(item_rep, "item")
        p, n = items[positives], items[negatives]
    ego = model.ego(torch.cat([users, positives + model.n_users, negatives + model.n_users]))
    l2 = 0.5 * ego.pow(2).sum() / users.numel()
    total = loss(u, p, n, quantizer.score_scale) + reg * l2
    if distillation is not None:
        top = items[distillation.top_items[users]]
        shared, shared_ids = loss.shared(n), loss.shared(negatives)
        total = total + distillation(users, u, top, shared_ids, shared, quantizer.score_scale / loss.temperature)
    return total


class RankingObjective(nn.Module):
    """The training loss as one module, so DistributedDataParallel can average its gradients across ranks."""

    def __init__(
        self,
        model: LightGCN,
        quantizer: Quantizer,
        reg: float,
        loss: RankingLoss = BPR,
        distillation: RankingDistillation | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.quantizer = quantizer
        self.reg = reg
        self.loss = loss
        self.distillation = distillation

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The batch's ids may come narrow (``BPRSampler`` keeps int32): widened here, a batch at a time."""
        users, positives, negatives = users.long(), positives.long(), negatives.long()
        return ranking_loss(
            self.model, self.quantizer, users, positives, negatives, self.reg, self.loss, self.distillation
        )


def parallel_objective(
    model: LightGCN,
    quantizer: Quantizer,
    reg: float,
    world: World,
    compression: GradCompression = "none",
    sync: GradSync = "allreduce",
    loss: RankingLoss = BPR,
    distillation: RankingDistillation | None = None,
) -> nn.Module:
    """The loss module, data-parallel under torchrun as ``sync`` says (trainer.distributed.data_parallel)."""
    objective = RankingObjective(model, quantizer, reg, loss, distillation)
    return data_parallel(objective, world, model.adjacency.device, compression, sync)
