"""Ranking distillation from a full-precision teacher: the student learns the teacher's ranking, not only labels.

A quantized model trained on interactions alone learns which items a user took, but its few distinct
scores must also order the thousands of items the user never saw, and the labels say nothing about those.
A full-precision LightGCN already orders them well. So each training step also matches, per user, the
student's softmax over a candidate list to the teacher's: the user's ``top`` best unseen items by the
teacher (fixed, computed once), where Recall@20 is decided, plus the batch's shared random negatives,
which anchor the top items against the rest of the catalogue. The loss is KL(teacher ‖ student) on that list.

The teacher is an ``fp`` run's saved ego embeddings (``--save-warm-start``), propagated once over this
run's graph; its width may differ from the student's (a wider teacher ranks better).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from trainer.evaluate import rank_topk
from trainer.model import layer_mean
from trainer.options import option
from trainer.warm_start import Stage, load_stage, saved_temperature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillationConfig:
    """Where the teacher comes from and how much its ranking weighs against the interactions."""

    teacher: Path
    weight: float = 1.0
    top: int = 20  # the teacher's best unseen items per user that join every candidate list
    temperature: float = 1.0  # divides the teacher's inner products: its logits

    def __post_init__(self) -> None:
        if self.weight <= 0 or self.top <= 0 or not self.temperature > 0:
            raise ValueError(
                f"distillation needs a positive weight, top and temperature, got {self.weight}, {self.top}, "
                f"{self.temperature}"
            )


@dataclass(frozen=True)
class DistillationOptions:
    """The command line's distillation options; a run distils only when ``--teacher`` names a file."""

    teacher: Path | None = option(
        None,
        "an fp run's --save-warm-start file (any --dim, same --layers): add KL(teacher || student) over each "
        "user's list of the teacher's top unseen items and the batch's negatives; 'auto': train (or reuse from "
        "--stage-cache) an fp warm start of this --dim and an fp teacher of twice it first, then the student "
        "with the best measured distillation settings (trainer.recipe)",
    )
    distill_weight: float = option(1.0, "weight of the distillation term", above=0)
    distill_top: int = option(20, "teacher's top unseen items per user in the list", at_least=1)
    distill_temperature: float | None = option(
        None,
        "divides the teacher's inner products (default: the temperature the teacher trained under, which its file "
        "records: its --temperature with the softmax loss, else 1)",
        above=0,
    )

    def config(self) -> DistillationConfig | None:
        """The distillation of this run: the teacher read at the temperature it was trained under, unless
        ``--distill-temperature`` says otherwise."""
        if self.teacher is None:
            return None
        if not self.teacher.is_file():
            raise ValueError(f"--teacher: no such file: {self.teacher}")
        return DistillationConfig(
            teacher=self.teacher,
            weight=self.distill_weight,
            top=self.distill_top,
            temperature=self.distill_temperature
            if self.distill_temperature is not None
            else saved_temperature(self.teacher),
        )


class RankingDistillation(nn.Module):
    """KL(teacher ‖ student) over each user's list [teacher's top unseen items | the batch's shared negatives].

    Holds the teacher's vectors and top lists as buffers, so it moves with the model and a training step that
    uses it can still be captured as a CUDA graph (fixed shapes, no host synchronisation).
    """

    teacher_users: torch.Tensor
    teacher_items: torch.Tensor
    top_items: torch.Tensor

    def __init__(
        self,
        teacher_users: torch.Tensor,
        teacher_items: torch.Tensor,
        top_items: torch.Tensor,
        config: DistillationConfig,
    ) -> None:
        super().__init__()
        self.register_buffer("teacher_users", teacher_users, persistent=False)
        self.register_buffer("teacher_items", teacher_items, persistent=False)
        self.register_buffer("top_items", top_items, persistent=False)
        self.weight = config.weight
        self.temperature = config.temperature

    def teacher_logits(self, users: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``[B, top + N]``: the teacher's logits of each user's list."""
        with torch.no_grad():
            query = self.teacher_users[users]
            top = (query[:, None, :] * self.teacher_items[self.top_items[users]]).sum(dim=2)
            shared = query @ self.teacher_items[negatives].T
            return torch.cat([top, shared], dim=1) / self.temperature

    def forward(
        self,
        users: torch.Tensor,
        student_users: torch.Tensor,
        student_top: torch.Tensor,
        negatives: torch.Tensor,
        student_negatives: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """``student_users`` ``[B, d]``, ``student_top`` ``[B, top, d]`` (the quantized vectors of
        ``top_items[users]``), ``student_negatives`` ``[N, d]`` (of ``negatives``); ``scale`` turns the student's
        inner products into logits."""
        top = (student_users[:, None, :] * student_top).sum(dim=2)
        shared = student_users @ student_negatives.T
        student = torch.cat([top, shared], dim=1) * scale
        target = F.log_softmax(self.teacher_logits(users, negatives), dim=1)
        kl = F.kl_div(F.log_softmax(student, dim=1), target, log_target=True, reduction="batchmean")
        return self.weight * kl


def load_teacher(
    config: DistillationConfig,
    stage: Stage,
    *,
    dataset: str,
    n_users: int,
    adjacency: torch.Tensor,
    layers: int,
    seen: sp.csr_matrix,
) -> RankingDistillation:
    """The teacher of ``config.teacher`` (its ``stage``: the selected model, or the refit one for a refit),
    propagated over ``adjacency`` with ``layers`` layers, its top lists over the items not in ``seen``."""
    saved = load_stage(config.teacher, stage, dataset=dataset, n_nodes=adjacency.shape[0], dim=None, layers=layers)
    with torch.no_grad():
        represented = layer_mean(saved.ego.to(adjacency.device), adjacency, layers)
    users, items = represented[:n_users].contiguous(), represented[n_users:].contiguous()
    # The same full ranking, training items masked, as model selection uses (ties do not matter here).
    ranked = rank_topk(users, items, np.arange(n_users, dtype=np.int64), seen, config.top, integer_scores=False)
    top = torch.from_numpy(ranked).to(adjacency.device)
    log.info("distilling from %s (%s stage, d=%d): top %d items per user", config.teacher, stage, users.shape[1],
             top.shape[1])  # fmt: skip
    return RankingDistillation(users, items, top, config)
