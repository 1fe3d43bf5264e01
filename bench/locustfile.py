"""The realistic mix for locust (FastHttpUser): 70% ANN queries, 20% one-row writes, 10% fetches by id.

Env: BENCH_KEY (bearer), BENCH_NS, BENCH_DOCS (ids doc-0..N-1 exist), BENCH_DIMS, BENCH_USER_RPS (per user),
BENCH_FETCH=route (gateway GET /documents/{id}) | query (native id-filter query, for the store directly).
"""

from __future__ import annotations

import json
import os
import random

from locust import constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser

KEY = os.environ.get("BENCH_KEY", "")
NS = os.environ.get("BENCH_NS", "bench-mix")
DOCS = int(os.environ.get("BENCH_DOCS", "10000"))
DIMS = int(os.environ.get("BENCH_DIMS", "256"))
FETCH_ROUTE = os.environ.get("BENCH_FETCH", "route") == "route"
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def vector() -> list[float]:
    return [round(random.random(), 4) for _ in range(DIMS)]


class MixUser(FastHttpUser):
    wait_time = constant_throughput(float(os.environ.get("BENCH_USER_RPS", "5")))

    @task(7)
    def query(self) -> None:
        body = json.dumps({"rank_by": ["vector", "ANN", vector()], "top_k": 10, "include_attributes": ["cat"]})
        self.client.post(f"/v2/namespaces/{NS}/query", data=body, headers=HEADERS, name="query")

    @task(2)
    def write(self) -> None:
        i = random.randrange(DOCS)
        body = json.dumps({"upsert_rows": [{"id": f"doc-{i}", "vector": vector(), "cat": f"c{i % 10}"}],
                           "distance_metric": "cosine_distance"})
        self.client.post(f"/v2/namespaces/{NS}", data=body, headers=HEADERS, name="write")

    @task(1)
    def fetch(self) -> None:
        doc = f"doc-{random.randrange(DOCS)}"
        if FETCH_ROUTE:
            self.client.get(f"/v2/namespaces/{NS}/documents/{doc}", headers=HEADERS, name="fetch")
        else:
            body = json.dumps({"rank_by": ["id", "asc"], "top_k": 1, "filters": ["id", "Eq", doc],
                               "include_attributes": True})
            self.client.post(f"/v2/namespaces/{NS}/query", data=body, headers=HEADERS, name="fetch")
