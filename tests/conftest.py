"""Shared fixtures: a real redis-server on a free port, and a small trained bundle."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from index.bundle import CURRENT, Bundle
from trainer.config import TrainConfig
from trainer.data import Dataset, SyntheticConfig, load_dataset
from trainer.export import ExportReport, export_bundle
from trainer.train import train

TINY = SyntheticConfig(n_users=300, n_items=400, mean_items_per_user=20, n_communities=8, seed=7)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def without_faiss(directory: Path) -> dict[str, str]:
    """Environment for a subprocess in which ``import faiss`` fails as it does where neither the `cpu` nor the `gpu`
    extra is installed: a ``faiss`` package that raises ImportError, first on the path."""
    (directory / "faiss").mkdir(parents=True, exist_ok=True)
    (directory / "faiss" / "__init__.py").write_text("raise ImportError(\"No module named 'faiss'\")\n")
    paths = [str(directory), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


@dataclass(frozen=True)
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return self.database(0)

    def database(self, number: int) -> str:
        """The URL of one of the server's databases: a test whose service writes users' state (events) that other
        modules' tests read for the same users keeps it apart in its own."""
        return f"redis://127.0.0.1:{self.port}/{number}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the README's test command, which installs it")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return process
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"redis-server did not answer on port {port}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    port = free_port()
    process = start_redis(port)
    yield RedisServer(process, port)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return load_dataset("synthetic", synthetic=TINY)


@dataclass(frozen=True)
class TrainedBundle:
    root: Path
    report: ExportReport
    data: Dataset


def train_bundle(
    data: Dataset, root: Path, method: str, epochs: int = 15, bits: int | None = None, user_bits: int | None = None
) -> TrainedBundle:
    config = TrainConfig.of(
        method=method,
        bits=bits,
        user_bits=user_bits,
        dim=32,
        epochs=epochs,
        batch_size=1024,
        lr=5e-3,
        eval_every=5,
        device="cpu",
        sampling="interaction",  # the tiny synthetic set: its few heavy users carry 15 short epochs
    )
    report = export_bundle(train(data, config), data, config, root)
    return TrainedBundle(root, report, data)


@pytest.fixture(scope="session")
def ste_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    return train_bundle(tiny_data, tmp_path_factory.mktemp("bundles-ste"), "ste")


@pytest.fixture(scope="session")
def fp_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    return train_bundle(tiny_data, tmp_path_factory.mktemp("bundles-fp"), "fp")


@pytest.fixture(scope="session")
def hq2_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    return train_bundle(tiny_data, tmp_path_factory.mktemp("bundles-hq2"), "hq", bits=2)


@pytest.fixture(scope="session")
def asymmetric_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    """2-bit users, 1-bit items (``hq --user-bits 2 --bits 1``)."""
    return train_bundle(tiny_data, tmp_path_factory.mktemp("bundles-asym"), "hq", bits=1, user_bits=2)


@pytest.fixture(scope="session")
def bigear_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    return train_bundle(tiny_data, tmp_path_factory.mktemp("bundles-bigear"), "bigear")


@pytest.fixture
def two_models(tmp_path: Path, ste_bundle: TrainedBundle, fp_bundle: TrainedBundle) -> tuple[Path, Bundle, Bundle]:
    """A root serving the ste bundle, with the fp bundle published beside it (not current)."""
    old, new = Bundle.load(ste_bundle.root), Bundle.load(fp_bundle.root)
    shutil.copytree(old.path, tmp_path / old.path.name)
    shutil.copytree(new.path, tmp_path / new.path.name)
    (tmp_path / CURRENT).write_text(old.path.name + "\n")
    return tmp_path, old, new
