"""The search process: one owner of the index answers every worker exactly as an in-process index would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.bundle import CURRENT, Bundle
from index.codes import CodeLayout, encode_sign1
from index.item_index import ItemIndex, SearchResult
from index.retrieval import MAX_K
from service.model import ModelLoader, ServingModel
from service.search_client import RemoteBackend, SearchUnavailable
from service.search_process import Connection, Pending, merged_batches
from service.search_wire import SIZES, Found, Refused, Search, WireError, decode, pack, receive, unpack
from tests.conftest import RedisServer, TrainedBundle, free_port
from tests.service.test_api import local_settings, running_service
from tests.service.test_cli import serve
from tests.service.test_lifecycle import KEY, reload, wait_for
from tests.service.test_workers import children_running, wait_for_workers


def test_frames_carry_arrays_exactly_and_malformed_ones_are_refused() -> None:
    arrays = [
        np.arange(24, dtype=np.uint8).reshape(4, 6),
        np.empty(0, np.int64),
        np.linspace(0, 1, 6, dtype=np.float32),
    ]
    frame = pack({"type": "Search", "k": 5}, arrays)
    meta_size, body_size = SIZES.unpack(frame[: SIZES.size])
    header, back = unpack(frame[SIZES.size : SIZES.size + meta_size], frame[SIZES.size + meta_size :])
    assert header == {"type": "Search", "k": 5} and body_size == sum(a.nbytes for a in arrays)
    for sent, received in zip(arrays, back, strict=True):
        assert received.dtype == sent.dtype and np.array_equal(received, sent)
    meta, body = frame[SIZES.size : SIZES.size + meta_size], frame[SIZES.size + meta_size :]
    with pytest.raises(WireError, match="shorter"):
        unpack(meta, body[:-1])
    with pytest.raises(WireError, match="longer"):
        unpack(meta, body + b"\0")
    with pytest.raises(WireError, match="unsupported array"):
        unpack(b'{"arrays": [["object", [1]]]}', b"\0" * 8)
    with pytest.raises(WireError, match="malformed"):
        unpack(b"not json", b"")


def test_messages_travel_typed_and_foreign_ones_are_refused() -> None:
    queries = np.arange(12, dtype=np.uint8).reshape(3, 4)
    frame = Search("/bundles/v1", 7, queries).frame()
    meta_size, _ = SIZES.unpack(frame[: SIZES.size])
    back = decode(*unpack(frame[SIZES.size : SIZES.size + meta_size], frame[SIZES.size + meta_size :]))
    assert isinstance(back, Search) and back.bundle == "/bundles/v1" and back.fetch == 7
    assert np.array_equal(back.queries, queries)
    with pytest.raises(WireError, match="unknown message type"):
        decode({"type": "Shutdown"}, [])
    with pytest.raises(WireError, match="a Search frame holds"):
        decode({"type": "Search", "bundle": "b"}, [queries])  # no fetch
    with pytest.raises(WireError, match="Search.fetch must be int"):
        decode({"type": "Search", "bundle": "b", "fetch": "7"}, [queries])
    with pytest.raises(WireError, match="Found.merged must be int"):
        decode({"type": "Found", "merged": True, "search_s": 0.1, "queued_s": 0.0}, [queries, queries])


@contextlib.contextmanager
def running_search_process(path: Path, **settings: str) -> Iterator[Path]:
    """A search process of its own with ``RECSYS_*`` settings, as recsys-serve starts it; stopped cleanly after."""
    env = {**os.environ, "RECSYS_LOG_LEVEL": "warning", **{f"RECSYS_{k.upper()}": v for k, v in settings.items()}}
    process = subprocess.Popen([sys.executable, "-m", "service.search_process", "--socket", str(path)], env=env)
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the search process did not listen"
        time.sleep(0.05)
    try:
        yield path
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


@pytest.fixture
def search_socket(tmp_path: Path) -> Iterator[Path]:
    """A search process of its own, its index on the CPU."""
    with running_search_process(tmp_path / "search.sock", device="cpu") as path:
        yield path


def search_on_a_loop(index: ItemIndex, codes: np.ndarray, k: int, **options: Any) -> SearchResult:
    """``search_async`` as a worker's micro-batcher awaits it: on an event loop, no thread."""

    async def search() -> SearchResult:
        try:
            return await index.search_async(codes, k, **options)
        finally:  # as a stopping worker does: its connections close before its loop ends
            assert isinstance(index.retrieval, RemoteBackend)
            index.retrieval.close()

    return asyncio.run(search())


