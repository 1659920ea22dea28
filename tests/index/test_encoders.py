"""The numpy encoders: each round-trips through its section arrays, HQ's rounding picks the nearest odd level (ties to
even, clipped), and a cold-start section whose encoder a reader could not find is refused before it is published."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from index.codes import CodeLayout, dequantize
from index.encoders import ENCODERS, Encoder, FloatEncoder, OddLevelEncoder, SignEncoder, odd_levels, registered_encoder
from tests.index.test_cold_start import published, section


@pytest.mark.parametrize(
    ("encoder", "layout"),
    [
        (FloatEncoder(), CodeLayout.FLOAT32),
        (SignEncoder(), CodeLayout.SIGN1),
        (OddLevelEncoder(0.25, 1), CodeLayout.SIGN1),
        (OddLevelEncoder(0.25, 3), CodeLayout.PLANES2),
    ],
)
def test_an_encoder_round_trips_through_its_arrays_and_writes_its_layout(encoder: Encoder, layout: CodeLayout) -> None:
    assert ENCODERS[encoder.name].from_arrays(encoder.to_arrays()) == encoder
    assert encoder.layout is layout
    vectors = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    codes = encoder.encode(vectors)
    assert dequantize(codes, layout, 16).shape == (5, 16)


def test_odd_levels_are_the_nearest_clipped_with_ties_to_even() -> None:
    # x / step = [-10, -2, -1, 0, 0.6, 1, 2, 2.9, 8]; at -2, 0 and 2, (x / step + m) / 2 is halfway: to even.
    x = np.array([-10, -2, -1, 0, 0.6, 1, 2, 2.9, 8], dtype=np.float32) * 0.5
    np.testing.assert_array_equal(odd_levels(x, 0.5, 3), [-3, -3, -1, 1, 1, 1, 1, 3, 3])
    np.testing.assert_array_equal(odd_levels(x, 0.5, 1), [-1, -1, -1, -1, 1, 1, 1, 1, 1])
    codes = OddLevelEncoder(0.5, 3).encode(x[None, :8])
    np.testing.assert_array_equal(dequantize(codes, CodeLayout.PLANES2, 8)[0], odd_levels(x[:8], 0.5, 3))


@dataclass(frozen=True)
class UnlistedEncoder(Encoder):
    name: ClassVar[str] = "unlisted"

    @property
    def layout(self) -> CodeLayout:
        return CodeLayout.PLANES2

    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
        return OddLevelEncoder(0.05, 3).encode(vectors)


def test_a_section_whose_encoder_no_reader_knows_is_not_published(tmp_path: Path) -> None:
    cold = dataclasses.replace(section(), encoder=UnlistedEncoder())
    with pytest.raises(ValueError, match="codes new users with 'unlisted', which index.encoders does not list"):
        published(tmp_path, cold)
    with registered_encoder(UnlistedEncoder):
        published(tmp_path, cold)
    assert "unlisted" not in ENCODERS


def test_an_encoder_name_cannot_be_taken_twice() -> None:
    @dataclass(frozen=True)
    class Impostor(SignEncoder):
        pass

    with pytest.raises(ValueError, match="encoder name 'ste' is taken by SignEncoder"), registered_encoder(Impostor):
        pass
    assert ENCODERS["ste"] is SignEncoder
