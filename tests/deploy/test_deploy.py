"""The deployment files as an operator uses them: compose files that validate, images whose commands are the
project's own console scripts with options those scripts accept, and the locust run script against a real service.

No Docker engine runs here, so the images are not built; what they would run is checked against the code instead.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from index.cli import build_parser as index_parser
from service.cli import build_parser as serve_parser
from tests.conftest import RedisServer, TrainedBundle
from tests.service.test_api import local_settings, running_service
from trainer.cli import build_parser as train_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
PARSERS = {"recsys-train": train_parser, "recsys-index": index_parser, "recsys-serve": serve_parser}
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "COMPOSE_"))}
    return subprocess.run(
        [COMPOSE, "--project-directory", str(ROOT), *args, "config", "-q"],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"],
        ["--profile", "load", "-f", "docker-compose.yml"],
    ],
)
def test_compose_files_validate(args: list[str]) -> None:
    result = compose(*args, env={"RECSYS_ADMIN_API_KEY": "test-key"})
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (scripts/setup.sh installs it)")
def test_compose_refuses_to_run_without_an_admin_key() -> None:
    result = compose("-f", "docker-compose.yml", env={})
    assert result.returncode != 0 and "set RECSYS_ADMIN_API_KEY" in result.stderr


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} with nothing set: the default (or a placeholder)."""
    return VARIABLE.sub(lambda match: match.group(2) or "" if "?" not in match.group(0) else "set", value)


def dockerfile_stages() -> dict[str, dict[str, list[str]]]:
    """ENTRYPOINT / CMD / HEALTHCHECK of each stage (exec form), inherited from the stage it is built FROM."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line):
            current = dict(stages.get(match.group(1), {}))
            stages[match.group(2)] = current
        elif match := re.match(r"(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line):
            current[match.group(1)] = json.loads(match.group(2))
        elif match := re.match(r"HEALTHCHECK\s.*?CMD\s+(\[.*\])\s*$", line):
            current["HEALTHCHECK"] = json.loads(match.group(1))
    return stages


def compose_services() -> Iterator[tuple[str, dict[str, object]]]:
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        for service, spec in yaml.safe_load((ROOT / name).read_text())["services"].items():
            yield f"{name}:{service}", spec


def check_command(where: str, argv: list[str]) -> None:
    """A project console script with options its own parser accepts, or a Python one-liner that compiles."""
    argv = [interpolate(part) for part in argv]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if argv[0] in PARSERS:
        assert argv[0] in scripts, f"{where}: {argv[0]} is not a console script of the project"
        try:
            PARSERS[argv[0]]().parse_args(argv[1:])
        except SystemExit as error:
            pytest.fail(f"{where}: {shlex.join(argv)} is refused by {argv[0]}'s own parser ({error})")
    elif argv[:2] == ["python", "-c"]:
        compile(argv[2], where, "exec")
    else:
        pytest.fail(f"{where}: runs {argv[0]!r}, not a console script of the project")


def test_every_image_command_is_a_project_entry_point_with_valid_options() -> None:
    stages = dockerfile_stages()
    for target in ("trainer", "api", "api-gpu"):
        stage = stages[target]
        check_command(f"Dockerfile:{target}", stage["ENTRYPOINT"] + stage.get("CMD", []))
        if "HEALTHCHECK" in stage:
            check_command(f"Dockerfile:{target} HEALTHCHECK", stage["HEALTHCHECK"])
    checked = 0
    for where, spec in compose_services():
        build = spec.get("build")
        target = build.get("target") if isinstance(build, dict) else None
        if target is None and not str(spec.get("image", "")).startswith("binrec-"):
            continue  # redis, locust: upstream images
        stage = stages[target or "api"]
        entrypoint = spec.get("entrypoint", stage["ENTRYPOINT"])
        command = spec.get("command", stage.get("CMD", []))
        assert isinstance(entrypoint, list) and isinstance(command, list), where
        check_command(where, [*entrypoint, *map(str, command)])
        health = spec.get("healthcheck")
        if isinstance(health, dict) and isinstance(health.get("test"), list):
            check_command(f"{where} healthcheck", health["test"][1:])
        checked += 1
    assert checked >= 3  # trainer, indexer, api (and the GPU override's api)


def test_the_load_profile_runs_the_repository_script() -> None:
    spec = dict(compose_services())["docker-compose.yml:load"]
    entrypoint, command = spec["entrypoint"], spec["command"]
    assert isinstance(entrypoint, list) and isinstance(command, list)
    assert entrypoint[0] == "bash" and entrypoint[1] == "/mnt/loadtests/run_headless.sh"
    assert "./loadtests:/mnt/loadtests:ro" in spec["volumes"]  # type: ignore[operator]
    assert (ROOT / "loadtests/run_headless.sh").is_file() and 1 <= len(command) <= 4


def test_the_locust_run_script_reports_zero_failures_against_a_real_service(
    tmp_path: Path, ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        pytest.skip("locust is not installed (the `load` extra)")
    out = tmp_path / "report"
    key = "load-test-events-key"  # with it, the scenario's users also buy, post the event and ask again
    env = {**os.environ, "LOCUST": str(locust), "LOAD_OUT": str(out), "RECSYS_BUNDLE_ROOT": str(ste_bundle.root)}
    env |= {"RECSYS_EVENTS_API_KEY": key}
    env.pop("RECSYS_LOAD_RPS_PER_USER", None)
    # Its users' purchases stay in a database of their own: tests/service/test_events reads the same bundle's users'
    # histories from database 0, and a purchase of one of its users there would change what that test expects.
    redis_url = redis_server.database(1)
    with running_service(local_settings(ste_bundle.root, redis_url, events_api_key=key)) as url:
        run = subprocess.run(
            ["bash", str(ROOT / "loadtests/run_headless.sh"), url, "4", "4", "6s"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with (out / "locust_stats.csv").open(newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0 and int(rows["Aggregated"]["Request Count"]) > 20
    assert {"/recommend", "/recommend [batch]", "/recommend [cold start]", "/events"} <= rows.keys()
    assert (out / "report.html").is_file() and (out / "latency.png").is_file()


def test_the_readme_documents_every_service_setting_with_its_default() -> None:
    from service.settings import ServiceSettings

    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `RECSYS_")]
    for name, field in ServiceSettings.model_fields.items():
        variable = f"RECSYS_{name.upper()}"
        row = next((r for r in rows if f"`{variable}`" in r.split("|")[1]), None)
        assert row is not None, f"README has no row for {variable}"
        default = "unset" if field.default is None else str(field.default).removesuffix(".0")
        assert default in row.split("|")[2], f"README gives another default for {variable}: {row}"
