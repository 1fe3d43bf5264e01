"""h2load runs (HTTP/1.1, pinned to the load core) with per-request logs -> req/s, p50/p99, errors, CPU, steal."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import LOAD_CPU, cpu_seconds, ctx_switches, host_cpu_ticks, pinned

STEAL_LIMIT = 0.10
MAX_REPEATS = 2
SMOKE_REQUESTS = 200


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_us_per_req: float | None = None
    ctx_switches_per_req: float | None = None
    steal: float = 0.0
    repeats: int = 0
    bad_statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def _once(base_url: str, req: Request, seconds: float, conns: int, rps: int | None, pids: list[int],
          warmup: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        log = Path(tmp) / "log.tsv"
        cmd = ["h2load", "--h1", "-t", "1", "-c", str(conns), "--log-file", str(log)]
        if seconds > 0:
            cmd += ["-D", str(max(1, round(seconds))), "--warm-up-time", str(max(1, round(warmup)))]
        else:  # smoke: a fixed small number of requests, no warm-up
            cmd += ["-n", str(SMOKE_REQUESTS)]
            warmup = 0
        if rps:
            cmd += ["--rps", str(max(1, rps // conns))]
        for k, v in req.headers.items():
            cmd += ["-H", f"{k}: {v}"]
        if req.body is not None:
            data = Path(tmp) / "body"
            data.write_bytes(req.body)
            cmd += ["-d", str(data), "-H", "content-type: application/json"]
        if req.method not in ("GET", "POST"):
            raise ValueError(f"h2load sends GET or POST only, not {req.method}")
        proc = subprocess.Popen(pinned(cmd + [base_url + req.path], LOAD_CPU), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            # CPU and steal are sampled over the measured window only (h2load logs no warm-up requests)
            time.sleep(max(1, round(warmup)) if warmup > 0 else 0)
            total0, steal0 = host_cpu_ticks()
            cpu0 = cpu_seconds(pids) if pids else 0.0
            cs0 = ctx_switches(pids) if pids else 0
            stdout, stderr = proc.communicate(timeout=seconds + warmup + 60)
            cpu1 = cpu_seconds(pids) if pids else 0.0
            cs1 = ctx_switches(pids) if pids else 0
            total1, steal1 = host_cpu_ticks()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {stderr[-500:] or stdout[-500:]}")
        durations, errors, first, last = [], 0, None, None
        bad: dict[int, int] = {}
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            start, status, dur = int(parts[0]), int(parts[1]), int(parts[2])
            first = start if first is None else min(first, start)
            last = start + dur if last is None else max(last, start + dur)
            durations.append(dur / 1000.0)
            if not 200 <= status < 300:
                errors += 1
                bad[status] = bad.get(status, 0) + 1
    n = len(durations)
    # the per-request log may include warm-up requests; measured throughput comes from the log's time span
    span = ((last or 0) - (first or 0)) / 1e6
    durations.sort()
    steal = (steal1 - steal0) / max(1, total1 - total0)
    cpu_time = cpu1 - cpu0
    return Result(rps=n / span if span > 0 else 0.0, p50_ms=_percentile(durations, 0.5),
                  p99_ms=_percentile(durations, 0.99), requests=n, errors=errors,
                  cpu_us_per_req=cpu_time / n * 1e6 if pids and n else None,
                  ctx_switches_per_req=(cs1 - cs0) / n if pids and n else None, steal=steal,
                  bad_statuses={str(k): v for k, v in bad.items()})


def run(base_url: str, req: Request, seconds: float, conns: int = 16, rps: int | None = None,
        pids: list[int] | None = None, warmup: float = 1.0) -> Result:
    """One measurement; repeated (up to MAX_REPEATS more times) while host steal is >= 10%."""
    res = _once(base_url, req, seconds, conns, rps, pids or [], warmup)
    repeats = 0
    while res.steal >= STEAL_LIMIT and repeats < MAX_REPEATS:
        repeats += 1
        time.sleep(0.2)
        res = _once(base_url, req, seconds, conns, rps, pids or [], warmup)
    res.repeats = repeats
    return res


def median_of(results: list[Result]) -> Result:
    """Field-wise median of several runs (requests/errors summed)."""
    if len(results) == 1:
        return results[0]
    cpu = [r.cpu_us_per_req for r in results if r.cpu_us_per_req is not None]
    cs = [r.ctx_switches_per_req for r in results if r.ctx_switches_per_req is not None]
    return Result(rps=statistics.median(r.rps for r in results), p50_ms=statistics.median(r.p50_ms for r in results),
                  p99_ms=statistics.median(r.p99_ms for r in results), requests=sum(r.requests for r in results),
                  errors=sum(r.errors for r in results), cpu_us_per_req=statistics.median(cpu) if cpu else None,
                  ctx_switches_per_req=statistics.median(cs) if cs else None,
                  steal=max(r.steal for r in results), repeats=sum(r.repeats for r in results),
                  bad_statuses={k: sum(r.bad_statuses.get(k, 0) for r in results)
                                for k in {k for r in results for k in r.bad_statuses}})


def interleaved(targets: Mapping[str, tuple[str, list[int] | None]], req: Request, seconds: float, repeats: int,
                **kw: Any) -> dict[str, Result]:
    """`repeats` rounds of one run per target, round-robin (drift on the shared machine hits every target alike);
    the field-wise median per target. `kw` goes to run() (conns, rps)."""
    runs: dict[str, list[Result]] = {k: [] for k in targets}
    for _ in range(repeats):
        for name, (url, pids) in targets.items():
            runs[name].append(run(url, req, seconds, pids=pids, **kw))
    return {k: median_of(v) for k, v in runs.items()}
