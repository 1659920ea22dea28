"""Turn a trained model into a published bundle, scored on the served path before it is published."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from index.bundle import BundleContent, publish_bundle
from index.cold_start import ColdStartSection, HashedDecoder
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.evaluate import device_metrics, served_path_metrics
from trainer.graph import propagate
from trainer.hashing import HashedInput
from trainer.metering import PhaseClock
from trainer.model import LightGCN
from trainer.quantization import ExportedCodes, Quantizer
from trainer.train import TrainResult, integer_ranking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    bundle_path: Path
    model_version: str
    test_served: dict[str, float]
    test_device: dict[str, float]
    bytes_per_node: float
    item_bytes: float = 0.0  # what the index keeps per item: its code and any scales or level table
    test_spread: dict[str, float] = field(default_factory=dict)  # with ``spread``: each test metric's standard error
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds of each part of the export


def popularity_order(data: Dataset, seen: sp.csr_matrix | None = None) -> npt.NDArray[np.int64]:
    """Items by number of training interactions, most popular first, ties by item id. ``seen``: ``data.seen()``
    where the caller has it already (at catalogue scale each call builds a matrix of gigabytes)."""
    counts = item_degree(data.seen() if seen is None else seen)
    return np.lexsort((np.arange(data.n_items), -counts)).astype(np.int64)


def item_degree(seen: sp.csr_matrix) -> npt.NDArray[np.int64]:
    """Interactions per item: the stored entries of each column, counted without a CSC copy of the matrix."""
    return np.bincount(seen.indices, minlength=seen.shape[1]).astype(np.int64)


def new_model_version(dataset: str, method: str, bits: int) -> str:
    """A unique, plain directory name: the dataset's name made safe, method, bits, UTC time, random suffix."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset).lstrip(".") or "dataset"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{safe}-{method}{bits}b-{stamp}-{secrets.token_hex(2)}"


@torch.no_grad()
def cold_start_section(
    model: LightGCN, quantizer: Quantizer, data: Dataset, seen: sp.csr_matrix | None = None
) -> ColdStartSection | None:
    """What serving needs to code a user the model never saw (index.cold_start): the sum of the items' layers and the
    encoder the users' codes came from; None where the quantizer has no such encoder (a user's code needs more than
    its representation: per-layer scales, per-node level tables)."""
    encoder = quantizer.encoder("user")
    if encoder is None:
        return None
    inputs = model.inputs
    return ColdStartSection(
        encoder=encoder,
        item_layer_sum=item_layer_sum(model),
        layers=model.layers,
        item_degree=item_degree(data.seen() if seen is None else seen).astype(np.float32),
        hashed=hashed_decoder(inputs) if isinstance(inputs, HashedInput) else None,
    )


@torch.no_grad()
def item_layer_sum(model: LightGCN) -> npt.NDArray[np.float32]:
    """Σ of the items' layers 0..K−1, propagated a layer at a time: the stack of every node's K + 1 layers
    (``model()``, 20 GB at 10M items) is never built, and of the sum only the items' rows are kept."""
    layer = model.inputs()
    total = layer[model.n_users :].float().clone()  # a copy: layer 0 may be the embedding table itself
    for _ in range(model.layers - 1):
        layer = propagate(model.adjacency, layer)
        total += layer[model.n_users :]
    return np.ascontiguousarray(total.cpu().numpy(), dtype=np.float32)


def hashed_decoder(inputs: HashedInput) -> HashedDecoder:
    """The numpy copy of a hashed input layer's decoder, and what recomputes a new user's hash code."""
    mlp = [layer for layer in inputs.mlp if isinstance(layer, torch.nn.Linear)]
    return HashedDecoder(
        seed=inputs.seed,
        bits=inputs.hash_bits,
        groups=int(inputs.groups_of.shape[1]),
        hops=tuple(int(h) for h in inputs.hops),
        user_medians=inputs.user_medians.cpu().numpy(),
        codebook=inputs.codebook.detach().cpu().numpy(),
        offsets=inputs.offsets.cpu().numpy(),
        weights=tuple(linear.weight.detach().cpu().numpy() for linear in mlp),
        biases=tuple(linear.bias.detach().cpu().numpy() for linear in mlp),
        propagation=dict(inputs.propagation),
    )


