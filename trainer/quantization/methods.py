"""The quantization methods ``--method`` offers, by name: the one list the CLI, the config, training and export read.

A method lives in one module, which declares its ``Method`` beside its quantizer (``trainer.quantization.hq``'s
``HQ``); adding one is that module and one entry in ``METHODS``. Its encoder must be one that ``index.encoders``
lists, since serving finds a bundle's encoder there without the trainer; ``registered`` adds a method (and its
encoder) for a while, as tests do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TypeVar, overload

from index.encoders import registered_encoder
from trainer.quantization.base import FP, Method, Quantizer
from trainer.quantization.bigear import BIGEAR
from trainer.quantization.gnaq import GNAQ
from trainer.quantization.hq import HQ
from trainer.quantization.ste import STE

METHODS: dict[str, Method] = {method.name: method for method in (FP, STE, BIGEAR, HQ, GNAQ)}

T = TypeVar("T")


def method_named(name: str) -> Method:
    """The method ``--method name`` stands for; ValueError lists the others."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def offering(option: Callable[[Method], bool]) -> str:
    """The names of the methods that offer an option, as help and refusals name them ("hq", "hq, ste")."""
    return ", ".join(name for name, method in METHODS.items() if option(method))


def check_options(
    method: str, dim: int, *, bits: int | None = None, user_bits: int | None = None, item_scales: bool = False
) -> None:
    """Refuse options no quantizer takes, building nothing: the CLI checks them before it loads any data.

    ``make_quantizer`` refuses the same method and bit options; the dimension check is the index's (binary codes
    are packed eight dimensions to a byte).
    """
    declared = _checked(method, bits=bits, user_bits=user_bits, item_scales=item_scales)
    if declared.layout(bits).is_binary and dim % 8:
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
    """The quantizer for ``method``; ``bits`` (default: the method's first width), ``user_bits`` (default ``bits``)
    and ``item_scales`` apply to the methods that offer them."""
    declared = _checked(method, bits=bits, user_bits=user_bits, item_scales=item_scales)
    return declared.build(dim, layers, bits=bits, user_bits=user_bits, item_scales=item_scales)


def _checked(name: str, *, bits: int | None, user_bits: int | None, item_scales: bool) -> Method:
    """The method, refused with the options it does not take (naming the methods that do) or cannot code."""
    method = method_named(name)
    if (bits is not None or user_bits is not None) and not method.chooses_bits:
        only = offering(lambda m: m.chooses_bits)
        raise ValueError(f"--bits and --user-bits apply to {only} only; {name} has a fixed bit width")
    if user_bits is not None and not method.user_bits:
        raise ValueError(f"--user-bits applies to {offering(lambda m: m.user_bits)} only, not {name}")
    if item_scales and not method.item_scales:
        raise ValueError(f"--item-scales applies to {offering(lambda m: m.item_scales)} only, not {name}")
    method.check(bits=bits, user_bits=user_bits, item_scales=item_scales)
    return method


@contextmanager
def registered(method: Method) -> Iterator[Method]:
    """``method`` offered (and its encoder readable, ``index.encoders.registered_encoder``) while the block runs."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} exists already")
    with registered_encoder(method.encoder) if method.encoder is not None else nullcontext():
        METHODS[method.name] = method
        try:
            yield method
        finally:
            del METHODS[method.name]


class Offered(Sequence[T]):
    """Choices read from ``METHODS`` whenever argparse asks, so a method registered after import is offered too."""

    def __init__(self, values: Callable[[], list[T]]) -> None:
        self._values = values

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())


def method_choices() -> Offered[str]:
    """``--method``'s choices: every method's name."""
    return Offered(lambda: list(METHODS))


def bit_choices() -> Offered[int]:
    """``--bits``' and ``--user-bits``' choices: the widths of the methods that choose their bits."""
    return Offered(lambda: sorted({bits for m in METHODS.values() if m.chooses_bits for bits in m.widths}))
