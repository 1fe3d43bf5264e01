"""Module-scoped servers for the official-client compatibility suites.

Two targets are exercised by the same scenarios:

- ``store``: the local Turbopuffer-compatible store, reached directly (it accepts any bearer);
- ``gateway``: a keyed local store behind a 2-worker Layer gateway (clients use ``STORE_KEY``).

Processes are started once per test module (not per test) to keep the suite fast; every test
uses its own namespace names, so tests cannot see each other's data.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import turbopuffer
from support.procs import STORE_KEY, Proc, start_gateway, start_localstore

# The official clients refuse to start if a region is set together with a custom base URL.
os.environ.pop("TURBOPUFFER_REGION", None)
os.environ.pop("TURBOPUFFER_BASE_URL", None)

# Fast watcher polls so x-layer-stable-as-of appears quickly after a gateway write.
GATEWAY_ENV = {"CONSISTENCY_POLL_INTERVAL_MS": "100"}


@dataclass(frozen=True)
class Target:
    """One server the official clients are pointed at."""

    name: str
    url: str
    api_key: str
    procs: tuple[Proc, ...]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} log ---\n{p.log()}" for p in self.procs)


def unique_ns(label: str) -> str:
    """A namespace name no other test (or earlier run against the same data dir) uses."""
    return f"compat-{label}-{uuid.uuid4().hex[:10]}"


def _start_store_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    store = start_localstore(tmp_path_factory.mktemp("compat-store"))
    # Any non-empty bearer is accepted by the keyless store.
    return Target("store", store.url, "any-bearer-" + uuid.uuid4().hex[:6], (store,))


def _start_gateway_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    base = tmp_path_factory.mktemp("compat-gw")
    store = start_localstore(base / "store", LOCALSTORE_API_KEY=STORE_KEY)
    try:
        gw = start_gateway(store.url, STORE_KEY, base / "gateway", **GATEWAY_ENV)
    except BaseException:
        store.stop()
        raise
    return Target("gateway", gw.url, STORE_KEY, (gw, store))


def _stop(target: Target) -> None:
    for proc in target.procs:
        proc.stop()


@pytest.fixture(scope="module", params=["store", "gateway"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Parametrized over both targets; pytest groups tests by param so each starts once per module."""
    starter = _start_store_target if request.param == "store" else _start_gateway_target
    t = starter(tmp_path_factory)
    yield t
    _stop(t)


@pytest.fixture(scope="module")
def gateway_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Only the gateway stack (for the Layer-specific and TypeScript suites)."""
    t = _start_gateway_target(tmp_path_factory)
    yield t
    _stop(t)


@pytest.fixture
def tpuf(target: Target) -> Iterator[turbopuffer.Turbopuffer]:
    """The official 3.1.0 client pointed at the target (region unset, no retries so failures stay visible)."""
    client = turbopuffer.Turbopuffer(api_key=target.api_key, base_url=target.url, max_retries=0, timeout=20.0)
    yield client
    client.close()


def f32(x: float) -> float:
    """What live Turbopuffer prints for a float32 value: the shortest decimal that round-trips as float32."""
    return float(str(np.float32(x)))


def is_f32_shortest(x: float) -> bool:
    return f32(x) == x


def raw(
    target: Target, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One plain HTTP call (no client library): (status, lower-cased headers, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Authorization": f"Bearer {target.api_key}", **(headers or {})}
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(target.url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            status, rh, text = resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        status, rh, text = e.code, dict(e.headers), e.read().decode()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return status, {k.lower(): v for k, v in rh.items()}, parsed
