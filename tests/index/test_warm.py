"""ItemIndex.warm: a GPU index meets every batch and fetch shape serving asks for before the first request."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from index.codes import CodeLayout, encode_sign1
from index.item_index import ItemIndex


def test_a_cpu_index_has_nothing_to_warm() -> None:
    items = encode_sign1(np.random.default_rng(0).standard_normal((500, 64)))
    assert ItemIndex.build(items, CodeLayout.SIGN1, 64, device="cpu").warm(64) == 0


def cuda_and_triton() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_and_triton(), reason="needs CUDA and Triton")
def test_after_warm_up_serving_shapes_capture_nothing_new_and_answer_exactly() -> None:
    rng = np.random.default_rng(4)
    n_items, dim = 100_000, 256
    items = encode_sign1(rng.standard_normal((n_items, dim)))
    gpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="gpu", backend="triton")
    cpu = ItemIndex.build(items, CodeLayout.SIGN1, dim, device="cpu", backend="faiss-cpu")
    assert gpu.warm(64) == 7 * 5  # batches 1..64, fetches 16..256
    captured = dict(gpu.retrieval._captured)  # type: ignore[union-attr]  # Triton answers every k itself
    for batch in (1, 3, 37, 64):
        users = encode_sign1(rng.standard_normal((batch, dim)))
        exclude = [rng.choice(n_items, size=rng.integers(20, 200), replace=False) for _ in range(batch)]
        got, want = gpu.search(users, 20, exclude=exclude), cpu.search(users, 20, exclude=exclude)
        np.testing.assert_array_equal(got.ids, want.ids)
    assert dict(gpu.retrieval._captured).keys() == captured.keys()  # type: ignore[union-attr]
