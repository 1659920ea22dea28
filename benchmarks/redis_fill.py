"""Redis holding user codes: memory per key and the time to fill it, on a fresh redis-server.

    python -m benchmarks.redis_fill --users 1000000 --code-bytes 16

Keys are the service's (``service.user_codes.user_code_key``), values a code's bytes, set with the service's TTL
through pipelines of ``--pipeline`` commands (what a bulk fill would do; the service itself fills one miss at a
time, in the background of the request that missed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import redis

from benchmarks.serving import free_port
from service.user_codes import user_code_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--code-bytes", type=int, default=16)
    parser.add_argument("--pipeline", type=int, default=10_000)
    parser.add_argument("--ttl-s", type=int, default=86_400)
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", folder], stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            before = int(client.info("memory")["used_memory"])
            codes = np.random.default_rng(0).integers(0, 256, (args.users, args.code_bytes), dtype=np.uint8)
            version = "synthetic-hq2b-20260101T000000Z-abcd"
            started = time.perf_counter()
            for start in range(0, args.users, args.pipeline):
                pipe = client.pipeline(transaction=False)
                for row in range(start, min(start + args.pipeline, args.users)):
                    pipe.set(user_code_key(version, str(row)), codes[row].tobytes(), ex=args.ttl_s)
                pipe.execute()
            seconds = time.perf_counter() - started
            after = int(client.info("memory")["used_memory"])
            record = {
                "users": args.users, "code_bytes": args.code_bytes, "fill_seconds": round(seconds, 2),
                "sets_per_second": round(args.users / seconds), "used_memory_mb": round(after / 2**20, 1),
                "bytes_per_key": round((after - before) / args.users, 1), "keys": client.dbsize(),
            }  # fmt: skip
            print(json.dumps(record))
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
