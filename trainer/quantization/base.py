"""The quantizer contract, and full precision (the identity) as its simplest case.

A quantizer maps LightGCN's layer stack to node representations (``represent``), gives the training
loss a differentiable surrogate of the served values (``forward``), the served values themselves
(``served``, used for model selection) and the bundle's codes and scales (``export``). Hooks let a
method act after each optimizer step or between epochs. Rows are users first, then items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from index.codes import CodeLayout, ScaleMode

Side = Literal["user", "item"]


@dataclass(frozen=True)
class ExportedCodes:
    codes: npt.NDArray[Any]
    scales: npt.NDArray[np.float32] | None = None


@dataclass
class RefreshContext:
    """What an epoch-end hook may use: the model, the epoch's training batches and the epoch number."""

    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    epoch: int


class Quantizer(nn.Module):
    """Full precision: the mean over layers, unquantized (LightGCN)."""

    layout: CodeLayout = CodeLayout.FLOAT32
    bits: int = 32
    scale_mode: ScaleMode | None = None
    needs_pretraining = False
    # No host synchronisation (after a few warm-up steps) or data-dependent shape in forward / after_step:
    # a training step can be captured as a CUDA graph (trainer.step_graph). A subclass that syncs says False.
    capturable = True

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.dim = dim
        self.layers = layers

    @property
    def user_layout(self) -> CodeLayout:
        """Users' code layout: the items' unless a method keeps more bits for users (asymmetric codes)."""
        return self.layout

    @property
    def code_dim(self) -> int:
        """Dimensions of the exported code (BiGeaR concatenates layers)."""
        return self.dim

    @property
    def score_scale(self) -> float:
        """Multiplier on inner products inside the BPR loss; ranking-invariant, it sets the temperature."""
        return 1.0

    def represent(self, layers: torch.Tensor) -> torch.Tensor:
        return layers.mean(dim=0)

    def node_representations(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.represent(model())
        n_users: int = model.n_users  # type: ignore[assignment]
        return rep[:n_users], rep[n_users:]

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        return x

    @torch.no_grad()
    def served(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        """The dequantized values serving scores with (default: the training forward)."""
        out: torch.Tensor = self(x, side)
        return out

    def export(self, x: torch.Tensor, side: Side) -> ExportedCodes:
        return ExportedCodes(as_numpy(x))

    def input_layer(
        self, n_nodes: int, dim: int, pretrained: torch.Tensor | None, propagated: torch.Tensor | None = None
    ) -> nn.Module | None:
        """A replacement for the embedding table, or None to keep it.

        ``pretrained`` are a full-precision stage's ego embeddings, ``propagated`` its output representation.
        """
        return None

    def graph_constants(self) -> tuple[float, ...]:
        """Host values a captured step bakes in (its graph is captured again when they change)."""
        return ()

    def buffers_synced(self) -> None:
        """Called after rank 0's buffers were broadcast (data parallel): refresh host copies of them."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step."""

    def refresh(self, context: RefreshContext) -> dict[str, float]:
        """Called after every epoch; returns values worth logging."""
        return {}


def as_numpy(x: torch.Tensor) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = x.detach().float().cpu().numpy()
    return out
