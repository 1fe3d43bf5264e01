"""Secrets and the operational surface: the public port shows bare /health and /ready only; metrics and detailed
health are on the ops listener; the admin key is never printed."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from gw_support import Stack, call, wait_until
from support.procs import Proc, base_env, free_ports, gateway_cmd


def test_the_public_port_shows_no_operational_detail(stack: Stack) -> None:
    ns = "ops-visible"
    assert stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": 1}]}).status == 200
    assert stack("GET", "/metrics", key=None).status == 404
    upstream_host = urlsplit(stack.store.url).netloc
    for path in ("/health", "/ready"):
        r = stack("GET", path, key=None)
        assert r.status == 200 and set(r.json()) == {"status", "version", "worker"} and set(r.json()["worker"]) == {"pid"}
        assert upstream_host.encode() not in r.body and ns.encode() not in r.body
    # The ops listener has the detail, for every worker.
    ops = stack.gw.ops_url
    assert ops is not None
    health = wait_until(lambda: call(ops, "GET", "/health", key=None).json(), lambda h: len(h["workers"]) == 2)
    assert {w["upstream"]["host"] for w in health["workers"]} == {upstream_host}
    metrics = wait_until(lambda: call(ops, "GET", "/metrics", key=None), lambda r: f'namespace="{ns}"'.encode() in r.body)
    assert metrics.headers["content-type"].startswith("text/plain")


def test_a_taken_ops_port_stops_startup_naming_the_address(stack: Stack, tmp_path: Path) -> None:
    port, ops_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ops_port))
        taken.listen()
        done = subprocess.run(gateway_cmd(port, ops_port, 1), capture_output=True, text=True, timeout=30, check=False,
                              env=base_env(TURBOPUFFER_API_URL=stack.store.url, TURBOPUFFER_API_KEY="k",
                                           LAYER_DATA_DIR=str(tmp_path)))
    assert done.returncode == 1 and f"127.0.0.1:{ops_port}" in done.stderr, done.stderr


def test_an_admin_key_from_the_environment_is_never_printed(tmp_path: Path) -> None:
    key = "chosen-admin-key-0123456789abcdef"
    port, ops_port = free_ports(2)
    gw = Proc("gateway-embedded-key", gateway_cmd(port, ops_port, 1),
              base_env(LAYER_DATA_DIR=str(tmp_path / "data"), LAYER_GATEWAY_API_KEY=key), f"http://127.0.0.1:{port}",
              "/ready")
    try:
        assert call(gw.url, "GET", "/v1/namespaces", key=key).status == 200
        out = gw.log()
    finally:
        gw.stop()
    assert "admin key chosen… (from LAYER_GATEWAY_API_KEY)" in out, out
    assert key[6:12] not in out, "only the six-character hint is printed"
    assert not (tmp_path / "data" / "admin_key").exists(), "a key from the environment is not written to disk"
