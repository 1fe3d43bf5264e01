"""The published hevlayer==0.7.3 client against the gateway (layer.md §1.5, §1.6, §2.2, §3.3, §3.7, §3.9).

The project's own client owns the import name `hevlayer` now, so the published one runs in its own virtual
environment (tests/support/published_client.py) through published/hevlayer_scenarios.py; these tests assert on
what it returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.published_client import run_published

from .conftest import Target, unique_ns

SCENARIOS = Path(__file__).resolve().parent / "published" / "hevlayer_scenarios.py"


def published(scenario: str, target: Target, ns: str) -> dict[str, Any]:
    out = run_published(SCENARIOS, scenario, target.url, target.api_key, ns)
    assert out["hevlayer"]["version"] == "0.7.3" and "clients/python" not in out["hevlayer"]["file"], out["hevlayer"]
    return out  # type: ignore[no-any-return]


def test_layer_query_headers_cursor_and_filters(gateway_target: Target) -> None:
    out = published("query", gateway_target, unique_ns("hev-query"))
    assert (out["seed"]["status"], out["seed"]["rows_affected"]) == ("OK", 3)
    first = out["first"]
    assert first["type"] == "QueryResponse"
    assert out["seed"]["started_ms"] - 5_000 <= first["stable_as_of"] <= first["now_ms"]
    assert [r["id"] for r in first["rows"]] == ["a", "b"]
    assert first["rows"][0]["$dist"] == pytest.approx(0.0, abs=1e-6)
    assert first["rows"][0]["$dist"] <= first["rows"][1]["$dist"]
    assert [r["color"] for r in first["rows"]] == ["red", "blue"]
    assert all("vector" not in r for r in first["rows"])
    assert first["next_cursor"], "a full page must carry x-layer-next-cursor"
    assert [r["id"] for r in out["second"]["rows"]] == ["c"]
    assert out["second"]["next_cursor"] is None  # short page: no cursor
    assert out["red_ids"] == ["a", "c"]
    assert out["near_ids"] == ["b"]
    assert out["perf"]["type"] == "LayerResponse" and out["perf"]["latency_ms"] > 0 and out["perf"]["ids"] == ["c"]


def test_layer_query_errors(gateway_target: Target) -> None:
    out = published("errors", gateway_target, unique_ns("hev-errors"))
    assert out["missing_id"] == {"status": 404, "error": "not_found"}
    assert out["both"] == {"status": 422, "error": "validation_error"}
    assert out["neither"] == {"status": 400, "error": "query must have rank_by, filters or aggregate_by"}  # relayed


def test_turbopuffer_query_passthrough(gateway_target: Target) -> None:
    out = published("passthrough", gateway_target, unique_ns("hev-tpuf"))
    assert out["type"] == out["agg_type"] == "TurbopufferQueryResponse"
    assert out["rows"] == [{"id": "a", "color": "red"}, {"id": "b", "color": "blue"}, {"id": "c", "color": "red"}]
    assert out["aggregations"] == {"n": 3}


def test_metadata_layer_block(gateway_target: Target) -> None:
    ns = unique_ns("hev-meta")
    out = published("metadata", gateway_target, ns)
    assert out["type"] == "NamespaceMetadata"
    assert out["id"] == ns and out["approx_row_count"] == 3
    assert "vector" in out["schema_keys"] and "color" in out["schema_keys"]
    layer = out["layer"]
    assert layer["stable_as_of"] is not None
    assert out["seed"]["started_ms"] - 5_000 <= layer["stable_as_of"] <= out["now_ms"]
    assert layer["schema_version"] == 1
    # upstream's own 404 body, relayed (issue 10 §4): `error` is Turbopuffer's message
    assert out["missing"]["status"] == 404 and f"namespace '{ns}-missing'" in out["missing"]["error"]


def test_list_namespaces(gateway_target: Target) -> None:
    out = published("listing", gateway_target, unique_ns("hev-list"))
    assert out["type"] == "NamespaceList"
    assert [e["name"] for e in out["entries"]] == out["names"]
    for entry in out["entries"]:
        assert entry["row_count"] == 3
        assert entry["cache_state"] is not None
        assert entry["shadow"] is False and entry["labels"] == {}
        assert entry["schema_summary"] is not None and entry["schema_summary"]["vector_dim"] == 2
        assert entry["metadata_error"] is None
    assert out["page"] == out["names"][:1] and out["page_cursor"]
    assert out["rest"] == out["names"][1:]


def test_delete_namespace(gateway_target: Target) -> None:
    out = published("delete", gateway_target, unique_ns("hev-delete"))
    assert out["status"] == "OK"
    assert out["metadata_after"]["status"] == 404
    assert out["listed_after"] == []

