"""Fixtures of the stack test: a Docker engine, the images built from the Dockerfile, the compose stack up.

They are module-scoped: the images are built once and the stack comes up once, and each test then checks one
thing an operator does to it. A failed test carries the stack's logs in its report.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.compose_stack import ROOT, ComposeStack, Events, free_port_range
from tests.deploy.docker_engine import Engine, EngineUnavailable, docker_engine
from tests.deploy.docker_images import StackImages, build_stack_images

PROJECT = "binrec-stack-test"
ML_100K = ROOT.parent / "shared" / "data"
WATCH_INTERVAL_S = 3
ADMIN_KEY = "stack-test-admin-key"

Progress = Callable[[str], None]


@pytest.fixture(scope="module")
def progress(pytestconfig: pytest.Config) -> Progress:
    """Lines on the terminal as the work goes, even while pytest captures output (builds take minutes)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")
    started, lock = time.monotonic(), threading.Lock()

    def say(message: str) -> None:
        line = f"[stack {time.monotonic() - started:4.0f} s] {message}"
        with lock:
            if capture is None or terminal is None:
                print(line, file=sys.stderr, flush=True)
                return
            with capture.global_and_fixture_disabled():
                terminal.write_line(line)

    return say


@pytest.fixture(scope="module")
def engine(progress: Progress, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with ExitStack() as stack:
        try:
            found = stack.enter_context(docker_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log", progress))
        except EngineUnavailable as error:
            pytest.skip(f"no Docker engine can start here: {error}")
        yield found


@pytest.fixture(scope="module")
def stack_images(engine: Engine, progress: Progress, tmp_path_factory: pytest.TempPathFactory) -> StackImages:
    images = build_stack_images(engine, tmp_path_factory.mktemp("images"), progress)
    for line in images.table().splitlines():
        progress(line)
    return images


@dataclass
class RunningStack:
    compose: ComposeStack
    events: Events  # of `up`, until the api was healthy
    watch_interval_s: float
    trainer_seconds: float  # the first training run, start to exit


def stack_settings(images: StackImages, first_port: int, workdir: Path) -> dict[str, str]:
    """Compose's variables: the local images' tag, loopback ports, a tiny training run, a short watch interval.

    The trainer reads ml-100k from ../shared/data (mounted read-only), or makes its synthetic set without it.
    """
    if (ML_100K / "ml-100k" / "ml-100k.inter").is_file():
        dataset, data_dir = "ml-100k", ML_100K
    else:
        dataset, data_dir = "synthetic", workdir / "data"
        data_dir.mkdir(exist_ok=True)
    return {
        "RECSYS_ADMIN_API_KEY": ADMIN_KEY,
        "TAG": images.api.rsplit(":", 1)[1],
        "API_PORTS": f"127.0.0.1:{first_port}-{first_port + 9}",
        "TRAIN_DATASET": dataset,
        "TRAIN_EPOCHS": "2",
        "DATA_DIR": str(data_dir),
        "RECSYS_WATCH_INTERVAL_S": str(WATCH_INTERVAL_S),
        "RECSYS_LOG_LEVEL": "info",
    }


def write_override(path: Path, images: StackImages) -> Path:
    """The only change to docker-compose.yml: the images Docker Hub would have served, made here instead."""
    path.write_text(f"services:\n  redis:\n    image: {images.redis}\n  load:\n    image: {images.load}\n")
    return path


@pytest.fixture(scope="module")
def stack(
    engine: Engine, stack_images: StackImages, progress: Progress, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    workdir = tmp_path_factory.mktemp("stack")
    override = write_override(workdir / "docker-compose.override.yml", stack_images)
    settings = stack_settings(stack_images, free_port_range(10), workdir)
    compose = ComposeStack(engine, PROJECT, override, settings, workdir)
    compose.down()  # what an interrupted run may have left
    progress(f"docker compose up -d: trainer on {settings['TRAIN_DATASET']}, {settings['TRAIN_EPOCHS']} epochs")
    events = Events(engine, PROJECT)
    started = time.monotonic()
    try:
        try:
            compose("up", "-d", "--no-build", timeout=900)
            compose.wait_healthy(compose.containers("api"), timeout=240)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- compose logs ---\n{compose.logs()}") from None
        finally:
            events.stop()
        trainer_s = events.first("trainer", "die", exit_code="0") - events.first("trainer", "start")
        progress(f"stack up and healthy in {time.monotonic() - started:.0f} s (training {trainer_s:.0f} s)")
        yield RunningStack(compose, events, WATCH_INTERVAL_S, trainer_s)
    finally:
        progress("docker compose down -v")
        compose.down()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed stack test's report ends with what the containers logged."""
    report = yield
    running = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(running, RunningStack):
        report.sections.append(("compose logs", running.compose.logs()))
    return report
