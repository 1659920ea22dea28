"""The harness floor: the same FastHttpUser pacing as locustfile.py against a server that does no work.

benchmarks/serving.py --floor runs it against benchmarks/floor_app.py, so a service's latency can be read
against what locust, loopback and uvicorn alone add on the same machine.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant_throughput, task


class FloorUser(FastHttpUser):
    wait_time = constant_throughput(float(os.environ.get("RECSYS_LOAD_RPS_PER_USER", "10")))

    @task
    def healthz(self) -> None:
        self.client.get("/healthz")
