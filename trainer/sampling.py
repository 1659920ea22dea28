"""BPR triples drawn on the training device in one shot per epoch (no Python loop per sample)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class BPRSampler:
    """Positive pairs in a shuffled order, each with one uniformly drawn item the user has not seen.

    Membership is tested by binary search over the sorted keys ``user·n_items + item`` of the training
    set; colliding negatives are redrawn a few times (after that the rare leftover is kept, as the
    reference implementations do).
    """

    def __init__(self, train: sp.csr_matrix, device: torch.device, *, redraws: int = 4) -> None:
        coo = train.tocoo()
        self.n_items = train.shape[1]
        self.users = torch.from_numpy(coo.row.astype(np.int64)).to(device)
        self.items = torch.from_numpy(coo.col.astype(np.int64)).to(device)
        self.keys = torch.sort(self.users * self.n_items + self.items).values
        self.device = device
        self.redraws = redraws

    def __len__(self) -> int:
        return int(self.users.numel())

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        queries = users * self.n_items + items
        pos = torch.searchsorted(self.keys, queries).clamp_(max=self.keys.numel() - 1)
        found: torch.Tensor = self.keys[pos] == queries
        return found

    def negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        items = torch.randint(self.n_items, users.shape, device=self.device, generator=generator)
        for _ in range(self.redraws):
            clash = self._is_positive(users, items)
            if not bool(clash.any()):
                break
            items[clash] = torch.randint(self.n_items, (int(clash.sum()),), device=self.device, generator=generator)
        return items

    def epoch(
        self, batch_size: int, generator: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), device=self.device, generator=generator)
        users, positives = self.users[order], self.items[order]
        negatives = self.negatives(users, generator)
        return [
            (users[s : s + batch_size], positives[s : s + batch_size], negatives[s : s + batch_size])
            for s in range(0, len(self), batch_size)
        ]
