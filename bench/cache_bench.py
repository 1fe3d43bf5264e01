"""Cache-hit fetches per cache backend: the embedded SQLite cache and Aerospike (through the official client).

For each backend: the local store, a gateway (1 worker, pinned like the throughput part) with that cache, 200
documents written through the gateway (its write mirror caches them), then h2load on a single-document fetch and a
100-id batch fetch, both served from the cache (asserted through `x-layer-cache: hit` before measuring).

No Aerospike server installs on these machines: the Aerospike figures are measured against the project's Aerospike
wire test server (tests/support/aerospike_server.py, pure Python asyncio, pinned to the load core). They show the
gateway's client path working under load; a real server answers faster, so they are a floor, not a forecast.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from bench import load
from bench.load import Request
from bench.procs import LOAD_CPU, NCPU, PROXY_CPU, http, start_gateway, start_localstore
from bench.throughput import Runner, check

KEY = "bench-cache-key"
AUTH = {"authorization": f"Bearer {KEY}"}
NS = "bench-cache"
DOCS = 200
BATCH = 100


def _seed(gw_url: str) -> None:
    rows = [{"id": f"doc-{i}", "vector": [i / DOCS, 1.0], "title": f"document {i}", "n": i} for i in range(DOCS)]
    status, _, body = http("POST", f"{gw_url}/v2/namespaces/{NS}",
                           json.dumps({"upsert_rows": rows, "distance_metric": "cosine_distance"}).encode(), AUTH)
    if status != 200:
        raise RuntimeError(f"seeding {NS}: HTTP {status}: {body[:200]!r}")


def measure_backend(backend: str, tmp: Path, seconds: float, repeats: int) -> dict[str, Any]:
    from support.aerospike import start_aerospike  # the wire test server; bench.procs put tests/ on sys.path

    server = start_aerospike() if backend == "aerospike" else None
    procs: list[Any] = []
    try:
        if server is not None and NCPU > 1:
            os.sched_setaffinity(server.popen.pid, {int(LOAD_CPU)})
        store, store_url = start_localstore(str(tmp / f"store-{backend}"), KEY)
        procs.append(store)
        env = {"AEROSPIKE_HOSTS": server.hosts_env} if server is not None else {}
        gw, gw_url = start_gateway(store_url, KEY, str(tmp / f"gw-{backend}"), 1, "pyreqwest", PROXY_CPU, **env)
        procs.append(gw)
        _seed(gw_url)
        hit = ("x-layer-cache", "hit")
        single = check(gw_url, Request("GET", f"/v2/namespaces/{NS}/documents/doc-7", None, AUTH), hit)
        ids = [f"doc-{i}" for i in range(BATCH)]
        batch = check(gw_url, Request("POST", f"/v2/namespaces/{NS}/documents", json.dumps({"ids": ids}).encode(),
                                      AUTH), hit)
        out: dict[str, Any] = {}
        for name, req in (("fetch_hit", single), (f"fetch_{BATCH}_ids_hit", batch)):
            res = load.interleaved({"gateway": (gw_url, gw.pids())}, req, seconds, repeats)["gateway"]
            if res.errors:
                raise RuntimeError(f"{backend} {name}: {res.errors} of {res.requests} failed: {res.bad_statuses}")
            out[name] = res.as_dict()
        return out
    finally:
        for p in reversed(procs):
            p.stop()
        if server is not None:
            server.stop()


def run(tmp: Path, seconds: float, repeats: int) -> dict[str, Any]:
    runner = Runner(seconds, repeats)
    for backend in ("local", "aerospike"):
        runner.scenario(backend, partial(measure_backend, backend, tmp, seconds, repeats))
    return {"note": "gateway 1 worker pinned; aerospike = the project's wire test server (Python)", **runner.out}
