"""Codes for users the model never saw, from the items they interacted with (inductive cold start).

LightGCN's user representation is the mean of its layers, and layer k + 1 of a user is the
degree-normalised sum of its items' layer k: e_u^(k+1) = Σ_i e_i^(k) / √(|I_u| · deg_i). With the items'
layers 0..K−1 exported in the bundle, a new user's representation needs no retraining — only its ego
embedding e_u^(0), which a hashed input layer decodes from the user's hash code (the same projection as in
training, index.hash_codes) and a plain embedding table cannot give. Measured, a zero ego serves new users as
well as the decoded one or better (the propagated layers carry the answer), so it is the default for both. The
representation is then coded exactly as the trainer codes users (sign, HQ levels, floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from binrec.index.codes import CodeLayout, code_width, encode_planes2, encode_sign1
from binrec.index.hash_codes import cold_user_bits, group_indices

METHODS = ("fp", "ste", "hq")  # the ones whose user code is a function of the user's representation alone
PROPAGATION_ARRAYS = ("item_degree", "item_degree_total", "trivial_along", "item_basis")  # index.hash_codes.graph_codes


def check_arrays(arrays: dict[str, npt.NDArray[Any]], *, n_items: int, dim: int, layout: CodeLayout) -> None:
    """Raise ValueError, naming the array, unless ``arrays`` hold what ``ColdStart`` reads for its method, in the
    shapes and types it reads them: so a bundle is refused at load, not by every request that gives a history."""
    if "method" not in arrays:
        raise ValueError("no array 'method'")
    method = str(arrays["method"])
    if method not in METHODS:
        return  # not used for cold start (the service answers such users with popular items)
    needed = ["item_layers", "item_degree", *(["hq_step", "hq_max_level"] if method == "hq" else [])]
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise ValueError(f"no array {', '.join(repr(name) for name in missing)} (method {method} needs it)")
    layers, degree = arrays["item_layers"], arrays["item_degree"]
    if layers.ndim != 3 or layers.shape[1:] != (n_items, dim) or layers.dtype.kind != "f":
        raise ValueError(f"'item_layers' must be float [layers, {n_items}, {dim}], got {layers.dtype} {layers.shape}")
    if degree.shape != (n_items,) or degree.dtype.kind not in "fiu":
        raise ValueError(f"'item_degree' must be numbers [{n_items}], got {degree.dtype} {degree.shape}")
    if method == "hq":
        step, level = arrays["hq_step"], arrays["hq_max_level"]
        if step.shape != () or not np.isfinite(step) or float(step) <= 0:
            raise ValueError(f"'hq_step' must be one positive number, got {step!r}")
        if level.shape != () or int(level) not in (1, 3):
            raise ValueError(f"'hq_max_level' must be 1 or 3, got {level!r}")
    if n_items:  # the whole path once, on the first item: the code it gives must fit the bundle's layout
        code = ColdStart(arrays).code(np.zeros(1, np.int64))
        if code.shape != (code_width(layout, dim),):
            raise ValueError(
                f"codes a new user as {code.shape}, the bundle's {layout} codes are [{code_width(layout, dim)}]"
            )


@dataclass(frozen=True)
class ColdStart:
    arrays: dict[str, npt.NDArray[Any]]
    # A zero ego by default, even for hashed models: on ml-100k's held-out users the decoded ego of a raw-row code
    # the decoder never trained on cost more than it gave (92 % of trained-on with a zero ego, 51 % with it); on
    # Gowalla with 3-hop codes the two tie (97 % each; BENCHMARKS.md). True decodes the user's hash code, as Yeh
    # et al. do.
    use_hashed_ego: bool = False

    @property
    def method(self) -> str:
        return str(self.arrays["method"])

    def hash_bits(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """The hash code a hashed model's training would have given a user with these items."""
        a = self.arrays
        hops = tuple(int(h) for h in a["hash_hops"]) if "hash_hops" in a else (0,)  # bundles before: raw rows
        propagation = {name: a[f"hash_{name}"] for name in PROPAGATION_ARRAYS if f"hash_{name}" in a}
        return cold_user_bits(
            items, int(a["hash_bits"]), a["user_medians"], seed=int(a["hash_seed"]), hops=hops, propagation=propagation
        )

    def ego(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        dim = self.arrays["item_layers"].shape[2]
        if "codebook" not in self.arrays or not self.use_hashed_ego:
            return np.zeros(dim, np.float32)
        a = self.arrays
        groups = group_indices(self.hash_bits(items)[None, :], int(a["hash_groups"]))[0]
        hidden = a["codebook"][groups + a["offsets"]].sum(axis=0)
        n_layers = int(a["hash_mlp_layers"]) if "hash_mlp_layers" in a else 2  # bundles before it had two
        for number in range(1, n_layers + 1):
            hidden = hidden @ a[f"w{number}"].T + a[f"b{number}"]
            if number < n_layers:
                hidden = np.tanh(hidden)
        out: npt.NDArray[np.float32] = hidden.astype(np.float32)
        return out

    def representation(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        layers, degree = self.arrays["item_layers"], self.arrays["item_degree"]
        weights = 1.0 / np.sqrt(len(items) * np.maximum(degree[items], 1.0))
        stack = [self.ego(items)] + [(weights[:, None] * layers[k][items]).sum(axis=0) for k in range(layers.shape[0])]
        out: npt.NDArray[np.float32] = np.mean(stack, axis=0).astype(np.float32)
        return out

    def code(self, items: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The user's code row, in the bundle's layout."""
        vector = self.representation(items)
        if self.method == "fp":
            return vector
        packed: npt.NDArray[np.uint8]
        if self.method == "ste":
            packed = encode_sign1(vector[None, :])
            return np.asarray(packed[0])
        step, max_level = float(self.arrays["hq_step"]), int(self.arrays["hq_max_level"])
        levels = np.clip(np.round((vector / step + max_level) / 2), 0, max_level) * 2 - max_level
        if max_level == 1:
            packed = encode_sign1(levels[None, :])
        else:
            packed = encode_planes2(((levels + 3) / 2).astype(np.int64)[None, :])
        return np.asarray(packed[0])
