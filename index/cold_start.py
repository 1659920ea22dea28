"""The bundle's cold-start section: what codes a user the model never saw, from the items it gives.

LightGCN's user representation is the mean of its layers, and layer k + 1 of a user is the degree-normalised sum
of its items' layer k: e_u^(k+1) = Σ_i e_i^(k) / √(|I_u| · deg_i). The mean is linear in the items' layers and
weighs each alike, so it needs only their sum S = Σ_{k<K} e^(k) and K: (e_u^(0) + Σ_i S_i / √(|I_u| · deg_i)) /
(K + 1). With S in the bundle (n_items × dim floats, not K times that), a new user's representation needs no
retraining, only its ego embedding e_u^(0): zero, or (for a model with a hashed input layer, Yeh et al.) the
decoder's output for the hash code the user's items give (``index.hash_codes``: the same projection as in
training). The representation is then coded by the encoder the trainer's export coded users with
(``index.encoders``), which the section names and carries the parameters of.

The trainer's export builds a ``ColdStartSection`` and ``publish_bundle`` checks it; ``Bundle.load`` reads it back
and checks it again, so that a section a request would trip on is refused when the bundle loads. The service only
chooses the ego (``service.cold_start``). On disk the section is one ``.npz`` whose array names are the contract
(``to_arrays``). Format 3 stores ``item_layer_sum`` and ``layers``; formats 1 and 2 store the layers themselves,
``item_layers`` [K, n_items, dim], which a reader sums (``summed_layers``). Format 1 bundles may also lack
``hash_hops`` (raw-row codes) and ``hash_mlp_layers`` (two layers), which formats 2 and 3 always write.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.codes import CodeLayout, code_width
from index.encoders import ENCODERS, Arrays, Encoder, array_named, integer_named
from index.hash_codes import PROPAGATION, check_grouping, cold_user_bits, group_indices, hop_parts
from index.npz_map import read_npz

# What format 1 left out and meant: raw-row hash codes and a decoder of two linear layers.
FORMAT1_DEFAULTS: dict[str, npt.NDArray[Any]] = {"hash_hops": np.array([0]), "hash_mlp_layers": np.array(2)}

# Arrays that only a hashed model's section has: any of them makes the decoder's every array required.
HASHED_MARKS = ("codebook", "offsets", "user_medians", "hash_seed", "hash_bits", "hash_groups")


def summed_layers(arrays: Arrays) -> dict[str, npt.NDArray[Any]]:
    """What formats 1 and 2 stored as the items' layers, as format 3 stores it: their sum and how many there are.
    The layers stay mapped; the sum is one n_items × dim array per reader."""
    layers = array_named(arrays, "item_layers", "f", 3)
    if layers.shape[0] < 1:
        raise ValueError(f"'item_layers' must hold at least one layer, got {list(layers.shape)}")
    return {"item_layer_sum": layers.sum(axis=0, dtype=np.float32), "layers": np.array(layers.shape[0])}


@dataclass(frozen=True, eq=False)
class HashedDecoder:
    """A hashed input layer's decoder and what recomputes a new user's hash code (index.hash_codes)."""

    seed: int
    bits: int
    groups: int
    hops: tuple[int, ...]
    user_medians: npt.NDArray[np.float32]  # [bits]: the users' per-bit thresholds
    codebook: npt.NDArray[np.float32]  # [groups · 2^(bits / groups), dim]
    offsets: npt.NDArray[np.int64]  # [groups]: each group's first codebook row
    weights: tuple[npt.NDArray[np.float32], ...]  # the MLP's linear layers, tanh between them
    biases: tuple[npt.NDArray[np.float32], ...]
    propagation: dict[str, npt.NDArray[Any]]  # hash_codes.PROPAGATION's arrays (stored as hash_<name>), 1+ hops

    def hash_bits(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """The hash code training would have given a user with these items."""
        return cold_user_bits(
            items, self.bits, self.user_medians, seed=self.seed, hops=self.hops, propagation=self.propagation
        )

    def decode(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The ego embedding the decoder gives that hash code (trainer.hashing.HashedInput.decode)."""
        groups = group_indices(self.hash_bits(items)[None, :], self.groups)[0]
        hidden = self.codebook[groups + self.offsets].sum(axis=0)
        for number, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True), start=1):
            hidden = hidden @ weight.T + bias
            if number < len(self.weights):
                hidden = np.tanh(hidden)
        out: npt.NDArray[np.float32] = hidden.astype(np.float32)
        return out

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        layers = {f"{kind}{n}": a for n, pair in enumerate(zip(self.weights, self.biases, strict=True), start=1)
                  for kind, a in zip("wb", pair, strict=True)}  # fmt: skip
        return {
            **layers,
            "codebook": self.codebook,
            "offsets": self.offsets,
            "hash_mlp_layers": np.array(len(self.weights)),
            "user_medians": self.user_medians,
            "hash_seed": np.array(self.seed),
            "hash_bits": np.array(self.bits),
            "hash_groups": np.array(self.groups),
            "hash_hops": np.array(self.hops, dtype=np.int64),
            **{f"hash_{name}": value for name, value in self.propagation.items()},
        }

    @classmethod
    def from_arrays(cls, arrays: Arrays, dim: int) -> HashedDecoder:
        n_layers = integer_named(arrays, "hash_mlp_layers")
        if n_layers < 1:
            raise ValueError(f"'hash_mlp_layers' must be at least 1, got {n_layers}")
        bits, groups = integer_named(arrays, "hash_bits"), integer_named(arrays, "hash_groups")
        hops = tuple(int(h) for h in array_named(arrays, "hash_hops", "i", 1))
        try:
            hop_parts(bits, hops)
        except ValueError as error:
            raise ValueError(f"'hash_hops' {hops}: {error}") from error
        check_grouping(bits, groups, ("'hash_bits'", "'hash_groups'"))
        codebook = array_named(arrays, "codebook", "f", 2)
        if codebook.shape != (groups << (bits // groups), dim):
            raise ValueError(f"'codebook' must be [{groups << (bits // groups)}, {dim}], got {list(codebook.shape)}")
        offsets = array_named(arrays, "offsets", "iu", 1)
        if offsets.shape != (groups,) or offsets.min() < 0 or offsets.max() + (1 << (bits // groups)) > len(codebook):
            raise ValueError(f"'offsets' must be {groups} first rows of the codebook's groups, got {offsets}")
        weights, biases = [], []
        width = dim
        for number in range(1, n_layers + 1):
            weight, bias = array_named(arrays, f"w{number}", "f", 2), array_named(arrays, f"b{number}", "f", 1)
            out_width = dim if number == n_layers else weight.shape[0]
            if weight.shape != (out_width, width) or bias.shape != (out_width,):
                raise ValueError(
                    f"'w{number}' and 'b{number}' must be [{out_width}, {width}] and [{out_width}], "
                    f"got {list(weight.shape)} and {list(bias.shape)}"
                )
            weights.append(weight)
            biases.append(bias)
            width = out_width
        medians = array_named(arrays, "user_medians", "f", 1)
        if medians.shape != (bits,):
            raise ValueError(f"'user_medians' must be [{bits}], got {list(medians.shape)}")
        needed = [*PROPAGATION[:3], *(PROPAGATION[3:] if max(hops) >= 2 else [])] if max(hops) >= 1 else []
        propagation = {name: array_named(arrays, f"hash_{name}", "fiu") for name in needed}
        return cls(
            seed=integer_named(arrays, "hash_seed"),
            bits=bits,
            groups=groups,
            hops=hops,
            user_medians=medians,
            codebook=codebook,
            offsets=offsets.astype(np.int64, copy=False),
            weights=tuple(weights),
            biases=tuple(biases),
            propagation=propagation,
        )

    def check(self, n_items: int) -> None:
        """Raise ValueError unless the propagation arrays cover ``n_items`` items and the hop parts."""
        if not self.propagation:
            return
        for name in ("item_degree", "trivial_along"):
            want = (n_items,) if name == "item_degree" else (self.bits,)
            if self.propagation[name].shape != want:
                raise ValueError(f"'hash_{name}' must be [{want[0]}], got {list(self.propagation[name].shape)}")
        if self.propagation["item_degree_total"].shape != ():
            raise ValueError("'hash_item_degree_total' must be one number")
        width = sum(w for _, w, h in hop_parts(self.bits, self.hops) if h >= 2)
        if width and self.propagation["item_basis"].shape != (n_items, width):
            raise ValueError(
                f"'hash_item_basis' must be [{n_items}, {width}], got {list(self.propagation['item_basis'].shape)}"
            )


@dataclass(frozen=True, eq=False)
class ColdStartSection:
    """What a bundle holds to code a new user from its items, typed; ``code`` gives the user's code.

    Example::

        section = ColdStartSection.load(bundle_dir / COLD_START_FILE, format_version=3)
        section.check(n_items=..., dim=..., layout=bundle.user_layout)
        code = section.code(np.array([3, 17, 42]))  # a row in the bundle's user layout
    """

    encoder: Encoder  # the one the export coded users with
    item_layer_sum: npt.NDArray[np.float32]  # [n_items, dim]: Σ of the items' layers 0..K−1
    layers: int  # K, the layers that sum covers: the mean divides by K + 1
    item_degree: npt.NDArray[np.floating]  # [n_items]: interactions per item, those served as seen
    hashed: HashedDecoder | None = None  # a hashed input layer's decoder, for ``hashed_ego``

    @property
    def user_layout(self) -> CodeLayout:
        """The layout ``code`` writes: it must be the bundle's user layout."""
        return self.encoder.layout

    def ego(self, items: npt.NDArray[np.int64], *, hashed_ego: bool = False) -> npt.NDArray[np.float32]:
        """The new user's layer 0: decoded from its hash code with ``hashed_ego`` and a hashed model, else zero."""
        if self.hashed is None or not hashed_ego:
            return np.zeros(self.item_layer_sum.shape[1], np.float32)
        return self.hashed.decode(items)

    def representation(self, items: npt.NDArray[np.int64], *, hashed_ego: bool = False) -> npt.NDArray[np.float32]:
        """The mean of the user's layers, as LightGCN propagates a user with these items: each of its layers 1..K
        weighs the items alike, so together they are one weighted sum of the items' layer sum."""
        weights = 1.0 / np.sqrt(len(items) * np.maximum(self.item_degree[items], 1.0))
        propagated = (weights[:, None] * self.item_layer_sum[items]).sum(axis=0)
        out: npt.NDArray[np.float32] = (self.ego(items, hashed_ego=hashed_ego) + propagated) / (self.layers + 1)
        return out.astype(np.float32, copy=False)

    def code(self, items: npt.NDArray[np.int64], *, hashed_ego: bool = False) -> npt.NDArray[Any]:
        """The code row of a user with these item rows (at least one), in ``user_layout``."""
        codes = self.encoder.encode(self.representation(items, hashed_ego=hashed_ego)[None, :])
        return np.asarray(codes[0])

    def check(self, *, n_items: int, dim: int, layout: CodeLayout) -> None:
        """Raise ValueError, naming the array, unless the section fits a bundle of these items, dim and user layout:
        so that a bundle is refused when it loads, not by every request that gives a history."""
        if ENCODERS.get(self.encoder.name) is not type(self.encoder):
            raise ValueError(f"codes new users with {self.encoder.name!r}, which index.encoders does not list")
        total = self.item_layer_sum
        if total.shape != (n_items, dim):
            raise ValueError(f"'item_layer_sum' must be float [{n_items}, {dim}], got {list(total.shape)}")
        if self.layers < 1:
            raise ValueError(f"'layers' must be at least 1, got {self.layers}")
        if self.item_degree.shape != (n_items,):
            raise ValueError(f"'item_degree' must be numbers [{n_items}], got {list(self.item_degree.shape)}")
        if self.user_layout is not layout:
            raise ValueError(f"codes new users as {self.user_layout}, the bundle's users are {layout}")
        if self.hashed is not None:
            if self.hashed.codebook.shape[1] != dim:
                raise ValueError(f"'codebook' must have {dim} columns, got {self.hashed.codebook.shape[1]}")
            self.hashed.check(n_items)
        if n_items:  # the whole path once, on the first item: the code it gives must fit the bundle's layout
            try:
                code = self.code(np.zeros(1, np.int64), hashed_ego=self.hashed is not None)
            except (IndexError, KeyError, TypeError) as error:
                raise ValueError(f"coding a new user fails: {error!r}") from error
            if code.shape != (code_width(layout, dim),):
                raise ValueError(
                    f"codes a new user as {list(code.shape)}, the bundle's are [{code_width(layout, dim)}]"
                )

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The arrays of the section's file, by the names ``from_arrays`` reads."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "method": np.array(self.encoder.name),
            "item_layer_sum": np.ascontiguousarray(self.item_layer_sum, dtype=np.float32),
            "layers": np.array(self.layers),
            "item_degree": self.item_degree,
            **self.encoder.to_arrays(),
        }
        if self.hashed is not None:
            arrays.update(self.hashed.to_arrays())
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays, *, format_version: int) -> ColdStartSection:
        """The section of a file's arrays; ValueError names the array that is missing or ill-formed."""
        name = str(array_named(arrays, "method", "U", 0))
        if name not in ENCODERS:
            raise ValueError(f"'method' must be one of {', '.join(ENCODERS)}, got {name!r}")
        if format_version < 3:
            arrays = {**arrays, **summed_layers(arrays)}
        item_layer_sum = array_named(arrays, "item_layer_sum", "f", 2)
        layers = integer_named(arrays, "layers")
        encoder = ENCODERS[name].from_arrays(arrays)
        hashed = None
        if any(name in arrays for name in HASHED_MARKS):  # then all of the decoder, not a silent zero ego
            if format_version == 1:
                arrays = {**FORMAT1_DEFAULTS, **arrays}
            hashed = HashedDecoder.from_arrays(arrays, item_layer_sum.shape[1])
        return cls(encoder, item_layer_sum, layers, array_named(arrays, "item_degree", "fiu", 1), hashed)

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, **self.to_arrays())  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path, *, format_version: int) -> ColdStartSection:
        """Read a section file; ValueError (not yet naming the file) when it is unreadable or incomplete."""
        try:  # mapped: the items' layer sum is n_items × dim floats, which no worker should hold a copy of
            arrays = read_npz(path)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"not a readable .npz archive ({error})") from error
        return cls.from_arrays(arrays, format_version=format_version)
