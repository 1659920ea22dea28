"""A quantization method is its ``Method`` declaration and one registry entry: a method defined here, in the test,
is offered by the CLI, trains, exports a bundle that loads and answers, and its own numpy encoder codes a new user
at serving time as its torch quantizer does. Anything that lists methods by hand instead of reading the registry
(the CLI's choices, the quantizer factory, the export's cold-start section, the bundle reader) fails this test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import pytest
import torch

from index.bundle import Bundle
from index.codes import CodeLayout, dequantize, encode_sign1
from index.encoders import ENCODERS, Arrays, Encoder, SignEncoder, array_named
from index.item_index import ItemIndex
from service.cold_start import ColdStart
from trainer.cli import RunConfig, build_parser, check_run, train_config
from trainer.data import Dataset
from trainer.export import export_bundle
from trainer.quantization import METHODS, Method, RefreshContext, Side, check_options, make_quantizer, registered
from trainer.quantization.ste import SignSTEQuantizer, sign_ste
from trainer.train import TrainResult, train


@dataclass(frozen=True)
class OffsetSignEncoder(Encoder):
    """Signs of the representation less a global offset; the offset travels in the bundle's cold-start section."""

    name: ClassVar[str] = "test-offset-sign"
    offset: float

    @property
    def layout(self) -> CodeLayout:
        return CodeLayout.SIGN1

    def encode(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
        return encode_sign1(np.asarray(vectors) - self.offset)

    def to_arrays(self) -> dict[str, npt.NDArray[np.float64]]:
        return {"offset_sign_offset": np.array(self.offset, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> Self:
        return cls(float(array_named(arrays, "offset_sign_offset", "f", 0)))


class OffsetSignQuantizer(SignSTEQuantizer):
    """1-bit codes of x − c, c the users' mean value, refreshed after every epoch."""

    offset: torch.Tensor

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__(dim, layers)
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, x: torch.Tensor, side: Side) -> torch.Tensor:
        return sign_ste(x - self.offset)

    def refresh(self, context: RefreshContext) -> dict[str, float]:
        with torch.no_grad():
            users, _ = self.node_representations(context.model)
            self.offset.fill_(float(users.mean()))
        return {"offset": float(self.offset)}

    def encoder(self, side: Side) -> OffsetSignEncoder:
        return OffsetSignEncoder(float(self.offset))


OFFSET_SIGN = Method(
    "offsign", "1-bit signs about the users' mean (a test method)", OffsetSignQuantizer, encoder=OffsetSignEncoder
)
RUN = ["--method", "offsign", "--dim", "16", "--epochs", "3", "--eval-every", "1", "--batch-size", "1024",
       "--device", "cpu", "--sampling", "interaction"]  # fmt: skip


@pytest.fixture(scope="module")
def offset_sign() -> Iterator[Method]:
    with registered(OFFSET_SIGN) as method:
        yield method


@pytest.fixture(scope="module")
def trained(
    offset_sign: Method, tiny_data: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, Path]:
    args = build_parser().parse_args(RUN + ["--bundle-root", str(tmp_path_factory.mktemp("offsign"))])
    run = RunConfig.from_args(args)
    check_run(run)
    result = train(tiny_data, run.train)
    report = export_bundle(result, tiny_data, run.train, run.output.bundle_root)
    return result, report.bundle_path


def test_the_cli_offers_a_registered_method_and_only_while_registered() -> None:
    other = Method("offsign2", "another test method", OffsetSignQuantizer, encoder=OffsetSignEncoder)
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "offsign2"])
    with registered(other):
        config = train_config(parser.parse_args(["--method", "offsign2", "--dim", "16"]))
        assert config.model.method == "offsign2" and "offsign2" in parser.format_help()
        check_options("offsign2", 16)
        with pytest.raises(ValueError, match="--dim must be a multiple of 8"):
            check_options("offsign2", 12)
        with pytest.raises(ValueError, match="--bits and --user-bits apply to hq only; offsign2 has a fixed"):
            check_options("offsign2", 16, bits=1)
        assert ENCODERS["test-offset-sign"] is OffsetSignEncoder
    assert "offsign2" not in METHODS and "test-offset-sign" not in ENCODERS
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "offsign2"])


def test_a_registered_method_trains_exports_and_is_served(trained: tuple[TrainResult, Path]) -> None:
    result, path = trained
    quantizer = result.quantizer
    assert isinstance(quantizer, OffsetSignQuantizer) and float(quantizer.offset) != 0.0
    bundle = Bundle.load(path)
    assert (bundle.manifest.method, bundle.manifest.bits, bundle.layout) == ("offsign", 1, CodeLayout.SIGN1)
    # The item index answers every trained user, ranking as the export's served path did.
    index = ItemIndex.build(bundle.item_codes, bundle.layout, bundle.dim, device="cpu")
    found = index.search(bundle.user_codes, 10)
    assert found.ids.shape == (bundle.manifest.n_users, 10) and bundle.manifest.metrics["recall@20"] > 0
    # The section carries the method's own encoder, with the trained offset.
    section = bundle.cold_start
    assert section is not None and section.encoder == quantizer.encoder("user")
    with torch.no_grad():
        user_rep, _ = quantizer.node_representations(result.model)
    np.testing.assert_array_equal(section.encoder.encode(user_rep.numpy()), bundle.user_codes)


def test_serving_codes_a_new_user_as_the_trained_quantizer_does(trained: tuple[TrainResult, Path]) -> None:
    result, path = trained
    bundle = Bundle.load(path)
    assert bundle.cold_start is not None
    cold = ColdStart(bundle.cold_start)
    generator = np.random.default_rng(3)
    offset_mattered = False
    for _ in range(30):
        items = np.unique(generator.integers(0, bundle.manifest.n_items, generator.integers(1, 40)))
        code = cold.code(items)
        representation = torch.from_numpy(bundle.cold_start.representation(items))[None, :]
        served = result.quantizer.served(representation, "user").numpy()
        np.testing.assert_array_equal(dequantize(code[None, :], bundle.user_layout, bundle.dim), served)
        offset_mattered |= not np.array_equal(code, SignEncoder().encode(representation.numpy())[0])
    assert offset_mattered  # plain signs would not have passed: serving used the method's encoder


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_the_quantizer_and_encoder_it_declares(name: str) -> None:
    method = METHODS[name]
    for bits, layout in method.widths.items():
        quantizer = make_quantizer(name, 16, 2, bits=bits if method.chooses_bits else None)
        assert (quantizer.bits, quantizer.layout, quantizer.user_layout) == (bits, layout, layout)
        encoder = quantizer.encoder("user")
        assert (None if encoder is None else type(encoder)) is method.encoder
        if encoder is not None:  # serving finds it by the name the bundle records
            assert ENCODERS[encoder.name] is method.encoder and encoder.layout is quantizer.user_layout


def test_the_cli_choices_are_the_registry() -> None:
    actions = {action.dest: action for action in build_parser()._actions}
    assert list(actions["method"].choices or []) == list(METHODS)
    assert list(actions["bits"].choices or []) == list(actions["user_bits"].choices or []) == [1, 2]
