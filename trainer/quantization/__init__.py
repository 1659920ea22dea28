"""Quantization methods, by the name the trainer's ``--method`` takes (``methods.METHODS``)."""

from __future__ import annotations

from trainer.quantization.base import ExportedCodes, Method, Quantizer, RefreshContext, Side
from trainer.quantization.methods import (
    METHODS,
    bit_choices,
    check_options,
    make_quantizer,
    method_choices,
    method_named,
    offering,
    registered,
)

__all__ = [
    "METHODS",
    "ExportedCodes",
    "Method",
    "Quantizer",
    "RefreshContext",
    "Side",
    "bit_choices",
    "check_options",
    "make_quantizer",
    "method_choices",
    "method_named",
    "offering",
    "registered",
]
