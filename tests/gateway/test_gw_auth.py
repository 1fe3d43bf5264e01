"""Auth: the route-class table, authorize(), and derive-from-request mode through real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import KEY, Stack, call, wait_until
from support.procs import Proc, start_gateway, start_localstore

from gateway.auth import ADMIN, PUBLIC, READ, ROUTE_CLASSES, WRITE, Grant, Principal, authorize
from gateway.http import GatewayError
from gateway.router import build_router

INGEST = Principal(name="ingest", key_id="k1", admin=False,
                   grants=(Grant(frozenset({WRITE}), ("cohort-*",)), Grant(frozenset({READ}), ("shared",))))


def test_every_served_route_has_a_class_and_public_routes_are_few() -> None:
    router = build_router()
    assert set(router.routes) <= set(ROUTE_CLASSES)
    public = {key for key, cls in ROUTE_CLASSES.items() if cls == PUBLIC}
    assert public == {("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.yaml"), ("POST", "/v2/keys/authenticate")}
    assert ROUTE_CLASSES[("POST", "/v2/namespaces/{ns}/documents")] == READ
    assert all(cls == ADMIN for (m, t), cls in ROUTE_CLASSES.items() if t.startswith("/v2/keys") and
               t != "/v2/keys/authenticate")


@pytest.mark.parametrize(("route_class", "ns", "allowed"), [
    (WRITE, "cohort-a", True), (WRITE, "shared", False), (READ, "shared", True), (READ, "cohort-a", False),
    (ADMIN, None, False), (READ, None, True), (PUBLIC, "x", True),
])
def test_authorize_scopes_and_globs(route_class: str, ns: str | None, allowed: bool) -> None:
    if allowed:
        authorize(INGEST, route_class, ns)
        return
    with pytest.raises(GatewayError, match=f"key 'ingest' has no {route_class} scope") as exc:
        authorize(INGEST, route_class, ns)
    assert exc.value.status == 403 and exc.value.extra == {"required_scope": route_class}
    if ns is not None:
        assert f"on namespace '{ns}'" in exc.value.message


@pytest.fixture(scope="module")
def derive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """TURBOPUFFER_API_KEY unset: the caller's bearer is the upstream key."""
    tmp = Path(tmp_path_factory.mktemp("derive"))
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=KEY)
    gw: Proc | None = None
    try:
        gw = start_gateway(store.url, "", tmp / "gw", CONSISTENCY_POLL_INTERVAL_MS="100")
        yield Stack(gw, store)
    finally:
        if gw is not None:
            gw.stop()
        store.stop()


def test_derive_mode_forwards_the_callers_bearer(derive: Stack) -> None:
    r = derive("POST", "/v2/namespaces/d1", {"upsert_rows": [{"id": 1}]}, key="not-the-store-key")
    assert r.status == 403 and r.json()["status"] == "error", "the store's own answer, relayed"
    assert derive("POST", "/v2/namespaces/d1", {"upsert_rows": [{"id": 1}]}).status == 200
    # The watcher polls with the last caller key that worked, so stable reads get a watermark.
    r = wait_until(lambda: call(derive.gw.url, "POST", "/v2/namespaces/d1/query", {"rank_by": ["id", "asc"]}),
                   lambda r: "x-layer-stable-as-of" in r.headers, timeout=5)
    assert [row["id"] for row in r.json()["rows"]] == [1]
    r = derive("GET", "/v2/keys", key="anything")
    assert r.status == 409 and r.json()["error"] == "scoped_keys_need_store_key", "no scoped keys without a store key"
