"""The published hevlayer 0.7.3 key methods, the official turbopuffer client with a minted key, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import turbopuffer
from keys_support import STORE_KEY, Stack, call
from support.published_client import run_published

from gateway.keys import cli

PUBLISHED_SCENARIOS = Path(__file__).resolve().parents[1] / "compat" / "published" / "hevlayer_scenarios.py"


def test_hevlayer_key_methods_unchanged(stack: Stack) -> None:
    """The published client's key methods, run in its own environment (tests/support/published_client.py)."""
    out = run_published(PUBLISHED_SCENARIOS, "keys", stack.url, STORE_KEY, "-")
    assert out["hevlayer"]["version"] == "0.7.3"
    assert out["types"] == ["MintKeyResponse", "ApiKey", "ApiKeyList", "AuthenticateKeyResponse", "ApiKey",
                            "StatusResponse"]
    minted = out["minted"]
    assert minted["token"].startswith("hvl_") and len(minted["token"]) >= 36
    assert minted["phase"] == "Active" and minted["expiresAfter"] == "12h" and minted["expiresAt"]
    assert minted["entitlements"]["vectorstore.default"]["namespaces"] == ["products*"]
    got = out["got"]
    assert got["name"] == "search-svc" and got["owner"] == "team-search"
    assert "token" not in got and got["lookupHash"] is None
    assert minted["keyId"] in out["listed_ids"]
    assert out["auth"]["keyId"] == minted["keyId"]
    assert out["auth"]["entitlements"]["vectorstore.default"]["scopes"] == ["read"]
    assert out["bad_auth"]["status"] == 401
    assert out["revoked"]["phase"] == "Revoked" and out["revoked"]["revokedAt"]
    assert out["again_revoked_at"] == out["revoked"]["revokedAt"]  # idempotent, first time kept
    assert not out["active_has_it"] and out["all_has_it"]
    assert out["deleted_status"] == "OK"
    assert out["get_after_delete"]["status"] == 404
    assert out["bad_mint"] == {"status": 422, "error": "validation_error"}


def test_turbopuffer_client_with_minted_key_goes_upstream_with_store_key(stack: Stack) -> None:
    key = stack.mint("ingest", {"vectorstore.default": {"scopes": ["read", "write"], "namespaces": ["team-tp-*"]}})
    tpuf = turbopuffer.Turbopuffer(api_key=key["token"], base_url=stack.url, max_retries=0)
    try:
        # The local store only accepts the store key: this write succeeds only if the gateway swapped it in.
        ns = tpuf.namespace("team-tp-1")
        ns.write(upsert_rows=[{"id": "a", "vector": [0.1, 0.2]}, {"id": "b", "vector": [0.3, 0.1]}],
                 distance_metric="cosine_distance")
        rows = ns.query(rank_by=("vector", "ANN", [0.1, 0.2]), top_k=1).rows or []
        assert [r.id for r in rows] == ["a"]
        with pytest.raises(turbopuffer.PermissionDeniedError):
            tpuf.namespace("products").write(upsert_rows=[{"id": "a", "vector": [0.1, 0.2]}],
                                             distance_metric="cosine_distance")
        stack.admin("POST", "/v2/namespaces/other-tp", {"upsert_rows": [{"id": 1, "x": 1}]})
        listed = stack.call("GET", "/v2/namespaces", token=key["token"])
        assert listed[0] == 200
        names = [n["name"] for n in listed[1]["namespaces"]]
        assert "team-tp-1" in names and all(n.startswith("team-tp-") for n in names)
        v1_names = [n["id"] for n in stack.call("GET", "/v1/namespaces", token=key["token"])[1]["namespaces"]]
        assert "team-tp-1" in v1_names and all(n.startswith("team-tp-") for n in v1_names)
        assert "other-tp" in [n["id"] for n in stack.admin("GET", "/v1/namespaces")["namespaces"]]
        deadline = time.monotonic() + 3.0  # lastSeenAt is written in the background after first use
        while not stack.admin("GET", f"/v2/keys/{key['keyId']}").get("lastSeenAt"):
            assert time.monotonic() < deadline, "lastSeenAt was never set"
            time.sleep(0.05)
    finally:
        tpuf.close()


def _cli(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    rc = cli.main(["--url", stack.url, "--api-key", STORE_KEY, *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else None


def test_cli_mint_list_revoke_delete(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    rc, minted = _cli(stack, capsys, "mint", "--name", "cli-key", "--grant", "vectorstore.default:read,write:team-c*",
                      "--expires-after", "30d")
    assert rc == 0 and minted["token"].startswith("hvl_")
    assert minted["entitlements"] == {"vectorstore.default": {"scopes": ["read", "write"], "namespaces": ["team-c*"]}}
    assert stack.call("GET", "/v2/namespaces/team-c1/metadata", token=minted["token"])[0] not in (401, 403)
    rc, listed = _cli(stack, capsys, "list")
    assert rc == 0 and minted["keyId"] in {k["keyId"] for k in listed["keys"]}
    rc, revoked = _cli(stack, capsys, "revoke", minted["keyId"])
    assert rc == 0 and revoked["phase"] == "Revoked"
    rc, listed = _cli(stack, capsys, "list", "--include-revoked")
    assert {k["keyId"]: k["phase"] for k in listed["keys"]}[minted["keyId"]] == "Revoked"
    rc, status = _cli(stack, capsys, "delete", minted["keyId"])
    assert rc == 0 and status["status"] == "OK"
    assert cli.main(["--url", stack.url, "--api-key", STORE_KEY, "get", minted["keyId"]]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert cli.main(["--url", stack.url, "--api-key", "hvl_" + "Z" * 40, "list"]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_no_token_or_hash_in_logs_metrics_or_errors(stack: Stack) -> None:
    key = stack.mint("secretive", {"layer": {"scopes": ["read"]}})
    token = key["token"]
    wrong = token[:-2] + ("aa" if not token.endswith("aa") else "bb")
    bodies = [
        stack.call("GET", "/v2/namespaces/team-s/metadata", token=token)[1],
        stack.call("GET", "/v2/namespaces/team-s/metadata", token=wrong)[1],
        stack.call("POST", "/v2/namespaces/team-s", token=token, body={})[1],  # 403
        stack.call("POST", "/v2/keys/authenticate", body={"token": wrong})[1],
        stack.call("POST", "/v2/keys/authenticate", body={"token": token})[1],
        stack.admin("GET", f"/v2/keys/{key['keyId']}"),
        stack.admin("GET", "/v2/keys?includeRevoked=true"),
        stack.admin("POST", f"/v2/keys/{key['keyId']}/revoke"),
        stack.call("GET", "/v2/namespaces/team-s/metadata", token=token)[1],
    ]
    metrics = call(stack.gateway.ops_url, "GET", "/metrics")[1]
    log = Path(stack.gateway.log_path).read_text(errors="replace")
    assert '"principal": "secretive"' in log or "secretive" in log  # the access log is on and names the key
    secret_bits = [token, wrong, token[4:], "sha256:"]
    for where, text in [("responses", json.dumps(bodies)), ("metrics", str(metrics)), ("log", log)]:
        for bit in secret_bits:
            assert bit not in text, f"{bit[:8]}... found in {where}"
    assert STORE_KEY not in log and STORE_KEY not in str(metrics)
