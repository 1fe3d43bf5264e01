"""One behaviour suite for both cache backends (embedded SQLite and Aerospike through the official client)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cache import CacheDoc, DocumentCache, WarmJob
from gateway.cache.base import pack_vector

from .conftest import MAX_RECORD, run_with

ROOT = Path(__file__).resolve().parents[2]


def job(job_id: str, ns: str, status: str = "running", created_at: str = "2026-01-01T00:00:00Z",
        **extra: object) -> WarmJob:
    fields: dict[str, object] = {"progress": 0.0, "documents_scanned": 0, **extra}
    return WarmJob(id=job_id, namespace=ns, status=status, created_at=created_at, **fields)  # type: ignore[arg-type]


def doc(doc_id: str, vector: list[float] | None = None, **attrs: object) -> CacheDoc:
    return CacheDoc(doc_id, dict(attrs), pack_vector(vector) if vector is not None else None)


def test_hit_miss_and_projection(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        assert await c.get(ns, "a") is None
        report = await c.put_many(ns, [doc("a", title="hello", n=3, tags=["x", "y"], nested={"k": 1.5})])
        assert report.stored == 1 and not report.oversized
        assert await c.get(ns, "a") == {"title": "hello", "n": 3, "tags": ["x", "y"], "nested": {"k": 1.5}}
        assert await c.get(ns, "a", ["n", "tags", "absent"]) == {"n": 3, "tags": ["x", "y"]}
        assert await c.get(ns, "a", []) == {}
        assert await c.get("other" + ns, "a") is None  # namespaces are separate sets
        assert c.status().connected and c.status().generation == 1

    run_with(cache_env, body)


def test_batch_duplicates_missing_and_projection(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await c.put_many(ns, [doc(f"d{i}", n=i, s=str(i)) for i in range(50)])
        got = await c.get_many(ns, ["d3", "nope", "d3", "d49", "d0", "gone"], ["n"])
        assert got == {"d3": {"n": 3}, "d49": {"n": 49}, "d0": {"n": 0}}
        many = await c.get_many(ns, [f"d{i}" for i in range(60)])  # above the inline batch size
        assert len(many) == 50 and many["d7"] == {"n": 7, "s": "7"}
        assert await c.get_many(ns, []) == {}

    run_with(cache_env, body)


def test_concurrent_writes_all_land(cache_env: dict[str, str], ns: str) -> None:
    """Many writes in flight at once (the embedded cache commits them in groups): each gets its own report and
    every put and delete is applied, in the order each id was written."""
    async def body(c: DocumentCache) -> None:
        reports = await asyncio.gather(*(c.put_many(ns, [doc(f"c{i}", n=i), doc(f"c{i}-b", n=-i)])
                                         for i in range(40)))
        assert [r.stored for r in reports] == [2] * 40
        await asyncio.gather(*(c.delete_many(ns, [f"c{i}-b"]) for i in range(0, 40, 2)),
                             *(c.put_many(ns, [doc(f"c{i}", n=i * 10)]) for i in range(1, 40, 2)))
        got = await c.get_many(ns, [f"c{i}" for i in range(40)] + [f"c{i}-b" for i in range(40)], ["n"])
        assert {k: v["n"] for k, v in got.items() if not k.endswith("-b")} == \
            {f"c{i}": i * 10 if i % 2 else i for i in range(40)}
        assert sorted(k for k in got if k.endswith("-b")) == sorted(f"c{i}-b" for i in range(1, 40, 2))

    run_with(cache_env, body)


def test_vectors_and_put_modes(cache_env: dict[str, str], ns: str) -> None:
    b64 = base64.b64encode(struct.pack("<3f", 0.5, -1.25, 3.0)).decode()

    async def body(c: DocumentCache) -> None:
        await c.put_many(ns, [doc("v", [0.1, 0.2, 0.3], t="a"), CacheDoc("w", {"t": "b"}, pack_vector(b64)),
                              doc("plain", t="c")])
        vec = await c.get_vector(ns, "v")
        assert vec == pytest.approx([0.1, 0.2, 0.3], abs=1e-7) and len(vec) == 3
        assert await c.get_vector(ns, "w") == [0.5, -1.25, 3.0]
        assert await c.get_vector(ns, "plain") is None and await c.get_vector(ns, "missing") is None
        assert "vector" not in (await c.get(ns, "v") or {})
        # fill never overwrites (a backfill must not clobber a newer mirror write)
        rep = await c.put_many(ns, [doc("v", t="stale"), doc("new", t="n")], "fill")
        assert (rep.stored, rep.skipped) == (1, 1)
        assert await c.get(ns, "v") == {"t": "a"} and await c.get(ns, "new") == {"t": "n"}
        # update touches only existing records and keeps the parts it is not given
        rep = await c.put_many(ns, [doc("v", t="patched"), doc("absent", t="x")], "update")
        assert (rep.stored, rep.skipped) == (1, 1)
        assert await c.get(ns, "absent") is None
        assert await c.get_vector(ns, "v") == pytest.approx([0.1, 0.2, 0.3], abs=1e-7)
        await c.put_many(ns, [CacheDoc("plain", None, pack_vector([9.0]))], "update")
        assert await c.get(ns, "plain") == {"t": "c"} and await c.get_vector(ns, "plain") == [9.0]
        # replace without a vector drops the old one (a re-upsert without vector)
        await c.put_many(ns, [doc("v", t="again")])
        assert await c.get(ns, "v") == {"t": "again"} and await c.get_vector(ns, "v") is None

    run_with(cache_env, body)


def test_oversized_documents_are_skipped_and_stale_copies_dropped(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await c.put_many(ns, [doc("big", t="small version")])
        report = await c.put_many(ns, [doc("big", t="x" * MAX_RECORD), doc("ok", t="fine")])
        assert report.oversized == ["big"] and report.stored == 1
        assert await c.get(ns, "big") is None  # the old copy would be stale
        assert await c.get(ns, "ok") == {"t": "fine"}
        rep = await c.put_many(ns, [doc("huge", [0.0] * (MAX_RECORD // 4))], "fill")
        assert rep.oversized == ["huge"] and rep.stored == 0

    run_with(cache_env, body)


def test_delete_and_drop_namespace(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await c.put_many(ns, [doc(f"d{i}", [float(i)], n=i) for i in range(10)])
        await c.put_many("keep" + ns, [doc("d1", n=1)])
        await c.delete_many(ns, ["d1", "d2", "d1", "never"])
        assert sorted(await c.get_many(ns, [f"d{i}" for i in range(10)])) == [f"d{i}" for i in (0, 3, 4, 5, 6, 7, 8, 9)]
        assert await c.get_vector(ns, "d1") is None
        await c.jobs.put(job(f"job-{ns}", ns, "completed"))
        await c.drop_namespace(ns)
        assert await c.get_many(ns, [f"d{i}" for i in range(10)]) == {}
        assert await c.jobs.list(ns) == [] and await c.jobs.get(f"job-{ns}") is None
        assert await c.get("keep" + ns, "d1") == {"n": 1}

    run_with(cache_env, body)


READER = """
import asyncio, json, sys
from gateway.cache import open_cache, WarmJob
async def main():
    c = open_cache()
    ns = sys.argv[1]
    jobs = [j.id for j in await c.jobs.list(ns)]
    one = await c.jobs.get(sys.argv[2])
    await c.jobs.put(WarmJob(id="from-child-" + ns, namespace=ns, status="running", progress=0.0,
                             documents_scanned=0, created_at="2026-01-02T00:00:00Z"))
    doc = await c.get(ns, "shared")
    await c.close()
    print(json.dumps({"jobs": jobs, "progress": one.progress if one else None, "doc": doc}))
asyncio.run(main())
"""


def test_job_store_and_documents_shared_across_processes(cache_env: dict[str, str], ns: str) -> None:
    first = job(f"a-{ns}", ns, created_at="2026-01-01T00:00:00.000Z")

    async def setup(c: DocumentCache) -> None:
        await c.jobs.put(first)
        await c.jobs.put(job(f"b-{ns}", ns, "completed", "2026-01-01T00:00:01Z", progress=1.0, documents_scanned=7,
                             completed_at="2026-01-01T00:00:02Z"))
        await c.jobs.put(job(f"x-{ns}", "other" + ns))
        await c.put_many(ns, [doc("shared", v=1)])
        first.progress = 0.5
        await c.jobs.put(first)  # an update replaces the record

    run_with(cache_env, setup)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEROSPIKE_", "LAYER_"))} | cache_env
    out = subprocess.run([sys.executable, "-c", READER, ns, first.id], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"jobs": [f"a-{ns}", f"b-{ns}"], "progress": 0.5, "doc": {"v": 1}}

    async def check(c: DocumentCache) -> list[str]:
        return [j.id for j in await c.jobs.list(ns)]

    assert run_with(cache_env, check) == [f"a-{ns}", f"b-{ns}", f"from-child-{ns}"]


def test_long_namespace_names_get_distinct_short_sets(cache_env: dict[str, str], ns: str) -> None:
    long_a, long_b = ns + "-" + "a" * 110, ns + "-" + "a" * 109 + "b"  # Turbopuffer allows 128 bytes

    async def body(c: DocumentCache) -> None:
        assert len(c.set_name(long_a).encode()) <= 63 or c.backend == "local"
        assert c.set_name(long_a) != c.set_name(long_b)
        await c.put_many(long_a, [doc("x", v="a")])
        await c.put_many(long_b, [doc("x", v="b")])
        assert await c.get(long_a, "x") == {"v": "a"} and await c.get(long_b, "x") == {"v": "b"}

    run_with(cache_env, body)


def test_backfill_never_resurrects_a_deleted_document(cache_env: dict[str, str], ns: str) -> None:
    """A fetch/warm backfill that read the upstream just before a delete must not bring the document back."""
    env = dict(cache_env, LAYER_CACHE_TOMBSTONE_MS="400")

    async def body(c: DocumentCache) -> None:
        await c.put_many(ns, [doc("gone", [1.0, 2.0], v=1), doc("kept", v=1)])
        await c.delete_many(ns, ["gone", "never-cached"])
        rep = await c.put_many(ns, [doc("gone", [1.0, 2.0], v=1), doc("never-cached", v=0), doc("new", v=2)], "fill")
        assert (rep.stored, rep.skipped) == (1, 2)
        assert await c.get(ns, "gone") is None and await c.get(ns, "never-cached") is None
        await c.put_many(ns, [CacheDoc("gone", None, pack_vector([3.0]))], "update")  # vector backfill: no-op
        assert await c.get_vector(ns, "gone") is None
        assert await c.get_many(ns, ["gone", "kept", "new"]) == {"kept": {"v": 1}, "new": {"v": 2}}
        await asyncio.sleep(0.45)  # once the tombstone is old, backfills may fill again
        rep = await c.put_many(ns, [doc("gone", [5.0], v=3), doc("kept", v=9)], "fill")
        assert (rep.stored, rep.skipped) == (1, 1)
        assert await c.get(ns, "gone") == {"v": 3} and await c.get_vector(ns, "gone") == [5.0]
        assert await c.get(ns, "kept") == {"v": 1}
        await c.delete_many(ns, ["kept"])
        await c.put_many(ns, [doc("kept", v=4)])  # a write (replace) always wins over a tombstone
        assert await c.get(ns, "kept") == {"v": 4}

    run_with(env, body)
