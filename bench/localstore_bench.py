"""Foundation benchmark: the real local store over HTTP with 256-dimension documents.

For each size (10k and 100k documents by default): write throughput in 1,000-row batches, ANN top-10 latency and
filtered ANN latency (median, p99) over a keep-alive connection. Target (bench/budgets.toml): 10k-doc ANN median
< 5 ms. Run alone: python -m bench.localstore_bench [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from bench.procs import start_localstore

KEY = "bench-store-key"
DIMS = 256
BATCH = 1000


def _pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else 0.0


class Client:
    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def post(self, path: str, body: bytes) -> bytes:
        self.conn.request("POST", path, body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def write_docs(c: Client, ns: str, docs: int, rng: np.random.Generator) -> dict[str, Any]:
    times = []
    for start in range(0, docs, BATCH):
        n = min(BATCH, docs - start)
        vecs = rng.random((n, DIMS), dtype=np.float32).round(5).tolist()
        rows = [{"id": start + i, "vector": vecs[i], "cat": f"c{(start + i) % 10}"} for i in range(n)]
        body = json.dumps({"upsert_rows": rows, "distance_metric": "cosine_distance"}).encode()
        t0 = time.perf_counter()
        c.post(f"/v2/namespaces/{ns}", body)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"batches": len(times), "rows_per_s": round(docs / total, 1),
            "batch_ms_median": round(statistics.median(times) * 1000, 3)}


def query_latency(c: Client, ns: str, queries: int, rng: np.random.Generator, filtered: bool) -> dict[str, float]:
    lat = []
    for i in range(queries + 5):
        q: dict[str, Any] = {"rank_by": ["vector", "ANN", rng.random(DIMS, dtype=np.float32).round(5).tolist()],
                             "top_k": 10}
        if filtered:
            q["filters"] = ["cat", "Eq", "c3"]
        body = json.dumps(q).encode()
        t0 = time.perf_counter()
        out = c.post(f"/v2/namespaces/{ns}/query", body)
        dt = time.perf_counter() - t0
        if len(json.loads(out).get("rows", [])) != 10:
            raise RuntimeError(f"{ns}: ANN query did not return 10 rows")
        if i >= 5:  # first few warm the store
            lat.append(dt * 1000)
    return {"median_ms": round(statistics.median(lat), 3), "p99_ms": round(_pct(lat, 0.99), 3), "n": len(lat)}


def run(sizes: list[int], queries: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(prefix="bench-localstore-") as tmp:
        store, url = start_localstore(tmp, KEY)
        try:
            c = Client(url)
            try:
                for docs in sizes:
                    ns = f"lsbench-{docs}"
                    res: dict[str, Any] = {"docs": docs, "dims": DIMS}
                    try:
                        res["write"] = write_docs(c, ns, docs, rng)
                        res["ann_top10"] = query_latency(c, ns, queries, rng, False)
                        res["filtered_ann_top10"] = query_latency(c, ns, queries, rng, True)
                        res["status"] = "ok"
                    except Exception as exc:  # noqa: BLE001 - reported, never faked
                        res["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                        c.close()
                        c = Client(url)
                    out[str(docs)] = res
            finally:
                c.close()
        finally:
            store.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    res = run([int(s) for s in args.sizes.split(",")], args.queries)
    print(json.dumps(res, indent=2))
    return 0 if all(r.get("status") == "ok" for r in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
