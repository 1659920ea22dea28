"""Quantization methods, by the name the trainer's ``--method`` takes."""

from __future__ import annotations

from binrec.trainer.quantization.base import ExportedCodes, Quantizer, RefreshContext, Side
from binrec.trainer.quantization.bigear import BiGeaRQuantizer
from binrec.trainer.quantization.gnaq import NodeAwareQuantizer
from binrec.trainer.quantization.hq import HessianAwareQuantizer
from binrec.trainer.quantization.ste import SignSTEQuantizer

METHODS: dict[str, str] = {
    "fp": "full precision (LightGCN reference)",
    "ste": "1-bit sign codes, straight-through gradients",
    "bigear": "1-bit codes per layer with per-node scales, Gaussian-delta gradients",
    "hq": "HQ-GNN: b-bit (1 or 2) uniform codes, Hessian-aware generalised STE",
    "gnaq": "GNAQ: 2-bit per-node codebooks, re-binned from propagation (needs fp pre-training)",
}


def make_quantizer(
    method: str,
    dim: int,
    layers: int,
    *,
    bits: int | None = None,
    user_bits: int | None = None,
    item_scales: bool = False,
) -> Quantizer:
    """The quantizer for ``method``; ``bits`` (default 1), ``user_bits`` (default ``bits``) and ``item_scales``
    apply to ``hq`` only."""
    if method == "hq":
        return HessianAwareQuantizer(dim, layers, bits=bits or 1, user_bits=user_bits, item_scales=item_scales)
    if bits is not None or user_bits is not None:
        raise ValueError(f"--bits and --user-bits apply to hq only; {method} has a fixed bit width")
    if item_scales:
        raise ValueError(f"--item-scales applies to hq only, not {method}")
    classes: dict[str, type[Quantizer]] = {
        "fp": Quantizer,
        "ste": SignSTEQuantizer,
        "bigear": BiGeaRQuantizer,
        "gnaq": NodeAwareQuantizer,
    }
    if method not in classes:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return classes[method](dim, layers)


__all__ = ["METHODS", "ExportedCodes", "Quantizer", "RefreshContext", "Side", "make_quantizer"]
