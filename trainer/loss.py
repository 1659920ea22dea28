"""The BPR ranking loss on already-encoded vectors, shared by training and the Hessian estimate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """mean softplus(s_neg − s_pos) with s = scale · ⟨u, i⟩."""
    margin = scale * ((users * positives).sum(dim=1) - (users * negatives).sum(dim=1))
    return F.softplus(-margin).mean()
