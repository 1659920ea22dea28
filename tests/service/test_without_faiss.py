"""A service installed without FAISS (an api image without the `cpu` extra) serves a bundle with the numpy backend,
the answers of the FAISS-backed server; asking it for a FAISS backend is refused in one line naming the extra."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from index.cli import main as index_main
from tests.conftest import RedisServer, TrainedBundle, without_faiss
from tests.service.test_cli import serve

IMPORTS = textwrap.dedent(
    """
    import importlib, sys
    import index, index.bundle, index.item_index, index.retrieval, service.app, service.search_process
    try:
        importlib.import_module("faiss")
    except ImportError:
        pass
    else:
        sys.exit("faiss was importable")
    """
)


def answers(url: str, users: list[str]) -> list[object]:
    return [
        httpx.get(f"{url}/recommend", params={"user_id": user, "k": 30, "exclude_seen": exclude}).json()["items"]
        for user in users
        for exclude in ("true", "false")
    ]


def test_recsys_serve_without_faiss_answers_with_numpy_as_the_faiss_backend_does(
    tmp_path: Path, ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(ste_bundle.root, root)
    assert index_main(["build", "--bundle-root", str(root), "--device", "cpu"]) == 0  # an index.faiss to leave unread
    no_faiss = without_faiss(tmp_path / "no-faiss")
    imported = subprocess.run(
        [sys.executable, "-c", IMPORTS], env=no_faiss, capture_output=True, text=True, timeout=120, check=False
    )
    assert imported.returncode == 0, imported.stderr
    users = ste_bundle.data.user_ids[:20]
    found: dict[str, list[object]] = {}
    for backend, env in (("faiss-cpu", {"RECSYS_RETRIEVAL_BACKEND": "faiss-cpu"}), ("numpy", no_faiss)):
        process, url = serve(root, redis_server, env={**env, "RECSYS_LOG_LEVEL": "warning"})
        try:
            assert httpx.get(f"{url}/readyz").json()["search_backend"] == backend
            found[backend] = answers(url, users)
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    assert found["numpy"] == found["faiss-cpu"]  # ids and exact scores, ties in the same order
    refused = subprocess.run(
        [sys.executable, "-m", "service.cli", "--bundle-root", str(root), "--port", "1", "--device", "cpu"],
        env={**no_faiss, "RECSYS_RETRIEVAL_BACKEND": "faiss-cpu"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("recsys-serve: error: FaissMissing: the faiss-cpu retrieval backend needs FAISS")
    assert "`cpu` or `gpu` extra" in refused.stderr
