"""Derive-from-request mode (no TURBOPUFFER_API_KEY): what the gateway can answer from its own state (cache hits, warm
jobs) reaches only a bearer that upstream has accepted for that namespace; anyone else gets upstream's own answer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from gw_support import KEY, Reply, Stack, call, derive_stack, wait_for, wait_until

from gateway.config import load_config
from gateway.keys.service import KeyService

WRONG = "not-the-store-key"


def _derive_stack(tmp: Path, **env: str) -> Iterator[Stack]:
    yield from derive_stack(tmp, workers=1, **env)  # one worker: verdicts are per worker; these follow one's life


@pytest.fixture(scope="module")
def derive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verdicts")


@pytest.fixture(scope="module")
def minted(derive_dir: Path) -> str:
    """A real scoped key in the derive gateway's key store (put there before it starts): what would it act with?"""
    async def mint() -> str:
        service = KeyService.from_settings(str(derive_dir / "gw"), load_config({}).keys)
        try:
            body = {"name": "reader", "entitlements": {"vectorstore.default": {"scopes": ["read", "write"]}}}
            return (await service.mint(json.dumps(body).encode())).token
        finally:
            await service.close()

    (derive_dir / "gw").mkdir()
    return asyncio.run(mint())


@pytest.fixture(scope="module")
def derive(derive_dir: Path, minted: str) -> Iterator[Stack]:
    yield from _derive_stack(derive_dir, LAYER_AUTH_VERDICT_TTL_S="60")


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


def _served(stack: Stack, ns: str, doc_id: str = "a") -> tuple[int, dict[str, object] | None]:
    r = stack("GET", f"/v2/namespaces/{ns}/documents/{doc_id}")
    attrs = r.json()["attributes"] if r.status == 200 else None
    return r.status, None if attrs is None else {k: v for k, v in attrs.items() if k != "_hevlayer_upserted_at"}


def test_a_write_upstream_refuses_never_makes_a_document_servable(derive: Stack) -> None:
    """The gateway cannot judge the bearer of a write in this mode, and the cache is touched before upstream answers.
    With fences nothing of the write is stored before upstream's 2xx: a refused write leaves the cache as it was,
    while upstream holds it (refused at once: a wrong key) and while the refusal is still on its way."""
    ns = _seeded(derive)
    writes = [{"upsert_rows": [{"id": "a", "v": 2}, {"id": "new", "v": 2}]},
              {"patch_rows": [{"id": "a", "w": 2}]}, {"deletes": ["a"]}]
    for body in writes:
        assert derive("POST", f"/v2/namespaces/{ns}", body, key=WRONG).status == 403
        assert _served(derive, ns) == (200, {"v": 1}), body
        assert fetch(derive, ns).headers.get("x-layer-cache") == "hit", "the refused write restored the cached copy"
        assert _served(derive, ns, "new") == (404, None)
    for body in writes:  # upstream holds the write for a second, then refuses it (as it refuses a key)
        derive.fault(route="write", namespace=ns, delay_ms=1000, status=403, count=1)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(derive, "POST", f"/v2/namespaces/{ns}", body)
            wait_for(lambda: all(f["namespace"] != ns for f in derive.faults()["faults"]))  # inside upstream now
            during = [_served(derive, ns) for _ in range(3)] + [_served(derive, ns, "new")]
            assert pending.result().status == 403
        assert during == [(200, {"v": 1})] * 3 + [(404, None)], body
        assert _served(derive, ns) == (200, {"v": 1}) and _served(derive, ns, "new") == (404, None)
    assert call(derive.store.url, "POST", f"/v2/namespaces/{ns}/query",
                {"rank_by": ["id", "asc"], "include_attributes": ["v"]}).json()["rows"] == [{"id": "a", "v": 1}]


def test_scoped_keys_are_refused_without_a_store_key_and_never_reach_upstream(derive: Stack, minted: str) -> None:
    """No TURBOPUFFER_API_KEY: a minted key would have no upstream key to act with. Its bearer is refused with 401
    before anything is sent, and the key routes say that scoped keys need the store key."""
    ns = _seeded(derive)
    for method, path, body in [
        ("GET", f"/v2/namespaces/{ns}/metadata", None),
        ("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"]}),
        ("GET", f"/v2/namespaces/{ns}/documents/a", None),
        ("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "b"}]}),
        ("POST", f"/v2/namespaces/{ns}/explain_query", {"rank_by": ["id", "asc"]}),
        ("GET", "/v2/namespaces", None),
        ("DELETE", f"/v2/namespaces/{ns}", None),
    ]:
        r = derive(method, path, body, key=minted)
        assert r.status == 401 and r.json()["error"] == "scoped_keys_need_store_key", (method, path, r)
        assert "TURBOPUFFER_API_KEY" in r.json()["message"]
    mint = {"name": "x", "entitlements": {"vectorstore.default": {"scopes": ["read"]}}}
    for key in (KEY, minted):
        for method, path, body in [("POST", "/v2/keys", mint), ("GET", "/v2/keys", None)]:
            r = derive(method, path, body, key=key)
            assert r.status == 409 and r.json()["error"] == "scoped_keys_need_store_key", (key, method, path, r)
            assert "TURBOPUFFER_API_KEY" in r.json()["message"]
    assert derive.received(minted) == 0, "the scoped key never went upstream"
    assert fetch(derive, ns).status == 200 and derive.received(KEY) > 0, "the store counts what it receives"


def test_a_refused_bearer_leaves_no_state_in_the_cache(derive: Stack, derive_dir: Path) -> None:
    """Writes, copies and deletes with a key upstream refuses touch no namespace's cache (they have no identity to
    touch, gateway/cache/partition.py): a wrong key cannot grow the cache with fences, however many ids it names."""
    ns = _seeded(derive)
    ids = [f"x{i}" for i in range(300)]
    for target in (ns, f"{ns}-never"):
        for body in [{"upsert_rows": [{"id": i, "v": 0} for i in ids]}, {"patch_rows": [{"id": i} for i in ids]},
                     {"deletes": ids}, {"delete_by_filter": ["v", "Eq", 1]}, {"copy_from_namespace": ns}]:
            assert derive("POST", f"/v2/namespaces/{target}", body, key=WRONG).status == 403, (target, body)
        assert derive("DELETE", f"/v2/namespaces/{target}", key=WRONG).status == 403
    with closing(sqlite3.connect(f"file:{derive_dir / 'gw' / 'cache.sqlite3'}?mode=ro", uri=True)) as db:
        docs = db.execute("select id from docs where ns like ?", (f"{ns}%",)).fetchall()
    assert docs == [("a",)], "only the document the right key cached"
    assert fetch(derive, ns).headers.get("x-layer-cache") == "hit"
