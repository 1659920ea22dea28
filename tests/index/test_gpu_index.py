"""The GPU placement answers exactly as the CPU index (runs where FAISS sees a GPU, skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from index.codes import CodeLayout, encode_planes2, encode_sign1
from index.item_index import ItemIndex
from index.retrieval.faiss_backend import faiss_gpu_count as gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="FAISS sees no GPU")]


def codes(layout: CodeLayout, rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    if layout is CodeLayout.SIGN1:
        return encode_sign1(rng.standard_normal((n, dim)))
    if layout is CodeLayout.PLANES2:
        return encode_planes2(rng.integers(0, 4, (n, dim)))
    return rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("layout", [CodeLayout.SIGN1, CodeLayout.PLANES2, CodeLayout.FLOAT32])
@pytest.mark.parametrize("k", [100, 3000])  # 3000 is past the GPU's k cap: served by the CPU copy
def test_gpu_and_cpu_indexes_agree(layout: CodeLayout, k: int) -> None:
    rng = np.random.default_rng(11)
    items, users = codes(layout, rng, 20_000, 64), codes(layout, rng, 64, 64)
    exclude = [rng.choice(20_000, size=rng.integers(0, 500), replace=False).astype(np.int64) for _ in range(64)]
    cpu = ItemIndex.build(items, layout, 64, device="cpu")
    gpu = ItemIndex.build(items, layout, 64, device="gpu")
    assert gpu.on_gpu and not cpu.on_gpu
    gpu.self_check(items)
    expected, got = cpu.search(users, k, exclude=exclude), gpu.search(users, k, exclude=exclude)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-4)
