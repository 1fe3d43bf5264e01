"""The query-result cache under a repeated-query mix: hit rate, throughput and gateway CPU per query, with the
cache on and off (same mix, same run).

The mix: QUERIES distinct query bodies over one namespace, picked with a Zipf-like skew (applications repeat a few
queries often and many rarely), CONNS keep-alive connections in one asyncio client, and one write through the
gateway every WRITE_EVERY_S (each invalidates the namespace's cached answers). The local store answers queries in
well under a millisecond, so the figures show the gateway's side; against Turbopuffer (~10 ms a warm query, billed
per query) a hit also saves that latency and the bill. Hit rate comes from `x-layer-cache` (every answer that is
not a hit made one upstream query: shared answers count as hits), CPU from the gateway processes' utime+stime.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httptools

from bench.procs import PROXY_CPU, cpu_seconds, http, start_gateway, start_localstore

KEY = "bench-results-key"
AUTH = {"authorization": f"Bearer {KEY}"}
NS = "bench-results"
DOCS, DIMS = 2000, 16
QUERIES = 40
ZIPF_S = 1.1
CONNS = 16
WRITE_EVERY_S = 1.0
STABLE_POLL_MS = 1000


class _Reply:
    def __init__(self) -> None:
        self.done = False
        self.cache = b""
        self._name = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-layer-cache":
            self.cache = value

    def on_message_complete(self) -> None:
        self.done = True


def _request(method: str, path: str, body: bytes) -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: {AUTH['authorization']}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _bodies(rnd: random.Random) -> list[bytes]:
    out = []
    for i in range(QUERIES):
        vec = [round(rnd.random(), 3) for _ in range(DIMS)]
        q: dict[str, Any] = {"rank_by": ["vector", "ANN", vec], "top_k": 10, "include_attributes": ["cat"]}
        if i % 3 == 0:
            q["filters"] = ["cat", "Eq", f"c{i % 10}"]
        out.append(json.dumps(q).encode())
    return out


async def _drive(port: int, requests: list[bytes], weights: list[float], seconds: float, seed: int,
                 write: bytes) -> dict[str, Any]:
    counts = {"hit": 0, "miss": 0, "other": 0, "errors": 0}
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one_conn(n: int) -> None:
        rnd = random.Random(seed + n)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop:
                reply = _Reply()
                parser = httptools.HttpResponseParser(reply)
                t0 = time.perf_counter()
                writer.write(rnd.choices(requests, weights)[0])
                while not reply.done:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionResetError("gateway closed the connection")
                    parser.feed_data(data)
                latencies.append(time.perf_counter() - t0)
                if parser.get_status_code() != 200:
                    counts["errors"] += 1
                counts[reply.cache.decode() if reply.cache in (b"hit", b"miss") else "other"] += 1
        finally:
            writer.close()

    async def writer_loop() -> None:
        reader, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop:
                await asyncio.sleep(WRITE_EVERY_S)
                reply = _Reply()
                parser = httptools.HttpResponseParser(reply)
                w.write(write)
                while not reply.done:
                    parser.feed_data(await reader.read(65536))
        finally:
            w.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one_conn(n) for n in range(CONNS)), writer_loop())
    elapsed = time.monotonic() - t0
    total = counts["hit"] + counts["miss"] + counts["other"]
    latencies.sort()
    return {"requests": total, "seconds": round(elapsed, 2), "rps": round(total / elapsed, 1),
            "upstream_queries": total - counts["hit"],
            "hit_rate": round(counts["hit"] / total, 3) if total else 0.0, "errors": counts["errors"],
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None}


def _seed(gw_url: str) -> None:
    rnd = random.Random(7)
    for start in range(0, DOCS, 500):
        rows = [{"id": f"doc-{i}", "vector": [round(rnd.random(), 3) for _ in range(DIMS)], "cat": f"c{i % 10}"}
                for i in range(start, min(DOCS, start + 500))]
        status, _, body = http("POST", f"{gw_url}/v2/namespaces/{NS}",
                               json.dumps({"upsert_rows": rows, "distance_metric": "cosine_distance"}).encode(), AUTH,
                               timeout=120)
        if status != 200:
            raise RuntimeError(f"seeding {NS}: HTTP {status}: {body[:200]!r}")


def measure(tmp: Path, cache: bool, seconds: float) -> dict[str, Any]:
    store, store_url = start_localstore(str(tmp / f"store-{cache}"), KEY)
    procs = [store]
    try:
        env = {"CONSISTENCY_STABLE_POLL_INTERVAL_MS": str(STABLE_POLL_MS)}
        if cache:
            env["LAYER_RESULT_CACHE"] = NS
        gw, gw_url = start_gateway(store_url, KEY, str(tmp / f"gw-{cache}"), 1, "httptools", PROXY_CPU, **env)
        procs.append(gw)
        _seed(gw_url)
        rnd = random.Random(11)
        path = f"/v2/namespaces/{NS}/query"
        requests = [_request("POST", path, b) for b in _bodies(rnd)]
        weights = [1 / (k + 1) ** ZIPF_S for k in range(QUERIES)]
        write = _request("POST", f"/v2/namespaces/{NS}", json.dumps(
            {"upsert_rows": [{"id": "doc-0", "vector": [0.5] * DIMS, "cat": "c0"}]}).encode())
        port = int(gw_url.rsplit(":", 1)[1])
        asyncio.run(_drive(port, requests, weights, min(seconds, 2.0), 1, write))  # warm-up (not counted)
        cpu0 = cpu_seconds(gw.pids())
        out = asyncio.run(_drive(port, requests, weights, seconds, 2, write))
        cpu = cpu_seconds(gw.pids()) - cpu0
        out["gateway_cpu_us_per_request"] = round(cpu / out["requests"] * 1e6, 1) if out["requests"] else None
        return out
    finally:
        for p in reversed(procs):
            p.stop()


def run(tmp: Path, seconds: float, repeats: int) -> dict[str, Any]:
    """Cache off and on, alternated `repeats` times; medians of each figure."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(repeats):
        for name in ("off", "on"):
            runs[name].append(measure(tmp, name == "on", seconds))
    out: dict[str, Any] = {"note": (f"{QUERIES} distinct queries, zipf s={ZIPF_S}, {CONNS} connections, one write "
                                    f"every {WRITE_EVERY_S} s; gateway 1 worker pinned; medians of {repeats}")}
    for name, results in runs.items():
        out[name] = {k: statistics.median(r[k] for r in results) for k in results[0]
                     if isinstance(results[0][k], (int, float)) and results[0][k] is not None}
    return {"status": "ok", **out}
