"""The search process: one owner of the item index per host, answering every worker's searches.

``recsys-serve`` starts it (``RECSYS_SEARCH_PROCESS=true``) before its workers and passes them its socket. A
worker opens the bundle it serves here (``RemoteItemIndex.open``): the first open loads, self-checks and warms the
index, later ones reuse it, so a hot swap costs one load however many workers follow it. The two most recently
opened bundles stay loaded, which covers workers that are mid-swap. Searches from all workers go through one
micro-batcher, so what arrives from several workers during a search shares the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from binrec.index.bundle import Bundle, BundleError
from binrec.index.item_index import IndexSelfCheckError, ItemIndex
from binrec.index.retrieval.faiss_backend import set_cpu_threads
from binrec.service.batcher import MicroBatcher
from binrec.service.logs import configure_logging
from binrec.service.remote_index import search_arguments
from binrec.service.search_wire import Arrays, Header, WireError, pack, read
from binrec.service.settings import ServiceSettings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
KEPT_MODELS = 2  # the serving bundle and the one workers are swapping to (or from)
REFUSALS = (BundleError, IndexSelfCheckError, ValueError)


def refusal(reason: object) -> bytes:
    """The reply to a request the search process will not answer as sent (the worker raises ``ValueError``)."""
    return pack({"ok": False, "refused": True, "error": str(reason)})


@dataclass(frozen=True)
class LoadedIndex:
    """A loaded bundle's index (the micro-batcher searches ``.index`` and groups jobs by this object)."""

    index: ItemIndex


class SearchProcess:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        # One worker sends up to batch_max_size queries at once (one job here); one search merges one from each.
        self.max_batch = settings.batch_max_size * settings.workers
        self.batcher = MicroBatcher(
            max_batch=self.max_batch,
            max_wait_ms=0.0,  # the workers' batchers already waited; merge only what queued during a search
            thread_setup=partial(set_cpu_threads, settings.search_threads),
        )
        self._models: OrderedDict[str, LoadedIndex] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedIndex]] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-load")  # searches go on meanwhile

    def _load(self, bundle_path: str) -> LoadedIndex:
        bundle = Bundle.load(Path(bundle_path))
        index = ItemIndex.for_bundle(bundle, device=self.settings.device, backend=self.settings.retrieval_backend)
        index.warm(self.max_batch)
        log.info("search process loaded %s (backend %s)", bundle.path, index.backend)
        return LoadedIndex(index)

    async def open(self, bundle_path: str) -> LoadedIndex:
        if bundle_path in self._models:
            self._models.move_to_end(bundle_path)
            return self._models[bundle_path]
        loading = self._loading.get(bundle_path)
        if loading is None:  # concurrent opens of one bundle share one load; a failed load is tried anew next time
            loading = asyncio.get_running_loop().run_in_executor(self._loader, self._load, bundle_path)
            self._loading[bundle_path] = loading
            loading.add_done_callback(partial(self._loaded, bundle_path))
        return await asyncio.shield(loading)

    def _loaded(self, bundle_path: str, loading: asyncio.Future[LoadedIndex]) -> None:
        del self._loading[bundle_path]
        if loading.cancelled() or loading.exception() is not None:
            return
        self._models[bundle_path] = loading.result()
        while len(self._models) > KEPT_MODELS:
            dropped, _ = self._models.popitem(last=False)
            log.info("search process dropped %s", dropped)

    async def answer(self, header: Header, arrays: Arrays) -> bytes:
        """The reply frame to one request; refusals of bad input say so, other failures are errors."""
        try:
            if header.get("op") == "open":
                loaded = await self.open(str(header["bundle"]))
                index = loaded.index
                info = {"ok": True, "n_items": index.n_items, "backend": index.backend, "on_gpu": index.on_gpu}
                return pack(info)
            if header.get("op") == "search":
                codes, k, exclude, scales = search_arguments(header, arrays)
                loaded = await self.open(str(header["bundle"]))
                found = await self.batcher.search_many(loaded, codes, k, exclude=exclude, scales=scales)
                return pack({"ok": True}, [found.ids, found.scores])
            return refusal(f"unknown operation {header.get('op')!r}")
        except (*REFUSALS, WireError, KeyError) as error:
            return refusal(error)
        except Exception as error:  # a failed search fails this request, not the process
            log.exception("search process request failed")
            return pack({"ok": False, "error": f"{type(error).__name__}: {error}"})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection: its requests in order, each answered before the next is read."""
        try:
            while True:
                try:
                    header, arrays = await read(reader)
                except asyncio.IncompleteReadError:
                    return  # the worker went away
                except WireError as error:
                    writer.write(refusal(error))
                    await writer.drain()
                    return  # the stream's framing is lost: close it
                writer.write(await self.answer(header, arrays))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # cancelled: the process is stopping, and so is this
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve(self, socket_path: Path) -> None:
        """Listen on ``socket_path`` until SIGTERM or SIGINT; the socket appears once requests can be taken."""
        self.batcher.start()
        server = await asyncio.start_unix_server(self.handle, path=str(socket_path))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("search process listening on %s", socket_path)
        parent = os.getppid()
        async with server:
            while not stop.is_set():  # also stop when recsys-serve is gone (killed, so it could not stop this)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                if os.getppid() != parent:
                    log.error("recsys-serve (pid %d) is gone: the search process stops", parent)
                    break
        await self.batcher.close()
        self._loader.shutdown(wait=False, cancel_futures=True)


def as_environment(overrides: dict[str, Any]) -> dict[str, str]:
    """Settings given on the command line, as the ``RECSYS_*`` variables a child process reads them from."""
    return {f"RECSYS_{name.upper()}": str(value) for name, value in overrides.items()}


class SearchProcessHandle:
    """The search process as ``recsys-serve`` runs it: started before the workers, stopped after them.

    If it exits while the service runs, the service stops too (SIGTERM to itself, so uvicorn drains), rather than
    answer 503 forever: the orchestrator restarts the whole server.
    """

    def __init__(self, process: subprocess.Popen[bytes], socket_path: Path) -> None:
        self.process = process
        self.socket_path = socket_path
        self._stopping = threading.Event()
        threading.Thread(target=self._watch, name="search-process-watch", daemon=True).start()

    @property
    def failed(self) -> bool:
        return self.process.poll() is not None and not self._stopping.is_set()

    @classmethod
    def start(cls, stack: contextlib.ExitStack, overrides: dict[str, Any]) -> SearchProcessHandle:
        """Start it with the service's settings; return once its socket takes connections (RuntimeError if not)."""
        runtime = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys-search-")))
        socket_path = runtime / "search.sock"
        process = subprocess.Popen(
            [sys.executable, "-m", "binrec.service.search_process", "--socket", str(socket_path)],
            env={**os.environ, **as_environment(overrides)},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not socket_path.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the search process exited with code {process.returncode} before it listened")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the search process did not listen within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        handle = cls(process, socket_path)
        stack.callback(handle.stop)
        return handle

    def stop(self) -> None:
        self._stopping.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _watch(self) -> None:
        code = self.process.wait()
        if not self._stopping.is_set():
            log.error("the search process exited with code %d: stopping the service", code)
            os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binrec.service.search_process",
        description="The item-index owner that recsys-serve starts with RECSYS_SEARCH_PROCESS=true (settings from "
        "RECSYS_* as the service reads them).",
    )
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(SearchProcess(settings).serve(args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
