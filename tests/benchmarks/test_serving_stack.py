"""benchmarks.serving_stack: what it leaves behind when a server never turns ready (every process's stack), and the
user codes and users file it writes for a load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from benchmarks.serving_stack import MSET_CHUNK, RedisProcess, ServiceProcess
from benchmarks.wrk_load import py_spy_binary, write_users_file
from index.id_map import IdMap
from service.user_codes import user_code_key


def test_a_start_that_never_turns_ready_times_out_and_logs_each_process(tmp_path: Path) -> None:
    # A "server" that never answers /readyz, with a child of its own, as uvicorn's supervisor has workers.
    child = "import time; time.sleep(60)"
    script = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    service = ServiceProcess(process, port=1, workers=2)
    log = tmp_path / "serve.log"
    log.write_text("the server's own output\n")
    try:
        time.sleep(0.5)  # its child is started
        with pytest.raises(TimeoutError, match="not ready in time"):
            service._wait_ready(time.monotonic() + 0.5, log)
    finally:
        service.stop()
    text = log.read_text()
    assert text.startswith("the server's own output\n")
    if py_spy_binary() is None:
        assert "no py-spy to show the processes' stacks" in text
    else:
        assert text.count("=== py-spy dump --pid") == 2


@pytest.mark.parametrize("as_id_map", [False, True], ids=["list", "id-map"])
def test_user_codes_land_under_the_services_keys_across_chunks(tmp_path: Path, as_id_map: bool) -> None:
    """Written in Redis's wire format by hand, so what the service reads back is checked key by key: more users
    than one MSET holds, so the chunks and the pipelined replies are exercised."""
    n = MSET_CHUNK * 2 + 123
    ids = [f"user-{i}" for i in range(n)]
    codes = np.random.default_rng(0).integers(0, 256, (n, 16), dtype=np.uint8)
    server = RedisProcess.start(tmp_path / "redis.log")
    try:
        assert server.load_user_codes("v7", IdMap.of(ids) if as_id_map else ids, codes) == n
        client = redis.Redis(port=server.port)
        assert client.dbsize() == n
        rows = [0, MSET_CHUNK - 1, MSET_CHUNK, n - 1]
        assert client.mget([user_code_key("v7", ids[r]) for r in rows]) == [codes[r].tobytes() for r in rows]
    finally:
        server.stop()


def test_the_users_file_is_the_same_from_a_list_or_a_bundles_ids(tmp_path: Path) -> None:
    ids = [f"u{i}" for i in range(1000)]
    from_list = write_users_file(ids, tmp_path / "list.users").read_text()
    assert write_users_file(IdMap.of(ids), tmp_path / "map.users").read_text() == from_list
    assert sorted(from_list.split("\n")[:-1]) == sorted(ids) and from_list.split("\n")[:-1] != ids  # shuffled
    for unsafe in ("two words", "", "é"):
        with pytest.raises(ValueError, match="would need escaping"):
            write_users_file([*ids, unsafe], tmp_path / "bad.users")
