"""Every route the gateway serves x every kind of caller: exact 401/403 where denied, "not 401/403" where allowed.

The route list comes from the gateway's own router table, so a new route cannot escape this test.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from keys_support import STORE_KEY, Stack

from gateway.auth import ADMIN, PUBLIC, READ, WRITE
from gateway.router import build_router

NS = "team-alpha"
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.yaml"), ("POST", "/v2/keys/authenticate")}
PARAM_VALUES = {"ns": NS, "doc_id": "doc-1", "job_id": "job-1", "op_id": "op-1"}
ROUTES = sorted((r.method, r.template, r.route_class) for r in build_router().routes.values())
# caller -> (entitlements or None, expected outcome per route class: "ok" | 401 | 403), for namespace NS
CALLERS = ["none", "malformed", "unknown", "revoked", "expired", "read", "write", "admin", "other_ns", "store_key"]


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAM_VALUES.get(m.group(1), uuid.uuid4().hex), template)


def expected(caller: str, route_class: str, namespaced: bool) -> Any:
    if route_class == PUBLIC:
        return "ok"
    if caller in ("none", "malformed", "unknown", "revoked", "expired"):
        return 401
    if caller in ("admin", "store_key"):
        return "ok"
    if route_class == ADMIN:
        return 403
    if caller == "other_ns":
        return 403 if namespaced else "ok"
    return "ok" if route_class == caller else 403  # read key: read routes only; write key: write routes only


@pytest.fixture(scope="module")
def headers(stack: Stack) -> Iterator[dict[str, str | None]]:
    def minted(name: str, ents: dict[str, Any], expires: str = "365d") -> dict[str, Any]:
        return stack.mint(name, ents, expires)

    expired = minted("short", {"layer": {"scopes": ["read", "write"]}}, "1s")
    revoked = minted("gone", {"layer": {"scopes": ["read", "write"]}})
    stack.admin("POST", f"/v2/keys/{revoked['keyId']}/revoke")
    out: dict[str, str | None] = {
        "none": None,
        "malformed": "Token abc",
        "unknown": "Bearer hvl_" + "A" * 40,
        "revoked": "Bearer " + revoked["token"],
        "expired": "Bearer " + expired["token"],
        "read": "Bearer " + minted("reader", {"vectorstore.default": {"scopes": ["read"], "namespaces": ["team-*"]}})[
            "token"],
        "write": "Bearer " + minted("ingest", {"vectorstore.default": {"scopes": ["write"], "namespaces": [NS]}})[
            "token"],
        "admin": "Bearer " + minted("ops", {"layer": {"scopes": ["admin"]}})["token"],
        "other_ns": "Bearer " + minted("other", {"layer": {"scopes": ["read", "write"], "namespaces": ["other-*"]}})[
            "token"],
        "store_key": "Bearer " + STORE_KEY,
        "probe": minted("probe", {"layer": {"scopes": ["read"]}})["token"],  # the body for authenticate
    }
    deadline = time.monotonic() + 10.0  # the 1s key must be past its expiresAt before the matrix runs
    while stack.call("GET", "/v2/namespaces", authorization=out["expired"])[0] != 401:
        assert time.monotonic() < deadline, "a key minted with expiresAfter=1s never expired"
        time.sleep(0.1)
    yield out


def test_only_operational_routes_and_authenticate_are_public() -> None:
    assert {(m, t) for m, t, c in ROUTES if c == PUBLIC} == PUBLIC_ROUTES
    assert {c for _, _, c in ROUTES} <= {PUBLIC, READ, WRITE, ADMIN}


@pytest.mark.parametrize("caller", CALLERS)
def test_route_matrix(stack: Stack, headers: dict[str, str | None], caller: str) -> None:
    failures = []
    for method, template, route_class in ROUTES:
        path = concrete(template)
        auth = headers[caller]
        body = {} if method in ("POST", "PUT", "PATCH") else None
        if template == "/v2/keys/authenticate":
            body = {"token": headers["probe"]}  # valid: the caller's own header must not matter
        status, data = stack.call(method, path, body=body, authorization=auth)
        want = expected(caller, route_class, "{ns}" in template)
        if want == "ok":
            ok = status not in (401, 403)
        else:
            ok = status == want
            if ok and want == 403:
                ok = isinstance(data, dict) and data.get("error") == "forbidden" and \
                    data.get("required_scope") == route_class
        if ok and template == "/v2/keys/authenticate":
            ok = status == 200
        if not ok:
            failures.append(f"{method} {template} ({route_class}): got {status} {str(data)[:120]}, want {want}")
    assert not failures, f"caller {caller}:\n" + "\n".join(failures)