# Inference only: with autograd on, the graph behind the representations (every node's decoder and layer
# activations) would stay alive through the whole export, beside everything the export holds.
@torch.no_grad()
def export_bundle(
    result: TrainResult,
    data: Dataset,
    config: TrainConfig,
    bundle_root: Path,
    *,
    make_current: bool = True,
    stages: list[dict[str, object]] | None = None,
    spread: bool = False,
) -> ExportReport:
    """Encode users and items, evaluate the test set through the index, publish the bundle atomically.

    ``stages``: the fp stages this model was trained from (``--teacher auto``), recorded in the manifest. The test
    metrics rank ``data.test``'s users: with ``--eval-users`` the caller passes a sample of them
    (trainer.cli.sampled_test) and asks for ``spread``, the metrics' standard errors across that sample."""
    clock = PhaseClock("export")
    model, quantizer = result.model, result.quantizer
    model.eval()
    user_rep, item_rep = quantizer.node_representations(model)
    if not (torch.isfinite(user_rep).all() and torch.isfinite(item_rep).all()):  # before hours of test ranking
        raise ValueError(
            f"the training diverged: after {result.epochs_trained} epochs the model holds NaN or infinite embeddings "
            "and no earlier validated epoch was kept, so nothing was published; try a smaller --lr"
        )
    users, items = quantizer.export(user_rep, "user"), quantizer.export(item_rep, "item")
    seen = data.seen()
    clock.done("codes")
    test_device = device_metrics(
        quantizer.served(user_rep, "user"),
        quantizer.served(item_rep, "item"),
        data.test,
        seen,
        integer_scores=integer_ranking(quantizer),
        spread=spread,
    )
    test_spread = {name: test_device.pop(name) for name in list(test_device) if name.endswith("_se")}
    test_device.pop("users", None)  # what spread also counts: the manifest has test_users_ranked
    clock.done("test_device")
    test_served = served_path_metrics(
        users.codes,
        items.codes,
        quantizer.layout,
        quantizer.code_dim,
        data.test,
        seen,
        user_layout=quantizer.user_layout,
        user_scales=users.scales,
        item_scales=items.scales,
        scale_mode=quantizer.scale_mode,
    )
    for name, value in test_served.items():
        if abs(value - test_device[name]) > 1e-6:
            log.warning("served-path %s %.6f differs from device-path %.6f", name, value, test_device[name])
    clock.done("test_served")
    cold_start = cold_start_section(model, quantizer, data, seen)
    clock.done("cold_start")
    bytes_per_node = _bytes_per_node(users, items)
    version = new_model_version(data.name, config.model.method, quantizer.bits)
    training: dict[str, Any] = {
        "config": config.to_json(),
        "best_epoch": result.best_epoch,
        "epochs_trained": result.epochs_trained,
        "valid": result.best_valid,
        "train_seconds": round(result.train_seconds, 2),
        "peak_gpu_mb": round(result.peak_gpu_mb, 1),
        "peak_gpu_reserved_mb": round(result.peak_gpu_reserved_mb, 1),
        "device": result.device,
        "bytes_per_node": bytes_per_node,
        "test_device_path": test_device,
        "test_users_ranked": int(np.count_nonzero(np.diff(data.test.indptr))),
        **({"stages": stages} if stages else {}),
    }
    content = BundleContent(
        model_version=version,
        dataset=data.name,
        method=config.model.method,
        bits=quantizer.bits,
        dim=quantizer.code_dim,
        code_layout=quantizer.layout,
        user_code_layout=quantizer.user_layout,
        user_codes=users.codes,
        item_codes=items.codes,
        user_scales=users.scales,
        item_scales=items.scales,
        scale_mode=quantizer.scale_mode,
        user_ids=list(data.user_ids),
        item_ids=list(data.item_ids),
        seen=seen,
        popular=popularity_order(data, seen),
        metrics=test_served,
        training=training,
        cold_start=cold_start,
    )
    path = publish_bundle(bundle_root, content, make_current=make_current)
    clock.done("publish")
    log.info("published bundle %s (export seconds: %s)", path, clock.phases)
    return ExportReport(
        path, version, test_served, test_device, bytes_per_node, _bytes_per_node(items), test_spread, clock.phases
    )


def _bytes_per_node(*sides: ExportedCodes) -> float:
    """Served bytes per node of these sides: codes plus any scales or level tables."""
    rows = sum(int(side.codes.shape[0]) for side in sides)
    total = sum(int(part.nbytes) for side in sides for part in (side.codes, side.scales) if part is not None)
    return total / max(rows, 1)
