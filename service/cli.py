"""`recsys-serve`: verify the CURRENT bundle, then serve it with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, get_args

import uvicorn
from pydantic import ValidationError

from index.command_line import first_line
from index.retrieval import DevicePreference
from service.app import create_app
from service.http_limits import BoundedRequestProtocol
from service.logs import configure_logging
from service.metrics import MULTIPROCESS_ENV
from service.model import ModelLoader, ModelLoadError, ServingModel
from service.search_process import SearchProcessHandle, as_environment
from service.settings import ServiceSettings
from service.workers import RUNTIME_DIR_ENV, start_failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-serve",
        description="Serve /recommend from a bundle. Every option also reads RECSYS_<NAME> from the environment.",
    )
    parser.add_argument(
        "--bundle-root", type=Path, default=None, help="bundle directory or root with CURRENT (RECSYS_BUNDLE_ROOT)"
    )
    parser.add_argument("--host", default=None, help="interface to bind (RECSYS_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to bind (RECSYS_PORT, default 8000)")
    parser.add_argument("--redis-url", default=None, help="Redis for user codes (RECSYS_REDIS_URL)")
    parser.add_argument(
        "--device", choices=get_args(DevicePreference), default=None, help="where the index runs (RECSYS_DEVICE)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="uvicorn worker processes, each with its own index unless RECSYS_SEARCH_PROCESS (RECSYS_WORKERS)",
    )
    return parser


def cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not bind ``host:port`` (a port in use, an address of no interface), said in one line before
    the workers start, or None. uvicorn binds it again right after: it sets SO_REUSEADDR, as this check does."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            return None
    except (OSError, UnicodeError) as error:
        return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"recsys-serve: error: setting {first['loc'][0]}: {first['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    with contextlib.ExitStack() as stack:
        search: SearchProcessHandle | None = None
        if settings.search_process:  # started first: the bundle is verified through it, as every worker opens it
            try:
                search = SearchProcessHandle.start(stack, overrides)
            except RuntimeError as error:
                print(f"recsys-serve: error: {error}", file=sys.stderr)
                return 2
            overrides["search_socket"] = search.socket_path
            settings = settings.model_copy(update={"search_socket": search.socket_path})
        try:
            model: ServingModel | None = ModelLoader.for_check(settings).load()
        except ModelLoadError as error:  # a bundle that cannot serve, whatever the reason: one line, not a traceback
            print(f"recsys-serve: error: {error}", file=sys.stderr)
            return 2
        if settings.workers > 1:  # verified; each worker loads its own, and this process only supervises them
            model = None
        if (unbindable := cannot_listen(settings.host, settings.port)) is not None:
            print(f"recsys-serve: error: cannot listen on {settings.host}:{settings.port}: {unbindable}",
                  file=sys.stderr)  # fmt: skip
            return 2
        failures = serve(settings, overrides, model, search)
        if search is not None and search.failed:
            print("recsys-serve: error: the search process exited; the service stopped with it", file=sys.stderr)
            return 1
        if failures:  # each worker said why (and logged it); the first is the server's reason
            print(f"recsys-serve: error: {failures[0]}", file=sys.stderr)
            return 1
    return 0


def serve(
    settings: ServiceSettings,
    overrides: dict[str, Any],
    model: ServingModel | None,
    search: SearchProcessHandle | None,
) -> list[str]:
    """Run uvicorn: this process serves ``model`` itself (one worker), or its workers each load their own (several:
    ``model`` is None, so that the supervising process holds no copy of the bundle while they serve). Returns the
    reasons the app (of this process, or of workers) could not start for: uvicorn stops the server on a worker's
    first, and returns normally."""
    common = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level, "access_log": False,
        "http": BoundedRequestProtocol.configured(settings),
    }  # fmt: skip
    if settings.workers == 1:  # log_config=None: uvicorn's own lines go through the same formatter
        assert model is not None, "one worker serves the model recsys-serve loaded"
        try:
            app = create_app(settings, model=model)
        except Exception as error:  # any cause: one line, as a worker of several says it
            return [f"the app could not be built: {first_line(error)}"]
        config = uvicorn.Config(app, log_config=None, **common)  # type: ignore[arg-type]
        server = uvicorn.Server(config)
        if search is not None:  # drain and return, so that main says why and removes the socket's folder
            search.on_failure = lambda: setattr(server, "should_exit", True)
        server.run()
        return []
    # Several processes: each worker builds the app from the environment, so command-line values go there.
    os.environ.update(as_environment(overrides))
    if settings.watch_interval_s == 0:  # how every worker follows a reload that reached one of them
        os.environ["RECSYS_WATCH_INTERVAL_S"] = "1"
    with tempfile.TemporaryDirectory(prefix="recsys-serve-") as runtime:
        # One folder for the workers' metrics (summed by every scrape) and one for the versions they serve.
        for name, variable in (("metrics", MULTIPROCESS_ENV), ("workers", RUNTIME_DIR_ENV)):
            (Path(runtime) / name).mkdir()
            os.environ[variable] = str(Path(runtime) / name)
        uvicorn.run(  # each worker's create_app sets up the JSON logging itself
            "service.app:create_worker_app",
            factory=True,
            workers=settings.workers,
            log_config=None,
            **common,  # type: ignore[arg-type]
        )
        return start_failures(Path(runtime) / "workers")


if __name__ == "__main__":
    sys.exit(main())