SEARCHES = [ItemIndex.search, search_on_a_loop]  # a worker's blocking calls (open, self-check) and its batches


@pytest.mark.parametrize("kind", ["ste_bundle", "hq2_bundle", "asymmetric_bundle", "bigear_bundle", "fp_bundle"])
def test_remote_search_equals_the_in_process_index(
    kind: str, search_socket: Path, request: pytest.FixtureRequest
) -> None:
    trained: TrainedBundle = request.getfixturevalue(kind)
    bundle = Bundle.load(trained.root)
    local = ItemIndex.for_bundle(bundle, device="cpu")
    remote = ServingModel.remote_index(bundle, search_socket, 10.0, None)
    assert remote.n_items == local.n_items and remote.backend == local.backend and not remote.on_gpu
    rows = np.arange(min(40, bundle.manifest.n_users))
    codes = np.asarray(bundle.user_codes[rows])
    exclude = [bundle.seen_items(int(row)) for row in rows]
    scales = np.asarray(bundle.user_scales[rows]) if bundle.user_scales is not None else None
    for k, excluded in ((20, exclude), (bundle.manifest.n_items + 5, None)):
        expected = local.search(codes, k, exclude=excluded, query_scales=scales)
        for how in SEARCHES:
            got = how(remote, codes, k, exclude=excluded, query_scales=scales)
            assert np.array_equal(got.ids, expected.ids), how
            assert np.array_equal(got.scores, expected.scores), how


def test_refusals_name_the_problem_and_leave_the_process_serving(
    search_socket: Path, ste_bundle: TrainedBundle, tmp_path: Path
) -> None:
    bundle = Bundle.load(ste_bundle.root)
    remote = ServingModel.remote_index(bundle, search_socket, 10.0, None)
    backend = remote.retrieval
    assert isinstance(backend, RemoteBackend)
    codes = np.asarray(bundle.user_codes[:2])
    with pytest.raises(ValueError, match="k must be positive"):
        remote.search(codes, 0)
    with pytest.raises(ValueError, match="exclude has 1 rows for 2 queries"):
        remote.search(codes, 5, exclude=[np.empty(0, np.int64)])
    queries = remote.prepare_queries(codes)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # what the search process itself refuses
        raw.connect(str(search_socket))
        for request, problem in (
            (Search(str(bundle.path), 5, np.zeros((2, queries.shape[1] + 1), np.uint8)), "queries must be"),
            (Search(str(bundle.path), 5, queries.astype(np.int64)), "queries must be"),
            (Search(str(bundle.path), 0, queries), "fetch must be in"),
            (Search(str(bundle.path), bundle.manifest.n_items + 1, queries), "fetch must be in"),
            (Search(str(tmp_path / "no-such-bundle"), 5, queries), "no-such-bundle"),
            (Found(queries.astype(np.int64), queries, 1, 0.0, 0.0), "takes Open and Search"),
        ):
            raw.sendall(request.frame())
            answer = receive(raw)
            assert isinstance(answer, Refused) and problem in answer.error, (request, answer)
        raw.sendall(pack({"type": "Search", "bundle": str(bundle.path), "fetch": "5"}, [queries]))
        answer = receive(raw)
        assert isinstance(answer, Refused) and "fetch must be int" in answer.error
        raw.sendall(SIZES.pack(3, 0) + b"{x}")  # a frame whose header is not JSON
        answer = receive(raw)
        assert isinstance(answer, Refused) and "malformed" in answer.error
    fake = Bundle.load(ste_bundle.root)
    object.__setattr__(fake, "path", tmp_path / "no-such-bundle")
    with pytest.raises(ValueError, match="no-such-bundle"):
        ServingModel.remote_index(fake, search_socket, 10.0, None)
    assert np.array_equal(remote.search(codes, 5).ids, ItemIndex.for_bundle(bundle, device="cpu").search(codes, 5).ids)


