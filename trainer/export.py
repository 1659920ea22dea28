"""Turn a trained model into a published bundle, scored on the served path before it is published."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from index.bundle import BundleContent, publish_bundle
from trainer.data import Dataset
from trainer.evaluate import device_metrics, served_path_metrics
from trainer.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    bundle_path: Path
    model_version: str
    test_served: dict[str, float]
    test_device: dict[str, float]
    bytes_per_node: float


def popularity_order(data: Dataset) -> npt.NDArray[np.int64]:
    """Items by number of training interactions, most popular first, ties by item id."""
    counts = np.bincount(data.seen().indices, minlength=data.n_items)
    return np.lexsort((np.arange(data.n_items), -counts)).astype(np.int64)


def new_model_version(dataset: str, method: str, bits: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{dataset}-{method}{bits}b-{stamp}-{secrets.token_hex(2)}"


@torch.no_grad()
def export_bundle(
    result: TrainResult,
    data: Dataset,
    config: TrainConfig,
    bundle_root: Path,
    *,
    make_current: bool = True,
) -> ExportReport:
    """Encode users and items, evaluate the test set through the index, publish the bundle atomically."""
    model, quantizer = result.model, result.quantizer
    model.eval()
    user_final, item_final = model()
    user_codes = quantizer.encode(user_final, "user")
    item_codes = quantizer.encode(item_final, "item")
    seen = data.seen()
    test_device = device_metrics(
        quantizer(user_final, "user"),
        quantizer(item_final, "item"),
        data.test,
        seen,
        integer_scores=quantizer.layout.is_binary,
    )
    test_served = served_path_metrics(user_codes, item_codes, quantizer.layout, config.dim, data.test, seen)
    for name, value in test_served.items():
        if abs(value - test_device[name]) > 1e-6:
            log.warning("served-path %s %.6f differs from device-path %.6f", name, value, test_device[name])
    bytes_per_node = _bytes_per_node(user_codes, item_codes)
    version = new_model_version(data.name, config.method, quantizer.bits)
    training: dict[str, Any] = {
        "config": config.to_json(),
        "best_epoch": result.best_epoch,
        "epochs_trained": result.epochs_trained,
        "valid": result.best_valid,
        "train_seconds": round(result.train_seconds, 2),
        "peak_gpu_mb": round(result.peak_gpu_mb, 1),
        "device": result.device,
        "bytes_per_node": bytes_per_node,
        "test_device_path": test_device,
    }
    content = BundleContent(
        model_version=version,
        dataset=data.name,
        method=config.method,
        bits=quantizer.bits,
        dim=config.dim,
        code_layout=quantizer.layout,
        user_codes=user_codes,
        item_codes=item_codes,
        user_ids=list(data.user_ids),
        item_ids=list(data.item_ids),
        seen=seen,
        popular=popularity_order(data),
        metrics=test_served,
        training=training,
    )
    path = publish_bundle(bundle_root, content, make_current=make_current)
    log.info("published bundle %s", path)
    return ExportReport(path, version, test_served, test_device, bytes_per_node)


def _bytes_per_node(user_codes: npt.NDArray[Any], item_codes: npt.NDArray[Any]) -> float:
    rows = int(user_codes.shape[0]) + int(item_codes.shape[0])
    total: int = user_codes.nbytes + item_codes.nbytes
    return total / rows
