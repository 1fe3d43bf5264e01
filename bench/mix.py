"""Parts 2 and 3: the realistic mix (locust, headless) against gateway -> local store and against the store
directly at a fixed offered load, and the soak with RSS per gateway worker sampled every 10 s."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.procs import Proc, http, rss_mb

HERE = Path(__file__).resolve().parent
USER_RPS = 5.0


def seed(store_url: str, key: str, ns: str, docs: int, dims: int, batch: int = 1000) -> float:
    """Write `docs` rows (ids doc-0..) straight into the store; returns rows/s."""
    rng = np.random.default_rng(7)
    headers = {"authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    for start in range(0, docs, batch):
        n = min(batch, docs - start)
        vecs = rng.random((n, dims), dtype=np.float32).round(4).tolist()
        rows = [{"id": f"doc-{start + i}", "vector": vecs[i], "cat": f"c{(start + i) % 10}"} for i in range(n)]
        body = json.dumps({"upsert_rows": rows, "distance_metric": "cosine_distance"}).encode()
        status, _, out = http("POST", f"{store_url}/v2/namespaces/{ns}", body, headers, timeout=120)
        if status != 200:
            raise RuntimeError(f"seeding {ns}: HTTP {status}: {out[:200]!r}")
    return docs / (time.perf_counter() - t0)


def _stats(prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["Name"] if row["Name"] != "Aggregated" else "all"
            n, fails = int(row["Request Count"]), int(row["Failure Count"])
            out[name] = {"requests": n, "failures": fails, "error_rate": round(fails / n, 5) if n else 1.0,
                         "rps": round(float(row["Requests/s"]), 2), "p50_ms": float(row["50%"] or 0),
                         "p99_ms": float(row["99%"] or 0)}
    return out


def locust(url: str, key: str, ns: str, docs: int, dims: int, seconds: int, rate: float, fetch: str,
           sample: Proc | None = None) -> dict[str, Any]:
    """Run the mix at `rate` req/s offered; with `sample`, RSS of its processes every 10 s."""
    users = max(1, round(rate / USER_RPS))
    env = dict(os.environ, BENCH_KEY=key, BENCH_NS=ns, BENCH_DOCS=str(docs), BENCH_DIMS=str(dims),
               BENCH_USER_RPS=str(rate / users), BENCH_FETCH=fetch)
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        prefix = f"{tmp}/mix"
        cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(users),
               "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", prefix, "--only-summary",
               "--stop-timeout", "5", "--exit-code-on-error", "0", "--loglevel", "WARNING"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples: list[dict[str, float]] = []
        deadline = time.monotonic() + seconds + 60
        next_sample = time.monotonic()
        while proc.poll() is None and time.monotonic() < deadline:
            if sample is not None and time.monotonic() >= next_sample:
                samples.append({str(p): round(rss_mb(p), 2) for p in sample.pids()})
                next_sample += 10
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0]
        if proc.returncode != 0 or not Path(f"{prefix}_stats.csv").exists():
            raise RuntimeError(f"locust failed ({proc.returncode}): {output[-800:]}")
        out: dict[str, Any] = {"offered_rps": rate, "users": users, "seconds": seconds, **_stats(prefix)}
    if sample is not None:
        out["rss_samples_mb"] = samples
        out.update(rss_growth(samples, sample.pids()))
    return out


def rss_growth(samples: list[dict[str, float]], pids: list[int]) -> dict[str, Any]:
    """Per worker: peak RSS and growth from the second sample (after warm-up) to the mean of the last three."""
    workers = [str(p) for p in pids[1:]] or [str(pids[0])]
    peak, growth = 0.0, 0.0
    per: dict[str, Any] = {}
    for w in workers:
        series = [s[w] for s in samples if w in s]
        if not series:
            continue
        base = series[1] if len(series) > 2 else series[0]
        tail = series[-3:]
        g = (sum(tail) / len(tail) - base) / base if base else 0.0
        per[w] = {"first_mb": series[0], "base_mb": base, "last_mb": series[-1], "peak_mb": max(series),
                  "growth": round(g, 4)}
        peak, growth = max(peak, max(series)), max(growth, g)
    return {"rss_per_worker": per, "rss_peak_mb": round(peak, 2), "rss_growth": round(growth, 4)}
