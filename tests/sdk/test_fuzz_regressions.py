"""Failures `just fuzz` (schemathesis) found, kept as regression tests against the real gateway."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml
from support.procs import STORE_KEY

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"authorization": f"Bearer {STORE_KEY}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def matches(schema_name: str, value: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    return jsonschema_rs.Draft202012Validator(schema).is_valid(value)


def test_hint_cache_warm_with_options_on_a_missing_namespace_is_404_not_502(gateway_stack) -> None:
    """Found: the orchestrated warm wrapped Turbopuffer's 404 into a 502 upstream_error (a server error)."""
    gw, _ = gateway_stack
    status, _, body = call(gw.url + "/v1/namespaces/no-such-ns/hint_cache_warm?turbopuffer=true&documents=false")
    assert status == 404 and "no-such-ns" in body["error"], body  # Turbopuffer's own 404, relayed (issue 10 §4)
    status, _, _ = call(gw.url + "/v1/namespaces/no-such-ns/hint_cache_warm")  # the raw passthrough agrees
    assert status == 404


def test_v1_metadata_has_no_id_and_still_matches_the_spec(gateway_stack) -> None:
    """Found: Turbopuffer's v1 metadata carries no `id`, which the spec (and hevlayer 0.7.3's model) required."""
    gw, _ = gateway_stack
    assert call(gw.url + "/v2/namespaces/meta-ns", "POST", {"upsert_rows": [{"id": 1, "vector": [1.0, 0.0]}],
                                                            "distance_metric": "cosine_distance"})[0] == 200
    status, _, v1 = call(gw.url + "/v1/namespaces/meta-ns/metadata")
    assert status == 200 and "id" not in v1
    assert matches("NamespaceMetadata", v1)
    status, _, v2 = call(gw.url + "/v2/namespaces/meta-ns/metadata")
    assert status == 200 and v2["id"] == "meta-ns" and matches("NamespaceMetadata", v2)
    assert not matches("NamespaceMetadata", {"id": "x"})  # the schema is not vacuous
