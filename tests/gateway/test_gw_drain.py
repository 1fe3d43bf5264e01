"""Drain under load (issue 16), under the server the suite runs with (LAYER_SERVER): keep-alive clients through a
10 ms upstream, SIGTERM to the supervisor mid-run.

Counts are printed (`pytest -s`) for the closing note."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import call, wait_until
from support.httpload import Load, Outcome, request_bytes
from support.procs import SERVER, Proc, base_env, free_port, start_gateway

from gateway.config import SERVERS

UNDER_GRANIAN = (SERVER or SERVERS[0]) == "granian"

GRACE_MS = 1500
SLOW_MS = 2500  # one query in flight when the grace ends
KEY = "drain-key"
QUERY = json.dumps({"rank_by": ["id", "asc"], "top_k": 1}).encode()
HEADERS = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def upstream() -> Iterator[Proc]:
    port = free_port()
    proc = Proc("slow-upstream", [sys.executable, str(Path(__file__).parents[1] / "support" / "slow_upstream.py"),
                                  "--port", str(port)], base_env(), f"http://127.0.0.1:{port}", "/health")
    yield proc
    proc.stop()


def _gateway(upstream: Proc, tmp: Path) -> Proc:
    return start_gateway(upstream.url, KEY, tmp, workers=2, LAYER_DRAIN_GRACE_MS=str(GRACE_MS),
                         LAYER_DRAIN_TIMEOUT_MS="10000", LAYER_LOG_LEVEL="warning")


def _addr(proc: Proc) -> tuple[str, int]:
    return "127.0.0.1", int(proc.url.rsplit(":", 1)[1])


def _rate(outcomes: list[Outcome], until: float) -> float:
    done = sorted(o.ended for o in outcomes if o.kind == "ok" and o.ended <= until)
    window = [t for t in done if t >= until - 1.0]
    return float(len(window))


def _first_refusal(gw: Proc) -> float | None:
    """When a new connection was first refused (polled until the gateway exits; None if it never was)."""
    while gw.popen.poll() is None:
        try:
            socket.create_connection(_addr(gw), timeout=1).close()
        except ConnectionRefusedError:
            return time.monotonic()
        except OSError:
            pass
        time.sleep(0.05)
    return None


def _slow_query(gw: Proc, results: list[object]) -> None:
    results.append(call(gw.url, "POST", f"/v2/namespaces/slow-{SLOW_MS}/query", raw=QUERY, key=KEY, timeout=30))


def test_sigterm_under_load_serves_the_grace_then_refuses(upstream: Proc, tmp_path: Path) -> None:
    import threading

    gw = _gateway(upstream, tmp_path / "gw")
    load = Load(lambda: [_addr(gw)], request_bytes("POST", "/v2/namespaces/drain/query", QUERY, HEADERS), 24)
    try:
        load.start()
        time.sleep(2.0)
        slow: list[object] = []
        threading.Thread(target=_slow_query, args=(gw, slow), daemon=True).start()
        time.sleep(0.2)  # the slow query is in flight and ends ~1 s after the grace: the exit waits for it
        t0 = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)  # to the supervisor only, as Kubernetes does
        ready = wait_until(lambda: call(gw.url, "GET", "/ready", key=None), lambda r: r.status == 503, timeout=5)
        assert ready.json()["status"] == "draining"
        refused_at = _first_refusal(gw)  # while the slow query still holds the gateway open
        code = gw.wait(30)
        exited = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        outcomes = load.stop()
        gw.stop()
    grace_end = t0 + GRACE_MS / 1000
    kinds = Counter(o.kind for o in outcomes)
    before = [o for o in outcomes if o.ended < t0]
    during = [o for o in outcomes if o.kind == "ok" and t0 <= o.started < grace_end]
    late_connects = [o for o in outcomes if o.kind == "refused"]
    print(f"\ndrain counts ({SERVER or SERVERS[0]}): {dict(kinds)}; rate before SIGTERM {_rate(outcomes, t0):.0f} req/s; answered during the"
          f" grace {len(during)} (Connection: close on {sum(o.close for o in during)}); refused connects "
          f"{len(late_connects)}, first {min((o.started - t0 for o in late_connects), default=-1):.3f} s after "
          f"SIGTERM; exit {exited:.2f} s after SIGTERM")
    # The offered load is ~1,000+ req/s on a quiet 2-core machine (the figure printed above); only a sanity floor is
    # asserted, so a loaded CI machine cannot fail the drain's correctness checks for being slow.
    assert _rate(outcomes, t0) >= 100, "the load generator barely ran"
    assert before and all(o.status == 200 for o in before if o.kind == "ok")
    assert during, "requests were served during the grace"
    assert [o for o in outcomes if o.kind == "ok" and o.status != 200] == []
    lost = [o for o in outcomes if o.kind == "lost"]
    if UNDER_GRANIAN:
        # Granian's known limit (docs/operations.md): when the grace ends, hyper's graceful shutdown also closes the
        # connections Granian accepted but has not read a request from yet; a request in flight on such a fresh
        # connection at that instant is lost. Nothing else may be.
        assert all(o.fresh and grace_end - 0.5 < o.started < grace_end + 3.0 for o in lost), lost
    else:
        assert lost == [], lost
    assert all(o.close for o in during if o.started > t0 + 0.8), "every response in the grace says Connection: close"
    # new connections: accepted during the grace, refused once it ended
    assert all(o.started > grace_end - 0.05 for o in late_connects), "no connection was refused during the grace"
    assert refused_at is not None and refused_at > grace_end - 0.05, "a new connection is refused once the grace ended"
    assert slow and getattr(slow[0], "status", 0) == 200, slow
    assert code == 0
    assert exited < GRACE_MS / 1000 + SLOW_MS / 1000 + 20.0


def test_rolling_deploy_client_moves_to_the_next_instance_without_errors(upstream: Proc, tmp_path: Path) -> None:
    old = _gateway(upstream, tmp_path / "old")
    new = _gateway(upstream, tmp_path / "new")
    moved = {"yes": False}

    def targets() -> list[tuple[str, int]]:  # the balancer: the old instance until it said Connection: close
        return [_addr(new)] if moved["yes"] else [_addr(old), _addr(new)]

    load = Load(targets, request_bytes("POST", "/v2/namespaces/roll/query", QUERY, HEADERS), 24)
    try:
        load.start()
        time.sleep(2.0)
        old.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: call(old.url, "GET", "/ready", key=None), lambda r: r.status == 503, timeout=5)
        moved["yes"] = True  # the balancer saw /ready fail and routes new connections to the new instance
        code = old.wait(30)
        time.sleep(1.0)
    finally:
        outcomes = load.stop()
        old.stop()
        new.stop()
    kinds = Counter(o.kind for o in outcomes)
    per_target = Counter(o.target for o in outcomes if o.kind == "ok")
    # answered by the old instance while it drained (its responses then say Connection: close)
    on_old_after = sum(1 for o in outcomes if o.kind == "ok" and o.target.endswith(old.url.rsplit(":", 1)[1])
                       and o.close)
    print(f"\nrolling deploy counts: {dict(kinds)}; answered per instance {dict(per_target)}; answered by the old "
          f"instance while draining {on_old_after}")
    assert kinds["ok"] > 0 and kinds["lost"] == 0 and kinds["refused"] == 0, dict(kinds)
    assert all(o.status == 200 for o in outcomes if o.kind == "ok")
    assert len(per_target) == 2 and on_old_after > 0
    assert code == 0


def test_second_sigterm_stops_at_once_and_never_fabricates_a_status(upstream: Proc, tmp_path: Path) -> None:
    import threading

    gw = start_gateway(upstream.url, KEY, tmp_path / "gw", workers=2, LAYER_DRAIN_GRACE_MS="20000",
                       LAYER_DRAIN_TIMEOUT_MS="20000")
    slow: list[object] = []

    def query() -> None:
        try:
            slow.append(call(gw.url, "POST", "/v2/namespaces/slow-8000/query", raw=QUERY, key=KEY, timeout=30))
        except OSError as exc:  # the connection failed: the only acceptable outcome besides a real answer
            slow.append(exc)

    try:
        t = threading.Thread(target=query, daemon=True)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: call(gw.url, "GET", "/ready", key=None), lambda r: r.status == 503, timeout=5)
        gw.popen.send_signal(signal.SIGTERM)
        gw.wait(15)
        exited = time.monotonic() - t0
        t.join(15)
    finally:
        gw.stop()
    assert exited < 8.0, f"exited {exited:.1f} s after the first SIGTERM, not at the second"
    assert slow and isinstance(slow[0], OSError), slow
