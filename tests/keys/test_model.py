"""Mint validation, durations, tokens and entitlements -> grants (plain functions, no processes)."""

from __future__ import annotations

import pytest

from gateway.auth import Grant, authorize
from gateway.http import GatewayError
from gateway.keys.model import (
    Entitlement,
    KeyRecord,
    KeyValidationError,
    MintKeyRequest,
    duration_seconds,
    validate_mint,
)
from gateway.keys.tokens import lookup_hash, new_token, well_formed
from gateway.keys.verifier import principal_for

STORES = frozenset({"vectorstore.default"})


@pytest.mark.parametrize(("text", "seconds"), [("12h", 43200), ("365d", 31536000), ("30m", 1800), ("2w", 1209600),
                                               ("1y", 31536000), ("never", None)])
def test_durations(text: str, seconds: int | None) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "12", "h", "-1d", "1.5h", "12 h", "forever", "365D"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(KeyValidationError, match="expiresAfter"):
        duration_seconds(text)


@pytest.mark.parametrize(("ents", "match"), [
    ({"vectorstore.prod": Entitlement(scopes=["read"])}, "unknown vectorstore"),
    ({"tpuf": Entitlement(scopes=["read"])}, "entitlement target"),
    ({"layer": Entitlement(scopes=["delete"])}, "Expected `read`, `write` or `admin`"),
    ({"layer": Entitlement(scopes=["read"], namespaces=[""])}, "namespace globs"),
    ({"layer": Entitlement(scopes=["read"], namespaces=["a/b"])}, "namespace globs"),
])
def test_bad_entitlements(ents: dict[str, Entitlement], match: str) -> None:
    with pytest.raises(KeyValidationError, match=match):
        validate_mint(MintKeyRequest(name="k", entitlements=ents), STORES)


def test_mint_defaults_and_name() -> None:
    assert validate_mint(MintKeyRequest(name="k", expires_after=None), STORES) == "365d"
    assert validate_mint(MintKeyRequest(name="k", entitlements={"agent.x": Entitlement(claims=["c"])}), STORES)
    with pytest.raises(KeyValidationError, match="name"):
        validate_mint(MintKeyRequest(name="  "), STORES)


def test_tokens_are_random_base62_and_only_hashed() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(well_formed(t) and len(t) == 44 for t in tokens)
    t = tokens.pop()
    assert lookup_hash(t).startswith("sha256:") and t[4:] not in lookup_hash(t)
    assert not well_formed("hvl_short") and not well_formed("hvl_" + "a" * 39 + "!") and not well_formed("x" * 44)


def _rec(ents: dict[str, Entitlement]) -> KeyRecord:
    return KeyRecord(key_id="id", name="svc", lookup_hash="sha256:0", entitlements=ents, expires_after="never",
                     created_ms=0)


def test_principal_from_entitlements() -> None:
    p = principal_for(_rec({
        "vectorstore.default": Entitlement(scopes=["read"], namespaces=["cohort-*"]),
        "layer": Entitlement(scopes=["write"]),
        "warehouse.w": Entitlement(scopes=["admin"]),  # grants nothing at this gateway
    }))
    assert not p.admin and p.key_id == "id"
    assert set(p.grants) == {Grant(frozenset({"write"}), ("*",)), Grant(frozenset({"read"}), ("cohort-*",))}
    authorize(p, "read", "cohort-7")
    authorize(p, "write", "anything")
    with pytest.raises(GatewayError) as denied:
        authorize(p, "read", "products")
    assert denied.value.status == 403 and denied.value.extra == {"required_scope": "read"}
    assert principal_for(_rec({"layer": Entitlement(scopes=["admin"])})).admin
    assert not principal_for(_rec({"vectorstore.default": Entitlement(scopes=["admin"])})).admin
    assert principal_for(_rec({"layer": Entitlement(scopes=["read"], namespaces=[])})).grants[0].namespaces == ()
