"""Every namespace a request names is authorized: a write that copies or branches from a source namespace needs read
on the source too, whatever form the body gives it (string, object, escaped key, the /async start-copy route)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest
from keys_support import STORE_KEY, Stack, call

SECRET = "hr-salaries"


@pytest.fixture(scope="module")
def team_a(stack: Stack) -> str:
    """A key with read+write on team-a-* only; the store also holds a namespace it must never read."""
    stack.admin("POST", f"/v2/namespaces/{SECRET}", {"upsert_rows": [{"id": 1, "salary": 250_000}]})
    return stack.mint("team-a", {"vectorstore.default": {"scopes": ["read", "write"],  # type: ignore[no-any-return]
                                                         "namespaces": ["team-a-*"]}})["token"]


def _raw_write(stack: Stack, path: str, raw: bytes, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(stack.url + path, data=raw, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("raw", [
    b'{"copy_from_namespace": "hr-salaries"}',
    b'{"copy_from_namespace": {"source_namespace": "hr-salaries"}}',
    b'{"branch_from_namespace": "hr-salaries"}',
    b'{"branch_from_namespace": {"source_namespace": "hr-salaries"}}',
    b'{"copy\\u005ffrom_namespace": "hr-salaries"}',  # an escaped key decodes to the same field
    b'{"upsert_rows": [{"id": 9}], "copy_from_namespace": "hr-salaries"}',
], ids=["copy", "copy-object", "branch", "branch-object", "escaped-key", "with-rows"])
@pytest.mark.parametrize("route", ["", "/async"])
def test_a_copy_source_needs_read_on_it(stack: Stack, team_a: str, raw: bytes, route: str) -> None:
    loot = f"team-a-loot-{uuid.uuid4().hex[:6]}"
    status, body = _raw_write(stack, f"/v2/namespaces/{loot}{route}", raw, team_a)
    assert status == 403, body
    err = json.loads(body)
    assert err["required_scope"] == "read" and f"'{SECRET}'" in err["message"]
    listed = stack.admin("GET", f"/v1/namespaces?prefix={loot}")["namespaces"]
    assert listed == [], "nothing reached upstream"


def test_duplicate_source_keys_are_refused(stack: Stack, team_a: str) -> None:
    """Parsers disagree on which of two equal keys wins, so a body naming a source twice is not forwarded."""
    for raw in (b'{"copy_from_namespace": "hr-salaries", "copy_from_namespace": "team-a-src"}',
                b'{"copy_from_namespace": {"source_namespace": "hr-salaries", "source_namespace": "team-a-src"}}'):
        status, body = _raw_write(stack, "/v2/namespaces/team-a-dup", raw, team_a)
        assert status == 400 and b"duplicate key `" in body, (status, body)
        assert stack.admin("GET", "/v1/namespaces?prefix=team-a-dup")["namespaces"] == []


def test_a_source_the_gateway_cannot_read_is_refused(stack: Stack, team_a: str) -> None:
    """Turbopuffer's serde would take `["hr-salaries"]` for the object form; the gateway cannot check it: 422."""
    status, body = _raw_write(stack, "/v2/namespaces/team-a-arr", b'{"copy_from_namespace": ["hr-salaries"]}', team_a)
    assert status == 422 and b"copy_from_namespace" in body, (status, body)
    assert stack.admin("GET", "/v1/namespaces?prefix=team-a-arr")["namespaces"] == []


def test_a_copy_within_the_grant_works(stack: Stack, team_a: str) -> None:
    src, dst = f"team-a-src-{uuid.uuid4().hex[:6]}", f"team-a-dst-{uuid.uuid4().hex[:6]}"
    assert stack.call("POST", f"/v2/namespaces/{src}", token=team_a, body={"upsert_rows": [{"id": 1, "k": "v"}]})[0] \
        == 200
    status, body = stack.call("POST", f"/v2/namespaces/{dst}", token=team_a, body={"copy_from_namespace": src})
    assert status == 200, body
    rows = stack.call("POST", f"/v2/namespaces/{dst}/query", token=team_a,
                      body={"rank_by": ["id", "asc"], "include_attributes": ["k"]})[1]["rows"]
    assert rows == [{"id": 1, "k": "v"}]
    # The store key (admin) may copy anything.
    status, _ = call(stack.url, "POST", f"/v2/namespaces/admin-copy-{uuid.uuid4().hex[:6]}", token=STORE_KEY,
                     body={"copy_from_namespace": SECRET})
    assert status == 200
