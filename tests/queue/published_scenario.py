"""The design's acceptance scenario (pipelines-udfs.md §5 A and B) with the published `hevlayer` 0.7.3 client.

A standalone script, run by tests/queue/test_queue_scenario.py with an interpreter that has the published client
(so it keeps working once the project's own generated client takes the import name `hevlayer`):

    python tests/queue/published_scenario.py http://127.0.0.1:8080 <admin key>

It prints one JSON object: {"steps": [{"step", "ok", "detail"}...], "error": null | "<what failed>"}; it stops at the
first failed expectation. "Eventually" conditions poll every 50 ms for up to EVENTUALLY_S.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time
import traceback
from typing import Any

from hevlayer import AsyncHevlayer, HevlayerError
from hevlayer.models import ClaimDocumentsRequest, UdfDiscoverRequest
from hevlayer.udf import PermanentError, TransientError, run_udf_worker, udf

EVENTUALLY_S = 30.0
V = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
STEPS: list[dict[str, Any]] = []


class Failed(Exception):
    pass


def check(step: str, ok: bool, detail: Any = None) -> None:
    STEPS.append({"step": step, "ok": bool(ok), "detail": detail})
    if not ok:
        raise Failed(f"{step}: {detail!r}")


async def status_of(err_call: Any) -> int | None:
    try:
        await err_call
    except HevlayerError as exc:
        return exc.status_code
    return None


async def eventually(fetch: Any, ok: Any) -> Any:
    deadline = time.monotonic() + EVENTUALLY_S
    while True:
        value = await fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def raw(client: AsyncHevlayer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await client._client.request(method, path, json=body)
    return resp.status_code, resp.json() if resp.content else None


async def row_of(client: AsyncHevlayer, ns: str, doc_id: Any) -> dict[str, Any] | None:
    _, body = await raw(client, "POST", f"/v2/namespaces/{ns}/query",
                        {"rank_by": ["id", "asc"], "top_k": 10, "filters": ["id", "Eq", doc_id],
                         "include_attributes": True})
    rows = body.get("rows") or []
    return rows[0] if rows else None


# ---------------------------------------------------------------------------------------------------- A. Pipelines
async def pipelines(c: AsyncHevlayer) -> None:
    p = await c.ensure_pipeline({"id": "docs", "target_namespace": "pl-docs"})
    check("A1 ensure", p.distance_metric == "cosine_distance" and isinstance(p.created_at, str), p.model_dump())
    again = await c.ensure_pipeline({"id": "docs", "target_namespace": "pl-docs"})
    check("A1 ensure again", again == p, again.model_dump())
    check("A1 create again 409", await status_of(c.create_pipeline({"id": "docs", "target_namespace": "pl-docs"}))
          == 409)

    chunks = {"d1": [{"id": "d1-0", "text": "alpha", "metadata": {"page": 1}}, {"id": "d1-1", "text": "beta"}],
              "d2": [{"id": "d2-0", "text": "gamma"}],
              "d3": [{"id": f"d3-{i}", "text": f"delta {i}"} for i in range(3)]}
    for doc, cs in chunks.items():
        r = await c.put_pipeline_document_chunks("docs", doc, {"chunks": cs})
        check(f"A2 stage {doc}", r.stage == "pending" and r.chunk_ids == [x["id"] for x in cs], r.model_dump())
    s = await c.get_pipeline_status("docs")
    check("A2 status", s.status == "pending" and s.pending_count == 3 and s.processing_count == 0
          and s.counts["pending"] == 3, s.model_dump())

    claim = await c.claim_documents("docs", ClaimDocumentsRequest(worker_id="w1", limit=2))
    check("A3 claim", claim.documents == ["d1", "d2"] and claim.stage == "pending"
          and claim.claim_stage == "embedding", claim.model_dump())
    s = await c.get_pipeline_status("docs")
    check("A3 status", s.processing_count == 2 and s.pending_count == 1, s.model_dump())

    status, body = await raw(c, "GET", "/v2/pipelines/docs/documents/d1/chunks")
    check("A4 chunks", status == 200 and body == chunks["d1"], body)

    r = await c.put_pipeline_document_vectors("docs", "d1", {"vectors": [
        {"id": "d1-0", "vector": V[0]}, {"id": "d1-1", "vector": V[1], "attributes": {"doc": "d1"}}]})
    check("A5 vectors", r.status == "OK", r.model_dump())
    row = await row_of(c, "pl-docs", "d1-1")
    check("A5 row", row is not None and row.get("doc") == "d1", row)
    _, body = await raw(c, "POST", "/v2/namespaces/pl-docs/query", {
        "rank_by": ["id", "asc"], "top_k": 1, "filters": ["id", "Eq", "d1-1"],
        "include_attributes": ["_hevlayer_upserted_at"]})
    check("A5 stamp", isinstance(body["rows"][0].get("_hevlayer_upserted_at"), int), body)
    s = await c.get_pipeline_status("docs")
    check("A5 status", s.counts.get("indexed") == 1 and s.processing_count == 1 and s.indexed_rate_per_min > 0,
          s.model_dump())
    check("A5 reserved 422", await status_of(c.put_pipeline_document_vectors("docs", "d1", {"vectors": [
        {"id": "d1-0", "vector": V[0], "attributes": {"_hevlayer_x": 1}}]})) == 422)

    h1 = await c.heartbeat_documents("docs", {"document_ids": ["d2"], "worker_id": "w1"})
    h2 = await c.heartbeat_documents("docs", {"document_ids": ["d2"], "worker_id": "w2"})
    check("A6 heartbeat", (h1.updated, h2.updated) == (1, 0), [h1.updated, h2.updated])

    r1 = await c.release_documents("docs", ["d2"], from_stage="embedding", worker_id="w1")
    r2 = await c.release_documents("docs", ["d2"], from_stage="embedding", worker_id="w1")
    check("A7 release", (r1.updated, r2.updated) == (1, 0), [r1.updated, r2.updated])

    w3 = await c.claim_documents("docs", {"worker_id": "w3", "lease_seconds": 1})
    check("A8 claim w3", w3.documents == ["d3", "d2"], w3.documents)
    await asyncio.sleep(1.2)
    w4 = await c.claim_documents("docs", {"worker_id": "w4"})
    check("A8 claim w4", w4.documents == ["d2", "d3"], w4.documents)
    late = await c.complete_documents("docs", ["d2", "d3"], from_stage="embedding", worker_id="w3")
    check("A8 late complete", late.updated == 0, late.updated)

    f = await c.fail_documents("docs", ["d3"], worker_id="w4")
    s = await c.get_pipeline_status("docs")
    check("A9 fail", f.updated == 1 and s.failed_count == 1 and s.failed_reasons == {"worker": 1}
          and s.processing_count == 1, s.model_dump())

    await c.put_pipeline_document_chunks("docs", "d1", {"chunks": [{"id": "d1-0", "text": "alpha"}]})
    r = await c.write_single_vector("docs", "d1", {"id": "d1-0", "vector": V[2]})
    check("A10 restage vectors", r.status == "OK", r.model_dump())
    check("A10 orphan gone", await status_of(c.fetch_document("pl-docs", "d1-1")) == 404)
    s = await c.get_pipeline_status("docs")
    check("A10 indexed", s.counts.get("indexed") == 1, s.model_dump())

    await c.release_documents("docs", ["d2"], worker_id="w4")
    w5 = await c.claim_documents("docs", {"worker_id": "w5"})
    check("A11 claim w5", w5.documents == ["d2"], w5.documents)
    await c.put_pipeline_document_chunks("docs", "d2", {"chunks": [{"id": "d2-0", "text": "gamma 2"}]})
    r = await c.write_single_vector("docs", "d2", {"id": "d2-0", "vector": V[3]})
    s = await c.get_pipeline_status("docs")
    check("A11 stale stays pending", r.status == "OK" and s.pending_count == 1, s.model_dump())

    missing = [
        c.get_pipeline_status("nope"), c.delete_pipeline("nope"),
        c.put_pipeline_document_chunks("nope", "d", {"chunks": []}), c.get_pipeline_document_chunks("nope", "d"),
        c.claim_documents("nope", {"worker_id": "w"}), c.heartbeat_documents("nope", {"document_ids": [],
                                                                                       "worker_id": "w"}),
        c.release_documents("nope", ["d"]), c.put_pipeline_document_vectors("nope", "d", {"vectors": []})]
    codes = [await status_of(x) for x in missing]
    check("A12 unknown 404", codes == [404] * len(missing), codes)
    check("A12 delete", (await c.delete_pipeline("docs")).status == "OK")
    check("A12 gone", await status_of(c.get_pipeline_status("docs")) == 404)


# ---------------------------------------------------------------------------------------------------- B. Functions
UDF_ID = "product-tags"
SPEC = {"target_namespaces": ["products"], "inputs": ["id", "title"], "version": "v1",
        "filter": ["category", "Eq", "outdoor"], "worker": {"image": "local"}, "triggers": ["discovery", "write"],
        "retry": {"max_attempts": 3, "initial_backoff_seconds": 1, "max_backoff_seconds": 2},
        "schedule": {"discovery_interval_seconds": 3600}}
CALLS: dict[str, int] = {}


@udf(output="tags", batch_size=4)
def tag_product(*, id: str, title: str | None) -> list[str]:
    CALLS[id] = CALLS.get(id, 0) + 1
    if title is None:
        raise PermanentError("no title")
    if id == "p08" and CALLS[id] == 1:
        raise TransientError("flaky on first call")
    return ["outdoor", title]


def product(n: int, category: str, title: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"p{n:02}", "category": category}
    if title is not None:
        row["title"] = title
    return row


async def functions(c: AsyncHevlayer, url: str, key: str) -> None:
    async def once(worker: str, fn: Any = tag_product, udf_id: str = UDF_ID) -> None:
        await run_udf_worker(fn, udf_id=udf_id, api_key=key, base_url=url, worker_id=worker, once=True)

    async def counts() -> dict[str, int]:
        return (await c.get_udf_status(UDF_ID)).counts

    rows = [product(n, "outdoor" if n <= 8 else "indoor", None if n == 7 else "flaky boots" if n == 8
                    else f"title p{n:02}") for n in range(1, 13)]
    await c.write_namespace("products", {"upsert_rows": rows})

    u = await c.create_udf({"id": UDF_ID, "spec": SPEC})
    check("B2 create", u.spec.schedule.lease_seconds == 120 and u.spec.worker.batch_size == 32
          and u.spec.invalidates == [] and u.paused is False, u.model_dump())
    check("B2 again 409", await status_of(c.create_udf({"id": UDF_ID, "spec": SPEC})) == 409)
    check("B2 schedule trigger 422", await status_of(c.create_udf({"id": "t2", "spec": {**SPEC,
                                                                                       "triggers": ["schedule"]}})) == 422)
    no_worker = {k: v for k, v in SPEC.items() if k != "worker"}
    check("B2 no worker 422", await status_of(c.create_udf({"id": "t3", "spec": no_worker})) == 422)

    s = await c.get_udf_status(UDF_ID)
    check("B3 status", s.pending_count == 0 and s.discovery.sweeps_completed == 0
          and s.discovery.last_completed_at is None and s.active_namespaces == ["products"], s.model_dump())

    d = await c.discover_udf(UDF_ID, {})
    s = await c.get_udf_status(UDF_ID)
    check("B4 discover", d.enqueued == 8 and d.namespaces == ["products"] and s.pending_count == 8
          and s.discovery.sweeps_completed == 1 and isinstance(s.discovery.last_completed_at, str), s.model_dump())
    d = await c.discover_udf(UDF_ID, UdfDiscoverRequest())
    s = await c.get_udf_status(UDF_ID)
    check("B4 discover again", d.enqueued == 0 and s.discovery.sweeps_completed == 2, d.model_dump())

    await once("w1")
    check("B6 first batch", await counts() == {"pending": 4, "processing": 0, "failed": 0}, await counts())
    await once("w1")
    check("B7 second batch", await counts() == {"pending": 1, "processing": 0, "failed": 1}, await counts())
    calls = dict(CALLS)
    await once("w1")
    check("B7 backoff holds p08", CALLS == calls and await counts() == {"pending": 1, "processing": 0, "failed": 1},
          CALLS)
    await asyncio.sleep(1.1)
    await once("w1")
    s = await c.get_udf_status(UDF_ID)
    check("B7 p08 done", s.counts == {"pending": 0, "processing": 0, "failed": 1} and s.indexed_rate_per_min > 0,
          s.model_dump())

    stem = "_hevlayer_udf_product_tags"
    p01, p09 = await row_of(c, "products", "p01"), await row_of(c, "products", "p09")
    check("B8 p01", p01 is not None and p01.get("tags") == ["outdoor", "title p01"] and p01.get(f"{stem}_v") == "v1"
          and p01.get(f"{stem}_stale_after") is None, p01)
    check("B8 p09", p09 is not None and "tags" not in p09, p09)
    check("B8 marker 422", await status_of(c.patch_columns("products", ["p01"], {f"{stem}_v": ["x"]})) == 422)

    d = await c.discover_udf(UDF_ID, {})
    check("B9 discover done", d.enqueued == 0, d.model_dump())

    await c.write_namespace("products", {"patch_rows": [{"id": "p07", "title": "fixed title"}]})
    got = await eventually(counts, lambda v: v["failed"] == 0 and v["pending"] == 1)
    check("B10 trigger revives p07", got == {"pending": 1, "processing": 0, "failed": 0}, got)
    await once("w1")
    check("B10 p07 done", await counts() == {"pending": 0, "processing": 0, "failed": 0}, await counts())

    await c.write_namespace("products", {"upsert_rows": [product(13, "outdoor", None), product(14, "indoor", "x")]})
    got = await eventually(counts, lambda v: v["pending"] == 1)
    check("B11 trigger p13 only", got == {"pending": 1, "processing": 0, "failed": 0}, got)
    await once("w1")
    check("B11 p13 failed", await counts() == {"pending": 0, "processing": 0, "failed": 1}, await counts())
    r = await c.reset_failed_udf(UDF_ID)
    check("B11 reset", r.updated == 1 and await counts() == {"pending": 1, "processing": 0, "failed": 0}, r.updated)

    paused = await c.pause_udf(UDF_ID)
    claimed = await c.claim_udf_items(UDF_ID, {"worker_id": "x"})
    calls = dict(CALLS)
    await once("w1")
    check("B12 paused", paused.paused is True and claimed.items == [] and CALLS == calls
          and await counts() == {"pending": 1, "processing": 0, "failed": 0}, paused.model_dump())
    await c.write_namespace("products", {"patch_rows": [{"id": "p13", "title": "title p13"}]})
    resumed = await c.resume_udf(UDF_ID)
    await eventually(lambda: row_of(c, "products", "p13"), lambda r: r and r.get("title") == "title p13")
    await once("w1")
    p13 = await row_of(c, "products", "p13")
    check("B12 resumed", resumed.paused is False and p13 is not None and p13.get("tags") == ["outdoor", "title p13"]
          and await counts() == {"pending": 0, "processing": 0, "failed": 0}, p13)

    await c.write_namespace("products", {"upsert_rows": [product(15, "outdoor", "title p15")]})
    got = await eventually(counts, lambda v: v["pending"] == 1)
    check("B13 p15 pending", got["pending"] == 1, got)
    a = await c.claim_udf_items(UDF_ID, {"worker_id": "a", "lease_seconds": 1})
    check("B13 claim a", [i.model_dump() for i in a.items] == [
        {"namespace": "products", "id": "p15", "input": {"id": "p15", "title": "title p15"}}],
        [i.model_dump() for i in a.items])
    await asyncio.sleep(1.2)
    b = await c.claim_udf_items(UDF_ID, {"worker_id": "b"})
    check("B13 claim b", [i.id for i in b.items] == ["p15"], [i.id for i in b.items])
    ca = await c.complete_udf_items(UDF_ID, {"worker_id": "a", "items": [
        {"namespace": "products", "id": "p15", "attributes": {"tags": ["a"]}}]})
    cb = await c.complete_udf_items(UDF_ID, {"worker_id": "b", "items": [
        {"namespace": "products", "id": "p15", "attributes": {"tags": ["b"]}}]})
    hb = await c.heartbeat_udf_items(UDF_ID, {"worker_id": "b", "items": [{"namespace": "products", "id": "p15"}]})
    p15 = await row_of(c, "products", "p15")
    check("B13 ownership", (ca.updated, cb.updated, hb.updated) == (0, 1, 0) and p15 is not None
          and p15.get("tags") == ["b"], [ca.updated, cb.updated, hb.updated, p15])

    check("B14 queue empty", await counts() == {"pending": 0, "processing": 0, "failed": 0}, await counts())
    await c.upsert_udf(UDF_ID, {"spec": {**SPEC, "version": "v2"}})
    d = await c.discover_udf(UDF_ID, {})
    check("B14 version bump", d.enqueued == 10, d.model_dump())

    await typed_ids(c, url, key)

    check("B16 delete", (await c.delete_udf(UDF_ID)).status == "OK")
    check("B16 gone", [await status_of(c.get_udf(UDF_ID)),
                       await status_of(c.claim_udf_items(UDF_ID, {"worker_id": "w"}))] == [404, 404])


async def typed_ids(c: AsyncHevlayer, url: str, key: str) -> None:
    await c.write_namespace("numbers", {"upsert_rows": [{"id": 42, "label": "answer"}, {"id": 7, "label": "seven"}]})
    await c.create_udf({"id": "num-tags", "spec": {"target_namespaces": ["numbers"], "inputs": ["id", "label"],
                                                   "worker": {}, "filter": ["label", "Eq", "answer"]}})
    await c.discover_udf("num-tags", {})
    seen: list[Any] = []

    @udf(output="tag")
    def tag(*, id: Any, label: str) -> str:
        seen.append(id)
        return f"{label}:{id}"

    claimed = await c.claim_udf_items("num-tags", {"worker_id": "peek", "lease_seconds": 1})
    check("B15 claimed id is a string", [i.id for i in claimed.items] == ["42"], [i.id for i in claimed.items])
    await asyncio.sleep(1.2)
    await run_udf_worker(tag, udf_id="num-tags", api_key=key, base_url=url, worker_id="nw", once=True)
    _, body = await raw(c, "POST", "/v2/namespaces/numbers/query", {"rank_by": ["id", "asc"], "top_k": 10,
                                                                  "include_attributes": ["tag"]})
    check("B15 u64 row", body["rows"] == [{"id": 7}, {"id": 42, "tag": "answer:42"}] and seen == [42], body)
    await c.delete_udf("num-tags")


async def main(url: str, key: str) -> dict[str, Any]:
    error = None
    try:
        async with AsyncHevlayer(api_key=key, base_url=url, timeout=60.0) as client:
            await pipelines(client)
            await functions(client, url, key)
    except Failed as exc:
        error = str(exc)
    except Exception:  # noqa: BLE001 - reported to the test as the failure
        error = traceback.format_exc()
    return {"client": importlib.metadata.version("hevlayer"), "steps": STEPS, "error": error}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), default=str))
