"""Helpers for the gateway tests: HTTP calls, fault control, bounded polling, and stack start-up."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.procs import Proc, start_gateway, start_localstore

KEY = "gw-test-key"
FAST_WATCH = {"CONSISTENCY_POLL_INTERVAL_MS": "100", "CONSISTENCY_SAFETY_MARGIN_MS": "50"}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def call(base: str, method: str, path: str, body: Any = None, key: str | None = KEY,
         headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 15.0) -> Reply:
    h = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def gz(obj: Any) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


class Stack:
    def __init__(self, gw: Proc, store: Proc) -> None:
        self.gw, self.store = gw, store

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return call(self.gw.url, method, path, body, **kw)

    def fault(self, **rule: Any) -> None:
        assert call(self.store.url, "POST", "/_localstore/faults", rule).status == 200

    def clear_faults(self) -> None:
        call(self.store.url, "DELETE", "/_localstore/faults")

    def faults(self) -> Any:
        return call(self.store.url, "GET", "/_localstore/faults").json()

    def received(self, bearer: str) -> int:
        """How many requests the store received with this bearer (whatever it answered)."""
        counts = call(self.store.url, "GET", "/_localstore/received").json()["by_bearer_sha256"]
        return int(counts.get(hashlib.sha256(bearer.encode()).hexdigest(), 0))


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_until(fetch: Any, ok: Any, timeout: float = 10.0) -> Any:
    """Repeat `fetch()` until `ok(result)`; return that result."""
    box: list[Any] = []

    def attempt() -> bool:
        box[:] = [fetch()]
        return bool(ok(box[0]))

    wait_for(attempt, timeout)
    return box[0]


def _stack(tmp: Path, store_env: dict[str, str], gw_env: dict[str, str], workers: int = 2) -> Iterator[Stack]:
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=KEY, **store_env)
    try:
        gw = start_gateway(store.url, KEY, tmp / "gw", workers=workers, **gw_env)
    except Exception:
        store.stop()
        raise
    stack = Stack(gw, store)
    yield stack
    gw.stop()
    store.stop()


def derive_stack(tmp: Path, workers: int = 1, store_env: dict[str, str] | None = None, **gw_env: str) -> Iterator[Stack]:
    """A gateway in derive-from-request mode (no TURBOPUFFER_API_KEY: each caller's bearer goes upstream) in front of
    a store that accepts KEY (and the keys of `store_env`)."""
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=KEY, **(store_env or {}))
    gw: Proc | None = None
    try:
        gw = start_gateway(store.url, "", tmp / "gw", workers=workers, **gw_env)
        yield Stack(gw, store)
    finally:
        if gw is not None:
            gw.stop()
        store.stop()
