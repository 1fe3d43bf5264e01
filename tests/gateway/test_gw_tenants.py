"""Derive-from-request mode with two organisations behind one gateway: Turbopuffer namespaces live per organisation,
so each may own a namespace of the same name. The cache, warm jobs and write fences of one are never the other's,
nor those of a namespace deleted and created again under the same name (gateway/cache/partition.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_support import FAST_WATCH, KEY, Reply, Stack, call, derive_stack, wait_for, wait_until

ORG_A, ORG_B = "org-a-key", "org-b-key"


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from derive_stack(tmp_path_factory.mktemp("tenants"), workers=2,
                            store_env={"LOCALSTORE_API_KEYS": f"{ORG_A}=org-a,{ORG_B}=org-b"},
                            LAYER_AUTH_VERDICT_TTL_S="60")


def _put(stack: Stack, key: str, ns: str, rows: list[dict[str, Any]]) -> None:
    """Straight to the store (the gateway learns nothing of it)."""
    assert call(stack.store.url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows}, key=key).status == 200


def _get(stack: Stack, key: str, ns: str) -> Reply:
    return stack("GET", f"/v2/namespaces/{ns}/documents/a", key=key)


def _attrs(r: Reply) -> dict[str, Any]:
    assert r.status == 200, r
    return {k: v for k, v in r.json()["attributes"].items() if not k.startswith("_hevlayer_")}


def _cached(stack: Stack, key: str, ns: str) -> Reply:
    return wait_until(lambda: _get(stack, key, ns), lambda r: r.headers.get("x-layer-cache") == "hit")


def test_two_orgs_with_one_namespace_name_never_share_cached_documents_jobs_or_fences(orgs: Stack) -> None:
    ns = f"t{uuid.uuid4().hex[:8]}"
    _put(orgs, ORG_A, ns, [{"id": "a", "who": "a"}])
    assert _attrs(_cached(orgs, ORG_A, ns)) == {"who": "a"}
    missing = _get(orgs, ORG_B, ns)
    assert missing.status == 404 and "x-layer-cache" not in missing.headers, "org b has no such namespace yet"

    _put(orgs, ORG_B, ns, [{"id": "a", "who": "b"}])
    served = [_get(orgs, ORG_B, ns) for _ in range(10)]
    assert [_attrs(r) for r in served] == [{"who": "b"}] * 10, "org b's own document, never org a's cached one"
    assert served[-1].headers["x-layer-cache"] == "hit", "org b has a cache of its own"
    batch = orgs("POST", f"/v2/namespaces/{ns}/documents", {"ids": ["a"]}, key=ORG_B).json()
    assert [d["attributes"]["who"] for d in batch["documents"]] == ["b"]
    assert _attrs(_cached(orgs, ORG_A, ns)) == {"who": "a"}

    job = orgs("POST", f"/v2/namespaces/{ns}/warm?page_size=10", key=ORG_A)
    assert job.status == 202 and job.json()["namespace"] == ns, job
    assert orgs("GET", f"/v2/namespaces/{ns}/warm-jobs", key=ORG_B).json() == {"warm_jobs": []}
    assert orgs("GET", f"/v2/namespaces/{ns}/warm-jobs/{job.json()['id']}", key=ORG_B).status == 404
    listed = orgs("GET", f"/v2/namespaces/{ns}/warm-jobs", key=ORG_A).json()["warm_jobs"]
    assert [(j["id"], j["namespace"]) for j in listed] == [(job.json()["id"], ns)]

    # Writes through the gateway fence and mirror the writer's namespace only.
    write = {"upsert_rows": [{"id": "a", "who": "b2"}]}
    assert orgs("POST", f"/v2/namespaces/{ns}", write, key=ORG_B).status == 200
    assert [_attrs(_get(orgs, ORG_B, ns)) for _ in range(4)] == [{"who": "b2"}] * 4
    assert _attrs(_cached(orgs, ORG_A, ns)) == {"who": "a"}

    # Org b deletes its namespace and creates it again: org a's cache stays, org b never sees its old documents.
    assert orgs("DELETE", f"/v2/namespaces/{ns}", key=ORG_B).status == 200
    assert _get(orgs, ORG_B, ns).status == 404
    assert _attrs(_cached(orgs, ORG_A, ns)) == {"who": "a"}
    _put(orgs, ORG_B, ns, [{"id": "a", "who": "b3"}])
    assert [_attrs(_get(orgs, ORG_B, ns)) for _ in range(6)] == [{"who": "b3"}] * 6


def test_a_namespace_created_through_the_gateway_is_fenced_from_its_first_write(orgs: Stack) -> None:
    """The first write creates the namespace: it had no identity to fence, so the cache starts a new epoch after it
    (an older fill cannot land); the write's own rows are then served like any."""
    ns = f"t{uuid.uuid4().hex[:8]}"
    assert orgs("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "a", "v": 1}]}, key=ORG_A).status == 200
    assert _attrs(_cached(orgs, ORG_A, ns)) == {"v": 1}
    assert orgs("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "a", "v": 2}]}, key=ORG_A).status == 200
    assert [_attrs(_get(orgs, ORG_A, ns)) for _ in range(4)] == [{"v": 2}] * 4
    assert _get(orgs, ORG_B, ns).status == 404


def test_a_namespace_deleted_and_created_again_outside_the_gateway_never_serves_its_old_documents(
        tmp_path: Path) -> None:
    """Deleted and created again straight at the store, which the gateway cannot see: once the verdicts it holds
    have expired (LAYER_AUTH_VERDICT_TTL_S), the new namespace is another identity, with a cache of its own."""
    for stack in derive_stack(tmp_path, LAYER_AUTH_VERDICT_TTL_S="1"):
        ns = f"t{uuid.uuid4().hex[:8]}"
        _put(stack, KEY, ns, [{"id": "a", "v": 1}])
        assert _attrs(_cached(stack, KEY, ns)) == {"v": 1}
        assert call(stack.store.url, "DELETE", f"/v2/namespaces/{ns}").status == 200
        _put(stack, KEY, ns, [{"id": "a", "v": 2}])
        wait_until(lambda: _get(stack, KEY, ns), lambda r: _attrs(r) == {"v": 2})  # noqa: B023 - used at once
        assert [_attrs(_get(stack, KEY, ns)) for _ in range(6)] == [{"v": 2}] * 6
        assert _attrs(_cached(stack, KEY, ns)) == {"v": 2}


def test_the_query_result_cache_keeps_each_orgs_namespace_apart(tmp_path: Path) -> None:
    """LAYER_RESULT_CACHE in derive mode: an identical query on another organisation's namespace of the same name
    is answered from that namespace (its own miss, then its own hits), never from the first one's cached answer."""
    env = {"LAYER_RESULT_CACHE": "on", "CONSISTENCY_POLL_INTERVAL_MS": "100",
           "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "400", "CONSISTENCY_SAFETY_MARGIN_MS": "50"}
    for stack in derive_stack(tmp_path, store_env={"LOCALSTORE_API_KEYS": f"{ORG_A}=org-a,{ORG_B}=org-b"}, **env):
        ns, query = f"t{uuid.uuid4().hex[:8]}", {"rank_by": ["id", "asc"], "top_k": 10}
        _put(stack, ORG_A, ns, [{"id": 1}])
        _put(stack, ORG_B, ns, [{"id": 2}])

        def ask(key: str) -> Reply:
            return stack("POST", f"/v2/namespaces/{ns}/query", query, key=key)  # noqa: B023 - used at once

        def rows(r: Reply) -> list[int]:
            assert r.status == 200, r
            return [row["id"] for row in r.json()["rows"]]

        assert rows(wait_until(lambda: ask(ORG_A), lambda r: r.headers.get("x-layer-cache") == "hit")) == [1]
        assert [rows(ask(ORG_B)) for _ in range(5)] == [[2]] * 5
        assert rows(wait_until(lambda: ask(ORG_B), lambda r: r.headers.get("x-layer-cache") == "hit")) == [2]
        assert rows(ask(ORG_A)) == [1]
        assert ask("wrong-key").status == 403


def test_one_orgs_writes_and_polls_never_decide_another_orgs_stable_reads(tmp_path: Path) -> None:
    """Watch state (status, watermark, fences) is kept per namespace identity, like the cache: org a's write fences
    org a's namespace only, and polls made with org a's key never judge org b's namespace of the same name. The
    store indexes LAG_MS after a write, so each step below runs while the write it follows is unindexed."""
    lag_ms = 8000
    store_env = {"LOCALSTORE_API_KEYS": f"{ORG_A}=org-a,{ORG_B}=org-b", "LOCALSTORE_INDEX_LAG_MS": str(lag_ms)}
    env = {**FAST_WATCH, "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "100", "LAYER_AUTH_VERDICT_TTL_S": "60"}
    for stack in derive_stack(tmp_path, workers=2, store_env=store_env, **env):
        ns, query = f"t{uuid.uuid4().hex[:8]}", {"rank_by": ["id", "asc"], "top_k": 10}

        def write(key: str, i: int) -> None:
            body = {"upsert_rows": [{"id": i}]}
            assert stack("POST", f"/v2/namespaces/{ns}", body, key=key).status == 200  # noqa: B023 - used at once

        def ask(key: str) -> Reply:
            r = stack("POST", f"/v2/namespaces/{ns}/query", query, key=key)  # noqa: B023 - used at once
            assert r.status == 200, r
            return r

        def store_status(key: str) -> str:
            return call(stack.store.url, "GET", f"/v2/namespaces/{ns}/metadata", key=key).json()["index"]["status"]  # noqa: B023

        def stable(key: str) -> None:  # (a watermark is known: the first write made the namespace)
            wait_for(lambda: store_status(key) == "up-to-date", timeout=lag_ms / 1000 + 10)
            wait_for(lambda: all(stack("GET", f"/v2/namespaces/{ns}/metadata", key=key).json()["layer"]["is_stable"]  # noqa: B023
                                 for _ in range(10)), timeout=10)

        write(ORG_A, 1)
        write(ORG_B, 2)
        stable(ORG_A)
        stable(ORG_B)

        write(ORG_A, 3)  # fences org a's namespace
        wait_until(lambda: ask(ORG_A), lambda r: r.headers.get("x-layer-watermark-applied"))  # every worker's
        for r in [ask(ORG_B) for _ in range(10)]:
            assert "x-layer-watermark-applied" not in r.headers, "org a's write fenced org b's namespace"
            assert [row["id"] for row in r.json()["rows"]] == [2]
        assert store_status(ORG_A) == "updating"

        write(ORG_B, 4)  # org b's namespace is updating now; org a's keeps being polled and queried meanwhile
        for _ in range(10):
            ask(ORG_A)
            time.sleep(0.1)
        r = ask(ORG_B)
        assert r.headers.get("x-layer-watermark-applied") == "true", "a poll of org a's namespace judged org b's"
        assert [row["id"] for row in r.json()["rows"]] == [2]
        assert store_status(ORG_B) == "updating"
