"""Numpy encoders: a node's representation to the code a bundle stores, without torch.

The trainer's export codes users and items with a quantizer's encoder, and serving codes a user the model never saw
with the same encoder, read back from the bundle's cold-start section (``index.cold_start``): so a new user's code
is the code training would have given that representation, bit for bit. Each encoder is a small frozen value: its
``name`` is what a section records (the section's ``method`` array, which names the method the encoder came from),
its parameters are arrays of the section file, and ``ENCODERS`` is how a reader finds the encoder a name stands for.

HQ's odd-level rounding is written once here (``odd_levels``), on numpy arrays and torch tensors alike: the trainer
rounds tensors with it in training, the encoder rounds arrays with it at export and at cold start.

Example::

    encoder = OddLevelEncoder(step=0.05, max_level=3)
    codes = encoder.encode(vectors)  # uint8 [n, 2 · dim / 8], 2-bit planes
    assert ENCODERS[encoder.name].from_arrays(encoder.to_arrays()) == encoder
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from index.codes import CodeLayout, encode_planes2, encode_sign1

Arrays = Mapping[str, npt.NDArray[Any]]


class Encoder(ABC):
    """Codes representations ``[n, dim]`` as rows of the bundle's codes in ``layout``."""

    name: ClassVar[str]  # what a cold-start section records, and ENCODERS' key

    @property
    @abstractmethod
    def layout(self) -> CodeLayout:
        """The code layout ``encode`` writes."""

    @abstractmethod
    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[Any]:
        """Codes ``[n, width]`` of representations ``[n, dim]``."""

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The encoder's parameters as section arrays, by the names ``from_arrays`` reads (none by default)."""
        return {}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> Self:
        """The encoder of a section's arrays; ValueError names the array that is missing or ill-formed."""
        return cls()


@dataclass(frozen=True)
class FloatEncoder(Encoder):
    """Full precision: the representation is its own code."""

    name: ClassVar[str] = "fp"

    @property
    def layout(self) -> CodeLayout:
        return CodeLayout.FLOAT32

    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[Any]:
        return np.asarray(vectors)


@dataclass(frozen=True)
class SignEncoder(Encoder):
    """1-bit codes: a bit per dimension, set where the value is strictly positive."""

    name: ClassVar[str] = "ste"

    @property
    def layout(self) -> CodeLayout:
        return CodeLayout.SIGN1

    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[Any]:
        return encode_sign1(vectors)


class Roundable(Protocol):
    """What ``odd_levels`` asks of its input: numpy arrays and torch tensors both have it."""

    def __truediv__(self, other: Any, /) -> Any: ...

    def round(self) -> Any: ...


A = TypeVar("A", bound=Roundable)


def odd_levels(x: A, step: Any, max_level: int) -> A:
    """HQ's rounding: the nearest odd level in [−m, m] of x / step (m = ``max_level`` = 2^b − 1), ties to even.

    ``x`` is a numpy array or a torch tensor, ``step`` a number or a tensor; the result has ``x``'s type.
    """
    levels: A = ((x / step + max_level) / 2).round().clip(0, max_level) * 2 - max_level
    return levels


@dataclass(frozen=True)
class OddLevelEncoder(Encoder):
    """HQ's codes: odd levels of a global step, ±1 as sign codes (m = 1), ±1/±3 as 2-bit planes (m = 3)."""

    name: ClassVar[str] = "hq"
    step: float
    max_level: int  # the top odd level m

    @property
    def layout(self) -> CodeLayout:
        return CodeLayout.SIGN1 if self.max_level == 1 else CodeLayout.PLANES2

    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[Any]:
        levels = odd_levels(np.asarray(vectors), self.step, self.max_level)
        if self.max_level == 1:
            return encode_sign1(levels)
        return encode_planes2(((levels + 3) / 2).astype(np.int64))

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"hq_step": np.array(self.step, dtype=np.float64), "hq_max_level": np.array(self.max_level)}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> Self:
        step, max_level = array_named(arrays, "hq_step", "f", 0), integer_named(arrays, "hq_max_level")
        if not np.isfinite(step) or float(step) <= 0:
            raise ValueError(f"'hq_step' must be one positive number, got {float(step)}")
        if max_level not in (1, 3):
            raise ValueError(f"'hq_max_level' must be 1 or 3, got {max_level}")
        return cls(float(step), max_level)


# The encoders a bundle's reader knows, by the name a section records. Serving never imports the trainer, so an
# encoder its bundles name must be listed here.
ENCODERS: dict[str, type[Encoder]] = {encoder.name: encoder for encoder in (FloatEncoder, SignEncoder, OddLevelEncoder)}


@contextmanager
def registered_encoder(encoder: type[Encoder]) -> Iterator[type[Encoder]]:
    """``encoder`` readable by name while the block runs (already listed: unchanged); another encoder of that name
    is refused."""
    known = ENCODERS.get(encoder.name)
    if known is not None and known is not encoder:
        raise ValueError(f"encoder name {encoder.name!r} is taken by {known.__qualname__}")
    ENCODERS[encoder.name] = encoder
    try:
        yield encoder
    finally:
        if known is None:
            del ENCODERS[encoder.name]


def array_named(arrays: Arrays, name: str, kinds: str, ndim: int | None = None) -> npt.NDArray[Any]:
    """``arrays[name]``, refused unless its dtype kind is one of ``kinds`` and it has ``ndim`` dimensions."""
    if name not in arrays:
        raise ValueError(f"no array {name!r}")
    array = np.asarray(arrays[name])
    if array.dtype.kind not in kinds or (ndim is not None and array.ndim != ndim):
        kind = {"f": "float", "i": "integer", "iu": "integer", "fiu": "number", "U": "string"}[kinds]
        shape = "one" if ndim == 0 else f"{ndim}-d" if ndim is not None else "any"
        raise ValueError(f"{name!r} must be {shape} {kind}, got {array.dtype} {list(array.shape)}")
    return array


def integer_named(arrays: Arrays, name: str) -> int:
    """``arrays[name]`` as one integer."""
    return int(array_named(arrays, name, "iu", 0))
