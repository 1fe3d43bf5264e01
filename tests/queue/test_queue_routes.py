"""Every pipeline and UDF route against bad input (4xx naming the field, never 500), unknown ids (404), minted keys
(namespace grants apply to target namespaces), write triggers on conditional writes, and metrics; per backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from queue_support import BACKENDS, QueueStack, queue_stack
from queue_support import call as http

P, U = "/v2/pipelines", "/v2/udfs"
SPEC = {"target_namespaces": ["goods"], "inputs": ["title"], "worker": {}}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStack]:
    with queue_stack(tmp_path_factory.mktemp("routes"), request.param) as s:
        assert http(s.url, "POST", P, {"id": "pl", "target_namespace": "goods"})[0] == 200
        assert http(s.url, "PUT", f"{P}/pl/documents/doc", {"chunks": [{"id": "c1"}]})[0] == 200
        assert http(s.url, "POST", U, {"id": "fn", "spec": SPEC})[0] == 200
        yield s


# (method, path, body, expected status, text the message must contain)
BAD_INPUT: list[tuple[str, str, Any, int, str]] = [
    ("POST", P, {"target_namespace": "x"}, 422, "`id`"),
    ("POST", P, {"id": "bad id!", "target_namespace": "x"}, 422, "$.id"),
    ("POST", P, {"id": "p2", "target_namespace": "x", "distance_metric": "dot"}, 422, "distance_metric"),
    ("POST", P, {"id": "p2", "target_namespace": "x", "distance_metric": 3}, 422, "$.distance_metric"),
    ("POST", P, {"id": "p2", "target_namespace": "no/slash"}, 422, "target_namespace"),
    ("POST", P, "[1]", 422, "object"),
    ("PUT", f"{P}/pl/documents/d", {"chunks": [{"id": "a"}, {"id": "a"}]}, 422, "duplicate chunk id"),
    ("PUT", f"{P}/pl/documents/d", {"chunks": [{"text": "no id"}]}, 422, "`id`"),
    ("PUT", f"{P}/pl/documents/d", {"chunks": "x"}, 422, "$.chunks"),
    ("PUT", f"{P}/pl/documents/d", {"chunks": [{"id": str(i)} for i in range(10_001)]}, 422, "$.chunks"),
    ("POST", f"{P}/pl/claim", {}, 422, "worker_id"),
    ("POST", f"{P}/pl/claim", {"worker_id": ""}, 422, "$.worker_id"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w" * 257}, 422, "$.worker_id"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "limit": 0}, 422, "$.limit"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "limit": 1001}, 422, "$.limit"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "lease_seconds": 0}, 422, "$.lease_seconds"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "lease_seconds": 86_401}, 422, "$.lease_seconds"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "claim_stage": "pending"}, 422, "claim_stage"),
    ("POST", f"{P}/pl/claim", {"worker_id": "w", "stage": "a b"}, 422, "$.stage"),
    ("POST", f"{P}/pl/documents/heartbeat", {"worker_id": "w"}, 422, "document_ids"),
    ("POST", f"{P}/pl/documents/heartbeat", {"document_ids": ["d"]}, 422, "worker_id"),
    ("POST", f"{P}/pl/documents/stage", {"document_ids": ["d"]}, 422, "`stage`"),
    ("POST", f"{P}/pl/documents/stage", {"document_ids": ["d"], "stage": ""}, 422, "$.stage"),
    ("POST", f"{P}/pl/documents/stage", {"document_ids": ["d"] * 10_001, "stage": "x"}, 422, "$.document_ids"),
    ("POST", f"{P}/pl/documents/stage", {"document_ids": [1], "stage": "x"}, 422, "$.document_ids[0]"),
    ("PUT", f"{P}/pl/documents/doc/vectors", {"vectors": [{"id": "c1", "vector": [1.0], "vectors": [[1.0]]}]}, 422,
     "$.vectors[0]"),
    ("PUT", f"{P}/pl/documents/doc/vectors", {"vectors": [{"id": "c1", "vector": ["x"]}]}, 422, "$.vectors[0].vector"),
    ("PUT", f"{P}/pl/documents/doc/vectors", {"vectors": [{"id": "c1", "vector": [1.0],
                                                          "attributes": {"_hevlayer_x": 1}}]}, 422, "_hevlayer_x"),
    ("PUT", f"{P}/pl/documents/doc/vectors", {}, 422, "vectors"),
    ("POST", U, {"id": "u2"}, 422, "spec"),
    ("POST", U, {"id": "u2", "spec": {}}, 422, "worker"),
    ("POST", U, {"id": "-bad", "spec": SPEC}, 422, "$.id"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "triggers": ["schedule"]}}, 422, "$.spec.triggers[0]"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "version": ""}}, 422, "version"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "retry": {"max_attempts": 0}}}, 422, "retry.max_attempts"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "retry": {"initial_backoff_seconds": -1}}}, 422, "initial_backoff"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "retry": {"initial_backoff_seconds": 9, "max_backoff_seconds": 2}}},
     422, "retry"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "schedule": {"lease_seconds": 0}}}, 422, "schedule.lease_seconds"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "schedule": {"discovery_interval_seconds": 0}}}, 422,
     "discovery_interval_seconds"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "inputs": ["$dist"]}}, 422, "$.spec.inputs[0]"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "invalidates": ["u2"]}}, 422, "invalidates"),
    ("POST", U, {"id": "u2", "spec": {**SPEC, "worker": {"batch_size": "x"}}}, 422, "$.spec.worker.batch_size"),
    ("PUT", f"{U}/fn", {"spec": {**SPEC, "target_namespaces": [""]}}, 422, "target_namespaces[0]"),
    ("POST", f"{U}/fn/discover", {"page_size": 0}, 422, "$.page_size"),
    ("POST", f"{U}/fn/discover", {"namespaces": ["other"]}, 422, "$.namespaces[0]"),
    ("POST", f"{U}/fn/claim", {}, 422, "worker_id"),
    ("POST", f"{U}/fn/claim", {"worker_id": "w", "limit": 0}, 422, "$.limit"),
    ("POST", f"{U}/fn/claim", {"worker_id": "w", "lease_seconds": -1}, 422, "$.lease_seconds"),
    ("POST", f"{U}/fn/items/heartbeat", {"worker_id": "w", "items": [{"id": "x"}]}, 422, "namespace"),
    ("POST", f"{U}/fn/items/complete", {"worker_id": "w", "items": [{"namespace": "goods", "id": "x",
                                                                     "attributes": {"_hevlayer_udf_fn_v": "x"}}]},
     422, "_hevlayer_udf_fn_v"),
    ("POST", f"{U}/fn/items/complete", {"worker_id": "w", "items": [{"namespace": "goods", "id": "x",
                                                                     "attributes": {"vector": [1]}}]}, 422, "vector"),
    ("POST", f"{U}/fn/items/complete", {"worker_id": "w", "items": [{"namespace": "goods", "id": "x",
                                                                     "vector": [1.0], "vectors": [[1.0]]}]}, 422,
     "$.items[0]"),
    ("POST", f"{U}/fn/items/fail", {"worker_id": "w", "items": [{"namespace": "goods", "id": "x", "kind": "oops"}]},
     422, "$.items[0].kind"),
    ("POST", f"{U}/fn/items/fail", {"worker_id": "w", "items": "x"}, 422, "$.items"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), BAD_INPUT,
                         ids=[f"{m} {p.split('/v2/')[1]} {n}" for m, p, _, _, n in BAD_INPUT])
def test_bad_input_names_the_field(stack: QueueStack, method: str, path: str, body: Any, status: int,
                                   needle: str) -> None:
    got, answer = http(stack.url, method, path, raw=body.encode() if isinstance(body, str) else None,
                       body=None if isinstance(body, str) else body)
    assert got == status, answer
    assert needle in answer["message"], answer
    assert answer["error"] == "validation_error"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _, _, _ in BAD_INPUT][:1] + [
    ("POST", P), ("PUT", f"{P}/pl/documents/d"), ("POST", f"{P}/pl/claim"), ("POST", f"{U}/fn/claim"),
    ("POST", f"{U}/fn/items/complete"), ("POST", U)])
def test_malformed_json_is_400(stack: QueueStack, method: str, path: str) -> None:
    status, answer = http(stack.url, method, path, raw=b'{"id": ')
    assert (status, answer["error"]) == (400, "bad_request"), answer


UNKNOWN = [("GET", f"{P}/nope/status", None), ("DELETE", f"{P}/nope", None),
           ("PUT", f"{P}/nope/documents/d", {"chunks": []}), ("GET", f"{P}/nope/documents/d/chunks", None),
           ("GET", f"{P}/pl/documents/nope/chunks", None), ("POST", f"{P}/nope/claim", {"worker_id": "w"}),
           ("POST", f"{P}/nope/documents/heartbeat", {"document_ids": ["d"], "worker_id": "w"}),
           ("POST", f"{P}/nope/documents/stage", {"document_ids": ["d"], "stage": "x"}),
           ("PUT", f"{P}/nope/documents/d/vectors", {"vectors": []}),
           ("PUT", f"{P}/pl/documents/nope/vectors", {"vectors": []}),
           ("GET", f"{U}/nope", None), ("GET", f"{U}/nope/status", None), ("DELETE", f"{U}/nope", None),
           ("POST", f"{U}/nope/pause", None), ("POST", f"{U}/nope/resume", None),
           ("POST", f"{U}/nope/reset-failed", None), ("POST", f"{U}/nope/discover", {}),
           ("POST", f"{U}/nope/claim", {"worker_id": "w"}),
           ("POST", f"{U}/nope/items/heartbeat", {"worker_id": "w", "items": []}),
           ("POST", f"{U}/nope/items/complete", {"worker_id": "w", "items": []}),
           ("POST", f"{U}/nope/items/fail", {"worker_id": "w", "items": []})]


@pytest.mark.parametrize(("method", "path", "body"), UNKNOWN, ids=[f"{m} {p}" for m, p, _ in UNKNOWN])
def test_unknown_ids_are_404(stack: QueueStack, method: str, path: str, body: Any) -> None:
    status, answer = http(stack.url, method, path, body)
    assert (status, answer["error"]) == (404, "not_found"), answer
    assert "nope" in answer["message"]


def test_conflicts(stack: QueueStack) -> None:
    assert http(stack.url, "POST", U, {"id": "fn", "spec": SPEC})[0] == 409
    status, answer = http(stack.url, "POST", U, {"id": "f-x", "spec": SPEC})
    assert status == 200
    status, answer = http(stack.url, "POST", U, {"id": "f_x", "spec": SPEC})
    assert (status, answer["error"]) == (409, "conflict") and "_hevlayer_udf_f_x" in answer["message"]
    assert http(stack.url, "POST", U, {"id": "c1", "spec": {**SPEC, "invalidates": ["c2"]}})[0] == 200
    status, answer = http(stack.url, "POST", U, {"id": "c2", "spec": {**SPEC, "invalidates": ["c1"]}})
    assert status == 422 and "c2 -> c1 -> c2" in answer["message"], answer
    for udf_id in ("f-x", "c1"):
        assert http(stack.url, "DELETE", f"{U}/{udf_id}")[0] == 200


def test_minted_key_grants_apply_to_target_namespaces(stack: QueueStack) -> None:
    def mint(scopes: list[str], globs: list[str]) -> str:
        status, body = http(stack.url, "POST", "/v2/keys", {"name": f"k-{'-'.join(scopes)}-{globs[0]}",
                                                            "entitlements": {"vectorstore.default": {
                                                                "scopes": scopes, "namespaces": globs}}})
        assert status in (200, 201), body
        return str(body["token"])

    goods_rw, other_rw, goods_r = mint(["read", "write"], ["goods"]), mint(["read", "write"], ["other*"]), \
        mint(["read"], ["goods"])
    assert http(stack.url, "GET", f"{P}/pl/status", key=goods_r)[0] == 200
    assert http(stack.url, "POST", f"{P}/pl/claim", {"worker_id": "w", "limit": 1}, key=goods_r)[0] == 403
    status, answer = http(stack.url, "GET", f"{P}/pl/status", key=other_rw)
    assert status == 403 and "goods" in answer["message"], answer
    assert [p["id"] for p in http(stack.url, "GET", P, key=other_rw)[1]["pipelines"]] == []
    assert [p["id"] for p in http(stack.url, "GET", P, key=goods_r)[1]["pipelines"]] == ["pl"]
    assert http(stack.url, "POST", f"{U}/fn/claim", {"worker_id": "w"}, key=other_rw)[0] == 403
    assert http(stack.url, "POST", f"{U}/fn/claim", {"worker_id": "w"}, key=goods_rw)[0] == 200
    item = {"worker_id": "w", "items": [{"namespace": "goods", "id": "x"}]}
    assert http(stack.url, "POST", f"{U}/fn/items/heartbeat", item, key=other_rw)[0] == 403
    assert http(stack.url, "POST", f"{U}/fn/items/heartbeat", item, key=goods_rw)[0] == 200
    for method, path, body in (("POST", P, {"id": "p9", "target_namespace": "goods"}), ("DELETE", f"{P}/pl", None),
                               ("POST", U, {"id": "u9", "spec": SPEC}), ("PUT", f"{U}/fn", {"spec": SPEC}),
                               ("POST", f"{U}/fn/discover", {}), ("POST", f"{U}/fn/pause", None)):
        assert http(stack.url, method, path, body, key=goods_rw)[0] == 403, (method, path)
    assert http(stack.url, "GET", f"{P}/pl/status", key="wrong")[0] == 401


def test_filter_write_triggers_a_rerun_of_the_rows_it_patched(stack: QueueStack) -> None:
    spec = {"target_namespaces": ["trig"], "inputs": ["title"], "worker": {}, "triggers": ["write"]}
    assert http(stack.url, "POST", U, {"id": "trig", "spec": spec})[0] == 200
    assert http(stack.url, "POST", "/v2/namespaces/trig", {"upsert_rows": [{"id": 1, "title": "a"},
                                                                           {"id": 2, "title": "b"}]})[0] == 200

    def pending() -> int:
        return int(http(stack.url, "GET", f"{U}/trig/status")[1]["pending_count"])

    deadline = time.monotonic() + 30
    while pending() != 2 and time.monotonic() < deadline:  # the other worker learns of the UDF within a second
        time.sleep(0.05)
        http(stack.url, "POST", "/v2/namespaces/trig", {"upsert_rows": [{"id": 1, "title": "a"},
                                                                        {"id": 2, "title": "b"}]})
    assert pending() == 2
    claimed = http(stack.url, "POST", f"{U}/trig/claim", {"worker_id": "w"})[1]["items"]
    assert sorted(i["id"] for i in claimed) == ["1", "2"]
    status, body = http(stack.url, "POST", "/v2/namespaces/trig", {
        "patch_by_filter": {"filters": ["id", "Eq", 2], "patch": {"title": "B"}}})
    assert status == 200, body
    done = http(stack.url, "POST", f"{U}/trig/items/complete", {"worker_id": "w", "items": [
        {"namespace": "trig", "id": i["id"], "attributes": {"seen": True}} for i in claimed]})[1]
    assert done["updated"] == 1  # row 2 changed since its claim: not written, pending again for its new title
    deadline = time.monotonic() + 30
    while pending() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    again = http(stack.url, "POST", f"{U}/trig/claim", {"worker_id": "w"})[1]["items"]
    assert again == [{"namespace": "trig", "id": "2", "input": {"title": "B"}}]
    assert http(stack.url, "DELETE", f"{U}/trig")[0] == 200


def test_metrics_count_claims_completions_failures_and_sweeps(stack: QueueStack) -> None:
    spec = {"target_namespaces": ["met"], "inputs": ["id"], "worker": {}, "retry": {"max_attempts": 1}}
    assert http(stack.url, "POST", "/v2/namespaces/met", {"upsert_rows": [{"id": i, "x": i} for i in range(3)]})[0] \
        == 200
    assert http(stack.url, "POST", U, {"id": "met", "spec": spec})[0] == 200
    assert http(stack.url, "POST", f"{U}/met/discover", {})[1]["enqueued"] == 3
    items = http(stack.url, "POST", f"{U}/met/claim", {"worker_id": "w"})[1]["items"]
    ids = [i["id"] for i in items]
    http(stack.url, "POST", f"{U}/met/items/complete", {"worker_id": "w", "items": [
        {"namespace": "met", "id": ids[0]}]})
    http(stack.url, "POST", f"{U}/met/items/fail", {"worker_id": "w", "items": [
        {"namespace": "met", "id": ids[1], "kind": "permanent"}, {"namespace": "met", "id": ids[2],
                                                                  "kind": "transient"}]})
    wanted = ['layer_queue_claimed_total{id="met",queue="udf"} 3.0',
              'layer_queue_completed_total{id="met",queue="udf"} 1.0',
              'layer_udf_failures_total{kind="permanent",udf="met"} 1.0',
              'layer_udf_failures_total{kind="max_attempts",udf="met"} 1.0',
              'layer_udf_discovery_sweeps_total{status="ok",trigger="manual",udf="met"} 1.0',
              'layer_udf_stage_count{stage="failed",udf="met"} 2.0']
    deadline = time.monotonic() + 30
    while True:
        text = http(str(stack.gw.ops_url), "GET", "/metrics", key=None)[1]
        missing = [w for w in wanted if w not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, missing


def _drain(stack: QueueStack, udf_id: str, ns: str) -> int:
    items = http(stack.url, "POST", f"{U}/{udf_id}/claim", {"worker_id": "w"})[1]["items"]
    done = [{"namespace": ns, "id": i["id"], "attributes": {f"out_{udf_id}": 1}} for i in items]
    return int(http(stack.url, "POST", f"{U}/{udf_id}/items/complete", {"worker_id": "w", "items": done})[1]["updated"])


def test_invalidates_marks_the_dependent_udf_stale(stack: QueueStack) -> None:
    assert http(stack.url, "POST", "/v2/namespaces/inv", {"upsert_rows": [{"id": "r1", "x": 1}]})[0] == 200
    for udf_id, deps in (("inv-b", []), ("inv-a", ["inv-b"])):
        spec = {"target_namespaces": ["inv"], "inputs": ["id"], "worker": {}, "invalidates": deps}
        assert http(stack.url, "POST", U, {"id": udf_id, "spec": spec})[0] == 200
    assert http(stack.url, "POST", f"{U}/inv-b/discover", {})[1]["enqueued"] == 1
    assert _drain(stack, "inv-b", "inv") == 1
    assert http(stack.url, "POST", f"{U}/inv-b/discover", {})[1]["enqueued"] == 0  # done at v1
    assert http(stack.url, "POST", f"{U}/inv-a/discover", {})[1]["enqueued"] == 1
    assert _drain(stack, "inv-a", "inv") == 1
    row = http(stack.url, "POST", "/v2/namespaces/inv/query", {"rank_by": ["id", "asc"], "top_k": 1,
                                                               "include_attributes": True})[1]["rows"][0]
    assert isinstance(row["_hevlayer_udf_inv_b_stale_after"], int) and row["_hevlayer_udf_inv_a_v"] == "v1"
    assert http(stack.url, "POST", f"{U}/inv-b/discover", {})[1]["enqueued"] == 1  # b's output is stale now
    assert _drain(stack, "inv-b", "inv") == 1
    assert http(stack.url, "POST", f"{U}/inv-b/discover", {})[1]["enqueued"] == 0


def test_scheduled_discovery_sweeps_without_a_call(stack: QueueStack) -> None:
    assert http(stack.url, "POST", "/v2/namespaces/sched", {"upsert_rows": [{"id": 1, "x": 1}, {"id": 2}]})[0] == 200
    spec = {"target_namespaces": ["sched"], "inputs": ["id"], "worker": {},
            "schedule": {"discovery_interval_seconds": 1}}
    assert http(stack.url, "POST", U, {"id": "sched", "spec": spec})[0] == 200
    deadline = time.monotonic() + 30
    while True:
        status = http(stack.url, "GET", f"{U}/sched/status")[1]
        if status["discovery"]["sweeps_completed"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["discovery"]["sweeps_completed"] >= 1 and status["pending_count"] == 2, status
    assert http(stack.url, "DELETE", f"{U}/sched")[0] == 200
