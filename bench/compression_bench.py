"""What response compression costs the gateway's CPU (gateway/compression.py).

- `micro`: in process, gateway.compression's own gzip_bytes and gunzip on query-shaped JSON of 1 KiB .. 1 MiB:
  CPU µs per call (time.process_time, the median of 5 rounds), MB/s and the compressed/plain ratio.
- `end_to_end`: the gateway's CPU µs per request on an answer it rewrites (the v1 schema of the canned upstream,
  ~8 KiB, whose stamp attribute it hides), with and without `Accept-Encoding: gzip`; interleaved h2load runs.
Run alone: python -m bench.compression_bench
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench import load
from bench.load import Request
from bench.nginx import SCHEMA_NS
from bench.procs import http
from gateway.compression import gunzip, gzip_bytes

SIZES = {"1KiB": 1 << 10, "16KiB": 16 << 10, "128KiB": 128 << 10, "1MiB": 1 << 20}
ROUNDS = 5


def query_body(size: int) -> bytes:
    """A query answer of about `size` bytes: rows of id, $dist, a title and a 16-dim vector of random float32s (the
    floats are what keeps real answers from compressing as well as repetitive text)."""
    rnd = random.Random(7)
    rows: list[dict[str, Any]] = []
    n = 10
    while n < size:
        row = {"id": len(rows), "$dist": round(rnd.random(), 7), "title": f"document title number {len(rows)}",
               "vector": [round(rnd.uniform(-1, 1), 7) for _ in range(16)]}
        rows.append(row)
        n += len(json.dumps(row, separators=(",", ":"))) + 1
    return json.dumps({"rows": rows}, separators=(",", ":")).encode()


def _cpu_us(fn: Callable[[], Any], min_seconds: float) -> float:
    """Median over ROUNDS of the CPU µs of one call, each round running `fn` for at least `min_seconds`."""
    medians = []
    for _ in range(ROUNDS):
        n, t0 = 0, time.process_time()
        while True:
            fn()
            n += 1
            spent = time.process_time() - t0
            if spent >= min_seconds:
                break
        medians.append(spent / n * 1e6)
    return statistics.median(medians)


def micro(smoke: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    min_seconds = 0.01 if smoke else 0.2
    for label, size in SIZES.items():
        plain = query_body(size)
        packed = gzip_bytes(plain)
        gz_us = _cpu_us(partial(gzip_bytes, plain), min_seconds)
        inflate_us = _cpu_us(partial(gunzip, packed, len(plain)), min_seconds)
        out[label] = {"plain_bytes": len(plain), "gzip_bytes": len(packed), "ratio": round(len(packed) / len(plain), 4),
                      "gzip_cpu_us": round(gz_us, 1), "gzip_mb_s": round(len(plain) / gz_us, 1),
                      "inflate_cpu_us": round(inflate_us, 1)}
    return out


def end_to_end(seconds: float, repeats: int, gw_url: str, pids: list[int], auth: dict[str, str]) -> dict[str, Any]:
    path = f"/v1/namespaces/{SCHEMA_NS}/schema"
    reqs = {"plain": Request("GET", path, None, dict(auth)),
            "gzip": Request("GET", path, None, {**auth, "accept-encoding": "gzip"})}
    out: dict[str, Any] = {}
    for label, req in reqs.items():
        status, headers, body = http("GET", gw_url + path, None, req.headers)
        if status != 200 or (headers.get("content-encoding") == "gzip") != (label == "gzip"):
            raise RuntimeError(f"{label}: HTTP {status}, content-encoding {headers.get('content-encoding')}")
        out[f"{label}_bytes"] = len(body)
    runs: dict[str, list[load.Result]] = {k: [] for k in reqs}
    for _ in range(repeats):
        for label, req in reqs.items():
            runs[label].append(load.run(gw_url, req, seconds, pids=pids))
    res = {k: load.median_of(v) for k, v in runs.items()}
    for k, v in res.items():
        if v.errors or not v.requests:
            raise RuntimeError(f"{k}: {v.errors} of {v.requests} requests failed: {v.bad_statuses}")
        out[k] = v.as_dict()
    g, p = res["gzip"].cpu_us_per_req, res["plain"].cpu_us_per_req
    out["added_cpu_us_per_req"] = round(g - p, 1) if g is not None and p is not None else None
    return out


if __name__ == "__main__":
    print(json.dumps(micro(), indent=2))
