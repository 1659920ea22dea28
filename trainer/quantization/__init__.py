"""Quantization methods, by the name the trainer's ``--method`` takes."""

from __future__ import annotations

from trainer.quantization.base import ExportedCodes, Quantizer, RefreshContext, Side
from trainer.quantization.bigear import BiGeaRQuantizer
from trainer.quantization.gnaq import NodeAwareQuantizer
from trainer.quantization.hq import HessianAwareQuantizer, check_bits, layout_of
from trainer.quantization.ste import SignSTEQuantizer

METHODS: dict[str, str] = {
    "fp": "full precision (LightGCN reference)",
    "ste": "1-bit sign codes, straight-through gradients",
    "bigear": "1-bit codes per layer with per-node scales, Gaussian-delta gradients",
    "hq": "HQ-GNN: b-bit (1 or 2) uniform codes, Hessian-aware generalised STE",
    "gnaq": "GNAQ: 2-bit per-node codebooks, re-binned from propagation (needs fp pre-training)",
}


QUANTIZERS: dict[str, type[Quantizer]] = {
    "fp": Quantizer,
    "ste": SignSTEQuantizer,
    "bigear": BiGeaRQuantizer,
    "hq": HessianAwareQuantizer,
    "gnaq": NodeAwareQuantizer,
}


def check_options(
    method: str, dim: int, *, bits: int | None = None, user_bits: int | None = None, item_scales: bool = False
) -> None:
    """Refuse options no quantizer takes, building nothing: the CLI checks them before it loads any data.

    ``make_quantizer`` refuses the same method and bit options; the dimension check is the index's (binary codes
    are packed eight dimensions to a byte).
    """
    if method not in QUANTIZERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "hq":
        check_bits(bits or 1, user_bits, item_scales)
    elif bits is not None or user_bits is not None:
        raise ValueError(f"--bits and --user-bits apply to hq only; {method} has a fixed bit width")
    elif item_scales:
        raise ValueError(f"--item-scales applies to hq only, not {method}")
    layout = layout_of(bits or 1) if method == "hq" else QUANTIZERS[method].layout
    if layout.is_binary and dim % 8:
        raise ValueError(f"--dim must be a multiple of 8 for binary codes, got {dim}")


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
    if method not in QUANTIZERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return QUANTIZERS[method](dim, layers)


__all__ = [
    "METHODS",
    "QUANTIZERS",
    "ExportedCodes",
    "Quantizer",
    "RefreshContext",
    "Side",
    "check_options",
    "make_quantizer",
]