def test_an_unreachable_search_process_is_search_unavailable(tmp_path: Path, ste_bundle: TrainedBundle) -> None:
    with pytest.raises(SearchUnavailable, match="search process"):
        ServingModel.remote_index(Bundle.load(ste_bundle.root), tmp_path / "nobody.sock", 10.0, None)


@pytest.mark.parametrize("how", SEARCHES)
def test_a_search_process_that_stops_answering_times_out_and_the_worker_reconnects(
    search_socket: Path, ste_bundle: TrainedBundle, how: Callable[..., SearchResult]
) -> None:
    """A stopped (not killed) search process: each search gives up after its timeout, and once the process
    answers again the next search goes through on a fresh connection."""
    bundle = Bundle.load(ste_bundle.root)
    remote = ServingModel.remote_index(bundle, search_socket, 0.5, None)
    codes = np.asarray(bundle.user_codes[:3])
    expected = how(remote, codes, 10)
    (owner,) = children_running(os.getpid(), "service.search_process")
    os.kill(owner, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(SearchUnavailable, match="no answer within 0.5 s"):
            how(remote, codes, 10)
        assert time.monotonic() - started < 3
    finally:
        os.kill(owner, signal.SIGCONT)
    again = how(remote, codes, 10)  # the late answer to the timed-out search is never read as this one's
    assert np.array_equal(again.ids, expected.ids) and np.array_equal(again.scores, expected.scores)


def test_a_search_process_that_dies_mid_search_is_search_unavailable_on_the_loop(
    tmp_path: Path, ste_bundle: TrainedBundle
) -> None:
    """The connection lost while a search awaits its answer fails that search at once (no wait for the timeout)."""
    bundle = Bundle.load(ste_bundle.root)
    path = tmp_path / "search.sock"
    env = {**os.environ, "RECSYS_LOG_LEVEL": "warning", "RECSYS_DEVICE": "cpu"}
    owner = subprocess.Popen([sys.executable, "-m", "service.search_process", "--socket", str(path)], env=env)
    try:
        while not path.exists():
            assert owner.poll() is None, "the search process did not listen"
            time.sleep(0.05)
        remote = ServingModel.remote_index(bundle, path, 30.0, None)
        backend = remote.retrieval
        assert isinstance(backend, RemoteBackend)
        codes = np.asarray(bundle.user_codes[:3])

        async def search_while_it_dies() -> None:
            try:
                await remote.search_async(codes, 10)  # a connection of this loop, now idle
                owner.send_signal(signal.SIGSTOP)
                searching = asyncio.ensure_future(remote.search_async(codes, 10))
                await asyncio.sleep(0.2)
                owner.kill()
                await searching
            finally:
                backend.close()

        started = time.monotonic()
        with pytest.raises(SearchUnavailable, match="search process"):
            asyncio.run(search_while_it_dies())
        assert time.monotonic() - started < 10
    finally:
        owner.kill()
        owner.wait()


def test_recsys_serve_answers_through_the_search_process_and_stops_when_it_dies(
    ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    env = {"RECSYS_LOG_LEVEL": "warning"}
    plain, plain_url = serve(ste_bundle.root, redis_server, env=env)
    try:
        users = ste_bundle.data.user_ids[:15]
        expected = [httpx.get(f"{plain_url}/recommend", params={"user_id": u}).json() for u in users]
    finally:
        plain.send_signal(signal.SIGTERM)
        plain.communicate(timeout=60)
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2", env={**env, "RECSYS_SEARCH_PROCESS": "1"})
    try:
        wait_for_workers(url, 2)
        for user, answer in zip(users, expected, strict=True):  # ids and exact scores alike
            assert httpx.get(f"{url}/recommend", params={"user_id": user}).json()["items"] == answer["items"]
        batch = httpx.post(f"{url}/recommend", json={"user_ids": list(users), "k": 7}).json()
        assert [r["items"] for r in batch["results"]] == [a["items"][:7] for a in expected]
        kill_its_search_process(process)  # the whole server stops: the orchestrator restarts it
    finally:
        stderr = stopped(process)
    assert_stopped_for_its_search_process(stderr)


def test_requests_get_503_while_the_search_process_does_not_answer_and_200_once_it_does(
    ste_bundle: TrainedBundle, redis_server: RedisServer
) -> None:
    """A stopped search process: GET (the hot path and the route) and POST answer 503 within the search timeout,
    with a JSON body and Retry-After, never hang or 500; once it runs again every worker answers 200."""
    env = {"RECSYS_LOG_LEVEL": "warning", "RECSYS_SEARCH_PROCESS": "1", "RECSYS_SEARCH_TIMEOUT_S": "0.5"}
    process, url = serve(ste_bundle.root, redis_server, "--workers", "2", env=env)
    user = ste_bundle.data.user_ids[3]
    requests = [
        ("GET", f"/recommend?user_id={user}", None),
        ("GET", f"/recommend?user_id={user}&exclude_seen=yes", None),  # not plain: FastAPI's route answers it
        ("POST", "/recommend", {"user_ids": [user, "someone-new"], "k": 5}),
    ]
    try:
        wait_for_workers(url, 2)  # a worker still loading waits for the search process: it would answer nothing
        (owner,) = children_running(process.pid, "service.search_process")
        os.kill(owner, signal.SIGSTOP)
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                for method, target, body in requests * 2:  # both workers, most likely
                    started = time.monotonic()
                    answer = client.request(method, target, json=body)
                    assert answer.status_code == 503, (target, answer.text)
                    assert answer.json() == {"detail": "search unavailable, retry later"}
                    assert answer.headers["retry-after"] == "1" and time.monotonic() - started < 3
                ready = client.get("/readyz")  # a load balancer takes this worker out meanwhile
                assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
                assert ready.json()["search"] is False
        finally:
            os.kill(owner, signal.SIGCONT)
        with httpx.Client(base_url=url, timeout=10) as client:
            for method, target, body in requests * 3:
                assert client.request(method, target, json=body).status_code == 200, target
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["search"] is True
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr


@contextlib.contextmanager
def answering_late(upstream: Path, path: Path, delay_s: float) -> Iterator[Path]:
    """A Unix socket at ``path`` that hands each frame sent to it on to ``upstream`` ``delay_s`` late, so the real
    search process behind it answers as one busy (or paused) for that long does."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    connections: list[socket.socket] = []

    def pump(source: socket.socket, target: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                time.sleep(delay)
                target.sendall(data)
        for end in (source, target):
            end.close()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(str(upstream))
                connections.extend((client, server))
                threading.Thread(target=pump, args=(client, server, delay_s), daemon=True).start()
                threading.Thread(target=pump, args=(server, client, 0.0), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield path
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        listener.close()
        for connection in connections:
            connection.close()


def test_a_model_loads_while_the_search_process_answers_later_than_the_search_timeout(
    search_socket: Path, ste_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """A worker starting or reloading while the search process is busy or paused for longer than the search timeout
    (its self-check and warm-up wait as the bundle's open does) loads, where failing would stop a starting worker's
    whole server or leave a reloading one on its old version; once loaded, its searches give up within the search
    timeout again."""
    with answering_late(search_socket, tmp_path / "late.sock", delay_s=1.0) as late:
        loader = ModelLoader(bundle_root=ste_bundle.root, device="cpu", search_socket=late, search_timeout_s=0.3)
        model = loader.load()
        assert model.version == Bundle.load(ste_bundle.root).manifest.model_version
        codes = np.asarray(model.bundle.user_codes[:2])
        for search in SEARCHES:
            started = time.monotonic()
            with pytest.raises(SearchUnavailable, match="no answer within 0.3 s"):
                search(model.index, codes, 5)
            assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("search", SEARCHES, ids=["blocking", "on-a-loop"])
def test_a_search_process_that_stopped_accepting_fails_searches_within_the_search_timeout(
    search: Callable[..., SearchResult], ste_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """Each request that gives up on a stopped search process leaves a connection in its backlog; once that is full
    a new connection waits as long as the process stays stopped, so connecting too must give up in time."""
    with running_search_process(tmp_path / "search.sock", device="cpu") as path:
        bundle = Bundle.load(ste_bundle.root)
        index = ServingModel.remote_index(bundle, path, 0.3, None)
        codes = np.asarray(bundle.user_codes[:2])
        (owner,) = children_running(os.getpid(), "service.search_process")
        backlog: list[socket.socket] = []
        pool = ThreadPoolExecutor(1)
        os.kill(owner, signal.SIGSTOP)
        try:
            while len(backlog) < 10_000:  # more than any listen() backlog
                waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                waiting.setblocking(False)
                try:
                    waiting.connect(str(path))
                except BlockingIOError:
                    waiting.close()
                    break
                backlog.append(waiting)
            assert 0 < len(backlog) < 10_000
            for _ in range(2):  # the pooled connection first (no answer), then a new one (the backlog is full)
                started = time.monotonic()
                with pytest.raises(SearchUnavailable, match="search process"):  # no answer, or no room to connect
                    pool.submit(search, index, codes, 5).result(timeout=10)
                assert time.monotonic() - started < 3
        finally:
            os.kill(owner, signal.SIGCONT)  # a connect that never gave up gets through now
            pool.shutdown()
            for waiting in backlog:
                waiting.close()


def test_a_reload_that_cannot_reach_the_search_process_answers_503_and_is_tried_again(
    two_models: tuple[Path, Bundle, Bundle], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A failure that may pass is not a refusal: POST /admin/reload answers 503 (409 is for bundles at fault), the
    old model serves on, and the watcher loads the bundle once the search process can be reached again, where a
    refused bundle would wait until its manifest changes."""
    root, old, new = two_models
    sockets = tmp_path_factory.mktemp("sockets")
    with running_search_process(sockets / "search.sock", device="cpu") as path:
        settings = local_settings(root, redis_server.url, search_socket=path, admin_api_key=KEY, watch_interval_s=0.1)
        with running_service(settings) as url:
            path.rename(sockets / "away.sock")  # new connections fail; the one serving stays
            (root / CURRENT).write_text(new.path.name + "\n")
            answer = reload(url)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert f"not loaded (may pass), still serving {old.manifest.model_version}" in answer.json()["detail"]
            time.sleep(0.5)  # the watcher meets the same failure
            assert httpx.get(f"{url}/readyz").json()["model_version"] == old.manifest.model_version
            metrics = httpx.get(f"{url}/metrics").text
            assert 'recsys_model_loads_total{outcome="failed"}' in metrics
            assert 'recsys_model_loads_total{outcome="refused"}' not in metrics
            (sockets / "away.sock").rename(path)
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["model_version"] == new.manifest.model_version)


def test_searches_of_many_workers_are_merged_and_each_gets_its_own_rows(
    search_socket: Path, ste_bundle: TrainedBundle
) -> None:
    """Workers searching at once: the search process answers several of them from one backend call (``merged``
    beyond one worker's queries), and every worker gets exactly its own rows, cut to its own fetch."""
    bundle = Bundle.load(ste_bundle.root)
    local = ItemIndex.for_bundle(bundle, device="cpu")
    merged: list[int] = []
    clients = 6

    def worker(offset: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        remote = ServingModel.remote_index(bundle, search_socket, 10.0, lambda rows, *_: merged.append(rows))
        got = []
        for step in range(40):
            rows = (np.arange(1 + (offset + step) % 3) * 7 + offset + step) % bundle.manifest.n_users
            k = 5 + (offset * 3 + step) % 17  # a different fetch per worker and step
            codes = np.asarray(bundle.user_codes[rows])
            exclude = [bundle.seen_items(int(row)) for row in rows]
            found = remote.search(codes, k, exclude=exclude)
            got.append((rows, found.ids, found.scores))
        return got

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    for got in results:
        for rows, ids, scores in got:
            codes = np.asarray(bundle.user_codes[rows])
            expected = local.search(codes, ids.shape[1], exclude=[bundle.seen_items(int(row)) for row in rows])
            assert np.array_equal(ids, expected.ids) and np.array_equal(scores, expected.scores)
    assert max(merged) > 3  # more queries in one backend call than any single worker sends


def test_a_search_past_the_fast_path_is_never_merged_with_ordinary_ones() -> None:
    """A worker's user with thousands of seen items asks for more than the GPU kernel's largest k: merged, every
    worker's queries would be searched at that fetch on the host's counting pass. It gets backend calls with its
    own kind only; the ordinary searches of every worker still merge, up to the batch limit."""
    rng = np.random.default_rng(4)
    items = encode_sign1(rng.standard_normal((MAX_K + 600, 16)))
    index = ItemIndex.build(items, CodeLayout.SIGN1, 16, device="cpu", backend="torch")
    assert index.retrieval is not None and index.retrieval.fast_k == MAX_K
    ends = socket.socketpair()
    try:
        connection = Connection(ends[0])

        def request(rows: int, fetch: int) -> Pending:
            return Pending(connection, index, Search("b", fetch, encode_sign1(rng.standard_normal((rows, 16)))), 0.0)

        light, heavy, more, heavier, last = (
            request(3, 30),
            request(1, MAX_K + 1),
            request(2, 500),
            request(1, MAX_K + 90),
            request(4, 25),
        )
        batches = merged_batches([light, heavy, more, heavier, last], max_batch=8)
        assert batches == [[light, more], [last], [heavy, heavier]]
    finally:
        for end in ends:
            end.close()


def kill_its_search_process(process: subprocess.Popen[str]) -> None:
    """SIGKILL recsys-serve's search process: the server exits with code 1."""
    (owner,) = children_running(process.pid, "service.search_process")
    os.kill(owner, signal.SIGKILL)
    assert process.wait(timeout=60) == 1


def stopped(process: subprocess.Popen[str]) -> str:
    """The server's stderr, once it has exited (killed if it still runs)."""
    if process.poll() is None:
        process.kill()
    return process.communicate()[1]


def assert_stopped_for_its_search_process(stderr: str) -> None:
    assert "recsys-serve: error: the search process exited" in stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_killed_search_process_stops_the_server_with_one_line_and_leaves_nothing_behind(
    ste_bundle: TrainedBundle, redis_server: RedisServer, tmp_path: Path, workers: str
) -> None:
    """One worker or several: exit code 1, one error line, no traceback, the socket's folder removed."""
    env = {"RECSYS_LOG_LEVEL": "warning", "RECSYS_SEARCH_PROCESS": "1", "TMPDIR": str(tmp_path)}
    process, url = serve(ste_bundle.root, redis_server, "--workers", workers, env=env)
    try:
        wait_for_workers(url, int(workers))  # one still starting would fail to open its bundle
        assert httpx.get(f"{url}/recommend", params={"user_id": ste_bundle.data.user_ids[0]}).status_code == 200
        assert list(tmp_path.glob("recsys-search-*/search.sock"))
        kill_its_search_process(process)
    finally:
        stderr = stopped(process)
    assert_stopped_for_its_search_process(stderr)
    assert not list(tmp_path.glob("recsys-search-*")), "the search process's socket folder was left behind"


def test_a_worker_starting_while_the_search_process_is_gone_says_so_in_one_line(
    ste_bundle: TrainedBundle, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker of several (as uvicorn spawns it) whose search process does not exist: one error line and uvicorn's
    startup-failure exit code, which stops the server, never a lifespan traceback."""
    env = {
        **os.environ, "RECSYS_WORKERS": "2", "RECSYS_SEARCH_SOCKET": str(tmp_path / "gone.sock"),
        "RECSYS_BUNDLE_ROOT": str(ste_bundle.root), "RECSYS_REDIS_URL": redis_server.url, "RECSYS_DEVICE": "cpu",
    }  # fmt: skip
    worker = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert worker.returncode == 3, worker.stderr
    assert "could not load its model" in worker.stderr and "gone.sock" in worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr
