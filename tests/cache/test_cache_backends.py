"""One behaviour suite for both cache backends (embedded SQLite and Aerospike through the official client): storage,
and the coherence rules of gateway/cache/coherence.py applied by each backend's check-and-set."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

from gateway.cache import DocumentCache, WarmJob
from gateway.cache import coherence as co
from gateway.cache.base import encode_attrs, pack_vector

from .cache_ops import begin, delete, doc, fill, finish, get, get_many, miss, upsert, vector, write
from .conftest import MAX_RECORD, run_with

ROOT = Path(__file__).resolve().parents[2]
APPLIED, REJECTED, UNKNOWN = co.APPLIED, co.REJECTED, co.UNKNOWN


def job(job_id: str, ns: str, status: str = "running", created_at: str = "2026-01-01T00:00:00Z",
        **extra: object) -> WarmJob:
    fields: dict[str, object] = {"progress": 0.0, "documents_scanned": 0, **extra}
    return WarmJob(id=job_id, namespace=ns, status=status, created_at=created_at, **fields)  # type: ignore[arg-type]


# -- storage -----------------------------------------------------------------------------------------------------

def test_hit_miss_and_projection(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        assert await get(c, ns, "a") is None
        await upsert(c, ns, [doc("a", title="hello", n=3, tags=["x", "y"], nested={"k": 1.5})])
        assert await get(c, ns, "a") == {"title": "hello", "n": 3, "tags": ["x", "y"], "nested": {"k": 1.5}}
        assert await get(c, ns, "a", ["n", "tags", "absent"]) == {"n": 3, "tags": ["x", "y"]}
        assert await get(c, ns, "a", []) == {}
        assert await get(c, "other" + ns, "a") is None  # namespaces are separate sets
        assert c.status().connected and c.status().generation == 1

    run_with(cache_env, body)


def test_batch_duplicates_missing_and_projection(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc(f"d{i}", n=i, s=str(i)) for i in range(50)])
        found = await c.lookup(ns, ["d3", "nope", "d3", "d49", "d0", "gone"], ["n"])
        assert found.hits == {"d3": {"n": 3}, "d49": {"n": 49}, "d0": {"n": 0}}
        assert sorted(found.tokens) == ["gone", "nope"] and all(t.fill and t.ver == 0 for t in found.tokens.values())
        many = await get_many(c, ns, [f"d{i}" for i in range(60)])  # above the inline batch size
        assert len(many) == 50 and many["d7"] == {"n": 7, "s": "7"}
        assert (await c.lookup(ns, [])).hits == {}

    run_with(cache_env, body)


def test_concurrent_writes_all_land(cache_env: dict[str, str], ns: str) -> None:
    """Many writes in flight at once (the embedded cache commits them in groups): every one is applied."""
    async def body(c: DocumentCache) -> None:
        await asyncio.gather(*(upsert(c, ns, [doc(f"c{i}", n=i), doc(f"c{i}-b", n=-i)]) for i in range(40)))
        await asyncio.gather(*(delete(c, ns, [f"c{i}-b"]) for i in range(0, 40, 2)),
                             *(upsert(c, ns, [doc(f"c{i}", n=i * 10)]) for i in range(1, 40, 2)))
        got = await get_many(c, ns, [f"c{i}" for i in range(40)] + [f"c{i}-b" for i in range(40)], ["n"])
        assert {k: v["n"] for k, v in got.items() if not k.endswith("-b")} == \
            {f"c{i}": i * 10 if i % 2 else i for i in range(40)}
        assert sorted(k for k in got if k.endswith("-b")) == sorted(f"c{i}-b" for i in range(1, 40, 2))

    run_with(cache_env, body)


CONTENDERS = 24


def test_fences_on_one_document_all_land_under_contention(cache_env: dict[str, str], ns: str) -> None:
    """Many writes begin and finish on one id at once: on Aerospike each is a check-and-set that loses round after
    round to the others. Every fence lands (none is given up after a fixed number of rounds while the cache answers),
    and once all have finished the record is fillable again (no write is left listed as in flight)."""
    env = dict(cache_env, AEROSPIKE_POOL_SIZE=str(CONTENDERS), AEROSPIKE_TIMEOUT_MS="10000")

    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("x", v=0)])
        begun = await asyncio.gather(*(begin(c, ns, ["x"]) for _ in range(CONTENDERS)))
        assert all("x" in tokens for _, tokens in begun)
        await asyncio.gather(*(finish(c, ns, b, {"x": co.Upsert({"v": i}, None)}) for i, b in enumerate(begun)))
        tok = await miss(c, ns, "x")  # the writes overlapped: none of their results is mirrored
        assert await fill(c, ns, tok, doc("x", v=99))
        assert await get(c, ns, "x") == {"v": 99}

    run_with(env, body)


def test_vectors(cache_env: dict[str, str], ns: str) -> None:
    b64 = base64.b64encode(struct.pack("<3f", 0.5, -1.25, 3.0)).decode()

    async def body(c: DocumentCache) -> None:
        await write(c, ns, {"v": co.Upsert({"t": "a"}, pack_vector([0.1, 0.2, 0.3])),
                            "w": co.Upsert({"t": "b"}, pack_vector(b64)), "plain": co.Upsert({"t": "c"}, None)})
        assert await vector(c, ns, "v") == pytest.approx([0.1, 0.2, 0.3], abs=1e-7)
        assert await vector(c, ns, "w") == [0.5, -1.25, 3.0]
        assert await vector(c, ns, "plain") is None and await vector(c, ns, "missing") is None
        assert "vector" not in (await get(c, ns, "v") or {})
        # a vector backfill lands on a served record that did not change since its token
        tok = (await c.lookup_vectors(ns, ["plain"])).tokens["plain"]
        assert await c.update(ns, {"plain": co.fill_vector(tok, pack_vector([9.0]))})
        assert await vector(c, ns, "plain") == [9.0] and await get(c, ns, "plain") == {"t": "c"}
        stale = (await c.lookup_vectors(ns, ["missing"])).tokens["missing"]
        assert not await c.update(ns, {"missing": co.fill_vector(stale, pack_vector([1.0]))})  # never creates one
        # a re-upsert without a vector drops the old one
        await upsert(c, ns, [doc("v", t="again")])
        assert await get(c, ns, "v") == {"t": "again"} and await vector(c, ns, "v") is None

    run_with(cache_env, body)


def test_oversized_documents_are_not_cached(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("big", t="small version")])
        await upsert(c, ns, [doc("big", t="x" * MAX_RECORD), doc("ok", t="fine")])
        assert await get(c, ns, "big") is None  # the old copy would be stale, the new one does not fit
        assert await get(c, ns, "ok") == {"t": "fine"}
        tok = await miss(c, ns, "big")
        assert tok.fill  # a fetch may still try: the backfill skips what does not fit (service.backfill)

    run_with(cache_env, body)


def test_long_namespace_names_get_distinct_short_sets(cache_env: dict[str, str], ns: str) -> None:
    long_a, long_b = ns + "-" + "a" * 110, ns + "-" + "a" * 109 + "b"  # Turbopuffer allows 128 bytes

    async def body(c: DocumentCache) -> None:
        assert len(c.set_name(long_a).encode()) <= 63 or c.backend == "local"
        assert c.set_name(long_a) != c.set_name(long_b)
        await upsert(c, long_a, [doc("x", v="a")])
        await upsert(c, long_b, [doc("x", v="b")])
        assert await get(c, long_a, "x") == {"v": "a"} and await get(c, long_b, "x") == {"v": "b"}

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
    doc = (await c.lookup(ns, ["shared"])).hits.get("shared")
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
        await upsert(c, ns, [doc("shared", v=1)])
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


# -- coherence: the rules, on both backends --------------------------------------------------------------------

def test_a_fill_lands_only_against_an_unchanged_idle_record(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        tok = await miss(c, ns, "x")
        assert (tok.ver, tok.fill) == (0, True)
        assert await fill(c, ns, tok, doc("x", v=1))
        assert await get(c, ns, "x") == {"v": 1}
        assert not await fill(c, ns, tok, doc("x", v=0))  # the record changed since that token
        # a write began after the miss read its token: the fill must not land (it may hold the old version)
        await delete(c, ns, ["x"])
        tok = await miss(c, ns, "x")
        begun = await begin(c, ns, ["x"])
        assert not await fill(c, ns, tok, doc("x", v=1))
        # while a write is in flight nothing may be filled: it may land upstream after the fill's read
        assert not (await miss(c, ns, "x")).fill
        await finish(c, ns, begun, {"x": co.Upsert({"v": 2}, None)})
        assert await get(c, ns, "x") == {"v": 2}
        # a write that upstream rejected leaves what was served
        await write(c, ns, {"x": co.Upsert({"v": 3}, None)}, REJECTED)
        assert await get(c, ns, "x") == {"v": 2}

    run_with(cache_env, body)


def test_a_unknown_outcome_blocks_fills_until_its_horizon(cache_env: dict[str, str], ns: str) -> None:
    """A write that timed out may still land upstream: nothing is served or filled for that id meanwhile."""
    env = dict(cache_env, LAYER_CACHE_UNKNOWN_MS="400")

    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("x", v=1)])
        await write(c, ns, {"x": co.Upsert({"v": 2}, None)}, UNKNOWN)
        assert await get(c, ns, "x") is None
        tok = await miss(c, ns, "x")
        assert not tok.fill and not await fill(c, ns, tok, doc("x", v=1))
        await upsert(c, ns, [doc("x", v=3)])  # a later write still may not be served while v=2 may land
        assert await get(c, ns, "x") is None
        deadline = time.monotonic() + 10
        while not (tok := await miss(c, ns, "x")).fill:
            assert time.monotonic() < deadline, "the unknown outcome never expired"
            await asyncio.sleep(0.05)
        assert await fill(c, ns, tok, doc("x", v=3)) and await get(c, ns, "x") == {"v": 3}

    run_with(env, body)


def test_b_finishes_in_any_order_leave_nothing_stale(cache_env: dict[str, str], ns: str) -> None:
    """Two writes of one id in flight together: upstream's order is unknown, so neither result is served."""
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("x", v=0)])
        first, second = await begin(c, ns, ["x"]), await begin(c, ns, ["x"])
        await finish(c, ns, second, {"x": co.Upsert({"v": 2}, None)})
        assert await get(c, ns, "x") is None  # the first may still land after it
        await finish(c, ns, first, {"x": co.Upsert({"v": 1}, None)})
        assert await get(c, ns, "x") is None
        tok = await miss(c, ns, "x")
        assert tok.fill and await fill(c, ns, tok, doc("x", v=1))  # what a fetch read upstream

    run_with(cache_env, body)


def test_c_patches_merge_only_into_what_upstream_held(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("p", a=0, b=0, gone="x")])
        await write(c, ns, {"p": co.Patch({"a": 1, "gone": None})})
        assert await get(c, ns, "p") == {"a": 1, "b": 0}
        first, second = await begin(c, ns, ["p"]), await begin(c, ns, ["p"])  # two patches at once
        await finish(c, ns, first, {"p": co.Patch({"a": 2})})
        await finish(c, ns, second, {"p": co.Patch({"b": 2})})
        assert await get(c, ns, "p") is None  # either merge alone would lose the other's field
        await write(c, ns, {"q": co.Patch({"a": 1})})  # a patch of an uncached document creates nothing
        assert await get(c, ns, "q") is None

    run_with(cache_env, body)


@pytest.mark.parametrize("order", ["patch-first", "delete-first", "patch-begins-last"])
def test_d_patch_racing_a_delete_never_resurrects(cache_env: dict[str, str], ns: str, order: str) -> None:
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc("d", v=1)])
        patch = co.Patch({"w": 1})
        if order == "patch-begins-last":
            deleting = await begin(c, ns, ["d"])
            patching = await begin(c, ns, ["d"])
            await finish(c, ns, deleting, {"d": co.Delete()})
            await finish(c, ns, patching, {"d": patch})
        else:
            patching = await begin(c, ns, ["d"])
            deleting = await begin(c, ns, ["d"])
            steps = [(patching, patch), (deleting, co.Delete())]
            for begun, effect in steps if order == "patch-first" else steps[::-1]:
                await finish(c, ns, begun, {"d": effect})
        assert await get(c, ns, "d") is None and await vector(c, ns, "d") is None
        await delete(c, ns, ["d"])
        await write(c, ns, {"d": patch})  # a patch after the delete: upstream ignores it, so must the cache
        assert await get(c, ns, "d") is None

    run_with(cache_env, body)


