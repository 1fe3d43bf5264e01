"""Upstream errors keep their meaning: status, body and retry-after are relayed, never replaced or turned into 502."""

from __future__ import annotations

import pytest
from gw_support import Stack, call

NS = "relayed"  # written straight to the store: the gateway's watcher never polls it (and eats no fault)


@pytest.mark.parametrize("status", [429, 403, 404])
def test_hint_cache_warm_relays_upstreams_answer(stack: Stack, status: int) -> None:
    assert call(stack.store.url, "POST", f"/v2/namespaces/{NS}", {"upsert_rows": [{"id": 1}]}).status == 200
    stack.fault(route="hint_cache_warm", status=status, count=1, namespace=NS)
    r = stack("GET", f"/v1/namespaces/{NS}/hint_cache_warm?documents=false&snapshots=false")
    assert (r.status, r.json()) == (status, {"status": "error", "error": "injected fault"}), r
    assert (r.headers.get("retry-after") == "0") == (status == 429)


def test_metadata_errors_are_relayed_verbatim(stack: Stack) -> None:
    missing = stack("GET", "/v2/namespaces/relayed-missing/metadata")
    direct = call(stack.store.url, "GET", "/v2/namespaces/relayed-missing/metadata")
    assert (missing.status, missing.body, missing.headers["content-type"]) == (404, direct.body, "application/json")
    stack.fault(route="metadata", status=429, count=1, namespace=NS)
    r = stack("GET", f"/v2/namespaces/{NS}/metadata")
    assert (r.status, r.headers.get("retry-after"), r.json()["error"]) == (429, "0", "injected fault")


@pytest.mark.parametrize(("route", "path", "body"), [
    ("explain_query", f"/v2/namespaces/{NS}/explain_query", {"rank_by": ["id", "asc"], "top_k": 1}),
    ("recall", f"/v1/namespaces/{NS}/_debug/recall", {"num": 1, "top_k": 1}),
])
def test_read_only_posts_get_the_one_429_retry_of_queries(stack: Stack, route: str, path: str,
                                                          body: dict[str, object]) -> None:
    assert call(stack.store.url, "POST", f"/v2/namespaces/{NS}", {"upsert_rows": [{"id": 1}]}).status == 200
    direct = call(stack.store.url, "POST", path, body)
    assert direct.status == 200, direct
    stack.fault(route=route, status=429, count=1, namespace=NS)
    r = stack("POST", path, body)
    assert (r.status, r.json()) == (200, direct.json()), "one 429 absorbed by the retry"
    assert stack.faults() == {"faults": []}
    stack.fault(route=route, status=429, count=2, namespace=NS)
    r = stack("POST", path, body)
    assert (r.status, r.headers.get("retry-after"), r.json()["error"]) == (429, "0", "injected fault")
    assert stack.faults() == {"faults": []}, "exactly two attempts"
