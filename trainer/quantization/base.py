"""What a quantization method is (``Method``), the quantizer contract, and full precision (the identity) as the
simplest case of both.

A quantizer maps LightGCN's layer stack to node representations (``represent``), gives the training
loss a differentiable surrogate of the served values (``forward``), the served values themselves
(``served``, used for model selection) and the bundle's codes and scales (``export``). Hooks let a
method act after each optimizer step or between epochs. Rows are users first, then items.

Where a node's code is a function of its representation alone, the quantizer names the numpy encoder that computes
it (``encoder``, from ``index.encoders``): the export codes with it, and the bundle carries it so that serving codes
a new user the same way without torch. A ``Method`` declares the rest of what the CLI, the config and the export need
to know about a method before any quantizer exists; ``trainer.quantization.methods`` lists them by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from index.codes import CodeLayout, ScaleMode
from index.encoders import Encoder, FloatEncoder
from trainer.model import LightGCN

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

    @classmethod
    def build(cls, dim: int, layers: int, *, bits: int, user_bits: int, item_scales: bool) -> Self:
        """The quantizer of a run's options, which its ``Method`` has checked: a method of one bit width and no
        scales has nothing to choose, so its quantizer takes the sizes alone."""
        return cls(dim, layers)

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
        """Users' and items' representations. Where it is the plain layer mean, as a running sum: the stack of
        K + 1 layers, and the gradient the mean expands back over it, are the largest buffers of a full-graph
        step (each (K + 1) · n × d floats), and the running sum's values and gradients are the same."""
        if type(self).represent is Quantizer.represent and isinstance(model, LightGCN):
            rep = model.layer_mean()
        else:
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

    def encoder(self, side: Side) -> Encoder | None:
        """The numpy encoder of this side's codes as trained now, or None where a code needs more than the node's
        representation (per-node scales or level tables): then new users cannot be coded, and ``export`` is the
        method's own."""
        return FloatEncoder()

    def export(self, x: torch.Tensor, side: Side) -> ExportedCodes:
        """The bundle's codes (and scales) of these rows: by default the encoder's codes of them."""
        encoder = self.encoder(side)
        if encoder is None:
            raise NotImplementedError(f"{type(self).__name__} has no encoder: it must export its codes itself")
        return ExportedCodes(encoder.encode(as_numpy(x)))

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


@dataclass(frozen=True)
class Method:
    """A quantization method as ``--method`` offers it: its quantizer, its code layouts, its numpy encoder.

    Example (a method of one width takes its ``bits`` and ``layout`` from its quantizer class)::

        STE = Method("ste", "1-bit sign codes, straight-through gradients", SignSTEQuantizer, encoder=SignEncoder)
        quantizer = STE.build(64, 3)
    """

    name: str
    description: str  # one line, for --help
    quantizer: type[Quantizer]
    encoder: type[Encoder] | None  # the type of the quantizer's ``encoder``; None: it has none (no cold start)
    # Code layout by bits per dimension, where --bits chooses (the first is the default); None: the quantizer's own.
    layouts: Mapping[int, CodeLayout] | None = None
    user_bits: bool = False  # --user-bits may give users more bits than items (asymmetric codes)
    item_scales: bool = False  # --item-scales keeps a scale per item beside its code

    @property
    def widths(self) -> Mapping[int, CodeLayout]:
        """Every bit width the method codes in, with its layout."""
        if self.layouts is not None:
            return self.layouts
        return {self.quantizer.bits: self.quantizer.layout}

    @property
    def chooses_bits(self) -> bool:
        return len(self.widths) > 1

    def resolve(self, bits: int | None, user_bits: int | None) -> tuple[int, int]:
        """Items' and users' bits, defaults filled in: the first width, and the items' bits for users."""
        bits = bits or next(iter(self.widths))
        return bits, user_bits or bits

    def check(self, *, bits: int | None = None, user_bits: int | None = None, item_scales: bool = False) -> None:
        """Refuse bit widths this method has no codes for, and combinations the index cannot score exactly."""
        items, users = self.resolve(bits, user_bits)
        if items not in self.widths or users not in self.widths:
            offered = " or ".join(str(width) for width in self.widths)
            raise ValueError(f"{self.name} supports {offered} bits, got {items} (items) and {users} (users)")
        if users < items:
            raise ValueError(f"users need at least the items' bits, got {users} < {items}")
        if users != items and not self.user_bits:
            raise ValueError(f"{self.name} codes users and items in the same bits, got {users} and {items}")
        if item_scales and not self.item_scales:
            raise ValueError(f"{self.name} keeps no item scales")
        if item_scales and users != items:
            raise ValueError("--item-scales does not combine with --user-bits above --bits")

    def layout(self, bits: int | None = None) -> CodeLayout:
        """The layout of codes of ``bits`` (default: the method's first width)."""
        return self.widths[self.resolve(bits, None)[0]]

    def build(
        self, dim: int, layers: int, *, bits: int | None = None, user_bits: int | None = None, item_scales: bool = False
    ) -> Quantizer:
        """The quantizer of these options, refused unless the method offers them."""
        self.check(bits=bits, user_bits=user_bits, item_scales=item_scales)
        items, users = self.resolve(bits, user_bits)
        return self.quantizer.build(dim, layers, bits=items, user_bits=users, item_scales=item_scales)


FP = Method("fp", "full precision (LightGCN reference)", Quantizer, encoder=FloatEncoder)
