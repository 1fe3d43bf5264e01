"""Derive-from-request mode (no TURBOPUFFER_API_KEY): what the gateway can answer from its own state (cache hits, warm
jobs) reaches only a bearer that upstream has accepted for that namespace; anyone else gets upstream's own answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import KEY, Reply, Stack, call, wait_until
from support.procs import Proc, start_gateway, start_localstore

WRONG = "not-the-store-key"


def _derive_stack(tmp: Path, **env: str) -> Iterator[Stack]:
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=KEY)
    gw: Proc | None = None
    try:  # one worker: verdicts are per worker, and these tests follow one verdict's life
        gw = start_gateway(store.url, "", tmp / "gw", workers=1, **env)
        yield Stack(gw, store)
    finally:
        if gw is not None:
            gw.stop()
        store.stop()


@pytest.fixture(scope="module")
def derive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _derive_stack(tmp_path_factory.mktemp("verdicts"), LAYER_AUTH_VERDICT_TTL_S="60")


def _seeded(stack: Stack) -> str:
    """A namespace with document `a`, written straight to the store (so the gateway never watches it) and then
    fetched through the gateway until the cache serves it."""
    ns = f"v{uuid.uuid4().hex[:8]}"
    assert call(stack.store.url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "a", "v": 1}]}).status == 200
    wait_until(lambda: fetch(stack, ns), lambda r: r.status == 200 and r.headers.get("x-layer-cache") == "hit")
    return ns


def fetch(stack: Stack, ns: str, key: str = KEY) -> Reply:
    return stack("GET", f"/v2/namespaces/{ns}/documents/a", key=key)


def test_a_wrong_key_gets_upstreams_answer_never_a_cached_document_or_a_warm_job(derive: Stack) -> None:
    ns = _seeded(derive)
    job = derive("POST", f"/v2/namespaces/{ns}/warm?page_size=10")
    assert job.status == 202, job
    upstream = call(derive.store.url, "GET", f"/v2/namespaces/{ns}/metadata", key=WRONG)
    assert upstream.status == 403
    for method, path, body in [
        ("GET", f"/v2/namespaces/{ns}/documents/a", None),
        ("POST", f"/v2/namespaces/{ns}/documents", {"ids": ["a"]}),
        ("POST", f"/v2/namespaces/{ns}/warm", None),
        ("GET", f"/v2/namespaces/{ns}/warm-jobs", None),
        ("GET", f"/v2/namespaces/{ns}/warm-jobs/{job.json()['id']}", None),
        ("GET", f"/v1/namespaces/{ns}/hint_cache_warm?turbopuffer=false&documents=true", None),
    ]:
        r = derive(method, path, body, key=WRONG)
        assert (r.status, r.body) == (upstream.status, upstream.body), (method, path, r)
        assert "x-layer-cache" not in r.headers
    assert fetch(derive, ns).headers.get("x-layer-cache") == "hit", "the right key is still served from the cache"
    assert [j["id"] for j in derive("GET", f"/v2/namespaces/{ns}/warm-jobs").json()["warm_jobs"]] == [job.json()["id"]]


def test_a_403_from_upstream_drops_the_verdict(derive: Stack) -> None:
    ns = _seeded(derive)
    derive.fault(route="query", status=403, count=1, namespace=ns)
    assert derive("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"]}).status == 403
    # The verdict for (key, ns) is gone, so the next cache hit asks upstream again: now it says no.
    derive.fault(route="metadata", status=403, count=1, namespace=ns)
    denied = fetch(derive, ns)
    assert (denied.status, denied.json()) == (403, {"status": "error", "error": "injected fault"}), denied
    assert fetch(derive, ns).headers.get("x-layer-cache") == "hit", "accepted again once upstream accepts"


def test_a_fresh_verdict_answers_hits_without_asking_upstream(derive: Stack) -> None:
    ns = _seeded(derive)
    derive.fault(route="metadata", status=403, count=1, namespace=ns)
    for _ in range(5):
        assert fetch(derive, ns).headers.get("x-layer-cache") == "hit"
    assert [f["remaining"] for f in derive.faults()["faults"]] == [1], "no upstream check within the lifetime"


def test_a_verdict_expires_after_its_lifetime(tmp_path: Path) -> None:
    for stack in _derive_stack(tmp_path, LAYER_AUTH_VERDICT_TTL_S="1"):
        ns = _seeded(stack)
        stack.fault(route="metadata", status=403, namespace=ns)  # from now on upstream refuses the key
        wait_until(lambda: fetch(stack, ns), lambda r: r.status == 403, timeout=10)  # noqa: B023 - used at once
