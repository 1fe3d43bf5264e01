"""Transport floors: the bare Granian proxy (bench/bare_proxy.py) with each upstream transport, in front of the
canned nginx upstream over http and over https (a certificate from a CA made for the run), and the gateway with each
transport in front of the https upstream. One pinned core each, measured interleaved in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import load
from bench.nginx import start_canned_tls
from bench.procs import PROXY_CPU, Proc, start_bare, start_gateway
from bench.throughput import GW_ENV, STORE_KEY, Runner, check, query


def transport_floors(r: Runner, tmp: Path, canned_url: str, transports: list[str]) -> dict[str, Any]:
    tls, tls_url, ca_file = start_canned_tls(tmp / "canned-tls")
    procs: list[Proc] = [tls]
    try:
        targets: dict[str, tuple[str, list[int] | None]] = {}
        for t in transports:
            for label, (proc, url) in (
                (f"bare_{t}", start_bare("granian", canned_url, transport=t)),
                (f"bare_{t}_tls", start_bare("granian", tls_url, transport=t, ca_file=ca_file)),
                (f"gateway_{t}_tls", start_gateway(tls_url, STORE_KEY, str(tmp / f"gw-tls-{t}"), 1, t, PROXY_CPU,
                                                   LAYER_UPSTREAM_CA_FILE=ca_file, **GW_ENV)),
            ):
                procs.append(proc)
                targets[label] = (url, proc.pids())
        req = query("bench-pass")
        for url, _ in targets.values():
            check(url, req)
        res = load.interleaved(targets, req, r.seconds, r.repeats)
        for name, v in res.items():
            if v.errors > max(0, v.requests // 1000) or not v.requests:
                raise RuntimeError(f"{name}: {v.errors} of {v.requests} requests failed: {v.bad_statuses}")
        return {"upstream_tls": tls_url, **{k: v.as_dict() for k, v in res.items()}}
    finally:
        for proc in reversed(procs):
            proc.stop()