def test_f_namespace_reset_hides_everything_and_stops_in_flight_fills(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        await upsert(c, ns, [doc(f"d{i}", n=i) for i in range(5)])
        early = await miss(c, ns, "new")
        in_flight = await begin(c, ns, ["d1"])
        await c.reset(ns, 0)
        assert await get_many(c, ns, [f"d{i}" for i in range(5)]) == {}
        assert not await fill(c, ns, early, doc("new", n=1))  # read upstream before the delete
        await finish(c, ns, in_flight, {"d1": co.Upsert({"n": 10}, None)})  # began before the delete
        assert await get(c, ns, "d1") is None
        # a write begun before the reset may still land: it keeps its id unfillable
        pending = await begin(c, ns, ["d2"])
        await c.reset(ns, 0)
        assert not (await miss(c, ns, "d2")).fill
        await finish(c, ns, pending, {"d2": co.Delete()})
        # old-epoch records are garbage: never filled, blanked into the current epoch, or collected
        tok = await miss(c, ns, "d3")
        assert (tok.fill, tok.adopt) == (False, True)
        await c.update(ns, {"d3": co.settle(0)})
        tok = await miss(c, ns, "d3")
        assert tok.fill and await fill(c, ns, tok, doc("d3", n=3)) and await get(c, ns, "d3") == {"n": 3}
        fenced = await begin(c, ns, ["d4"])
        await c.reset(ns, 0)
        assert await c.collect(ns) >= 3  # d0..d3 (d3 is of the previous epoch now); not d4 (fenced)
        assert (await miss(c, ns, "d0")).fill and not (await miss(c, ns, "d4")).fill
        await finish(c, ns, fenced, {"d4": co.Delete()})
        # a reset with an unknown outcome (a delete that timed out) blocks fills namespace-wide
        await c.reset(ns, co.now_ms() + 60_000)
        assert not (await miss(c, ns, "d0")).fill and not (await c.space(ns)).fill

    run_with(cache_env, body)


def test_warm_pages_fill_only_ids_untouched_since_the_page_token(cache_env: dict[str, str], ns: str) -> None:
    async def body(c: DocumentCache) -> None:
        page = await c.space(ns)
        await delete(c, ns, ["touched"])  # written after the page was read
        docs = [doc("touched", v=1), doc("fresh", v=1)]
        written = await c.update(ns, {d.id: co.fill_absent(page, d, encode_attrs(d.attrs), 60_000) for d in docs})
        assert list(written) == ["fresh"]
        assert await get_many(c, ns, ["touched", "fresh"]) == {"fresh": {"v": 1}}
        await c.reset(ns, 0)
        stale = [doc("later", v=1)]
        assert not await c.update(ns, {d.id: co.fill_absent(page, d, encode_attrs(d.attrs), 60_000) for d in stale})

    run_with(cache_env, body)


def test_pack_vector_takes_numbers_only() -> None:
    assert pack_vector([1, 2.5]) == array("f", [1.0, 2.5]).tobytes()
    for bad in ([True, 1.0], [1.0, None], ["1"], [[1.0]], [], None, 3):
        assert pack_vector(bad) is None
