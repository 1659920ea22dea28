"""The served path on a GPU (Triton backend) answers exactly what the CPU backend answers.

Three real services over one bundle and one real Redis: one searching with ``triton`` on the GPU in process, one
through a search process that owns the ``triton`` backend (``RECSYS_SEARCH_PROCESS``), and one with ``numpy`` on
the CPU; every answer of GET and POST /recommend, with and without exclude-seen, must match item for item and score
for score. Bundles: a 256-bit random catalogue of the serving benchmark's shape (users with 20–200
seen items, so the search over-fetches past them) and a trained 1-bit one, whose codes tie a lot.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from benchmarks.gpu_catalogue import publish_synthetic
from index.codes import CodeLayout
from service.settings import ServiceSettings
from tests.conftest import RedisServer, TrainedBundle, free_port
from tests.service.test_api import running_service
from tests.service.test_search_process import running_search_process

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="needs CUDA and Triton"
    ),
]


def answers(url: str, user_ids: list[str]) -> Iterator[tuple[str, object]]:
    """Every answer the comparison reads: each user alone both ways, then all of them in one batch."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in user_ids:
            for exclude in ("true", "false"):
                response = client.get("/recommend", params={"user_id": user, "k": 20, "exclude_seen": exclude})
                assert response.status_code == 200, response.text
                body = response.json()
                yield f"GET {user} exclude={exclude}", (body["source"], body["items"])
        response = client.post("/recommend", json={"user_ids": user_ids[:64], "k": 50})
        assert response.status_code == 200, response.text
        yield "POST", [(r["user_id"], r["source"], r["items"]) for r in response.json()["results"]]


def compare(root: Path, redis_url: str, user_ids: list[str], work: Path) -> None:
    def settings(device: str, backend: str, search_socket: Path | None = None) -> ServiceSettings:
        return ServiceSettings(
            bundle_root=root,
            redis_url=redis_url,
            port=free_port(),
            device=device,
            retrieval_backend=backend,
            search_socket=search_socket,
        )  # type: ignore[arg-type]

    with (
        running_search_process(work / "search.sock", device="gpu", retrieval_backend="triton") as socket_path,
        running_service(settings("gpu", "triton")) as gpu,
        running_service(settings("gpu", "triton", socket_path)) as owner,
        running_service(settings("cpu", "numpy")) as cpu,
    ):
        for url, backend, on_gpu in ((gpu, "triton", True), (owner, "triton", True), (cpu, "numpy", False)):
            ready = httpx.get(f"{url}/readyz").json()
            assert ready["search_backend"] == backend and (ready["index_device"] == "gpu") == on_gpu
        expected = list(answers(cpu, user_ids))
        for url in (gpu, owner):
            for (what, got), (_, want) in zip(answers(url, user_ids), expected, strict=True):
                assert got == want, (url, what)


def test_triton_serves_a_256_bit_catalogue_as_the_cpu_does(tmp_path: Path, redis_server: RedisServer) -> None:
    publish_synthetic(tmp_path / "bundles", n_items=50_000, n_users=200, layout=CodeLayout.SIGN1, dim=256)
    compare(tmp_path / "bundles", redis_server.url, [f"u{row}" for row in range(0, 200, 5)] + ["someone-new"], tmp_path)


def test_triton_serves_a_trained_bundle_as_the_cpu_does(
    ste_bundle: TrainedBundle, redis_server: RedisServer, tmp_path: Path
) -> None:
    compare(ste_bundle.root, redis_server.url, ste_bundle.data.user_ids[:60] + ["someone-new"], tmp_path)
