"""Helpers of the key tests (a module of its own: test modules import it, never a conftest)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.aerospike import AerospikeServer
from support.procs import start_gateway, start_localstore


def aerospike_env(server: AerospikeServer) -> dict[str, str]:
    return {"AEROSPIKE_HOSTS": server.hosts_env, "AEROSPIKE_KEYS_NAMESPACE": "layer_keys"}


# ---- a real stack: local store + 2-worker gateway, shared by a module's tests ----

STORE_KEY = "keys-test-store-key"


class Stack:
    def __init__(self, gateway: Any, store: Any) -> None:
        self.gateway, self.store = gateway, store
        self.url: str = gateway.url

    def call(self, method: str, path: str, *, token: str | None = None, body: Any = None,
             authorization: str | None = None) -> tuple[int, Any]:
        return call(self.url, method, path, token=token, body=body, authorization=authorization)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, token=STORE_KEY, body=body)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    def mint(self, name: str, entitlements: dict[str, Any], expires_after: str = "365d") -> dict[str, Any]:
        return self.admin("POST", "/v2/keys", {"name": name, "entitlements": entitlements,
                                                "expiresAfter": expires_after})  # type: ignore[no-any-return]


def call(base: str, method: str, path: str, *, token: str | None = None, body: Any = None,
         authorization: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if authorization is not None:
        req.add_header("Authorization", authorization)
    elif token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def start_stack(tmp: Path, **env: str) -> Stack:
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=STORE_KEY)
    try:
        gateway = start_gateway(store.url, STORE_KEY, tmp / "gateway", workers=2, **env)
    except BaseException:
        store.stop()
        raise
    return Stack(gateway, store)


def stop_stack(stack: Stack) -> None:
    try:
        stack.gateway.stop()
    finally:
        stack.store.stop()
