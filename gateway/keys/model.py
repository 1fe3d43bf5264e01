"""Key records and the wire bodies of the /v2/keys routes (shapes of the published hevlayer 0.7.3 client)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import msgspec
from msgspec import Struct

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = frozenset({READ, WRITE, ADMIN})
LAYER_TARGET = "layer"
DEFAULT_STORE_TARGET = "vectorstore.default"
# Targets the CRD accepts; only `layer` and the configured store grant anything at this gateway.
TARGET_RE = re.compile(r"^(layer|(vectorstore|warehouse|agent)\.[a-z0-9]([a-z0-9._-]{0,62}))$")
DURATION_RE = re.compile(r"^([1-9][0-9]{0,5})([smhdwy])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
DEFAULT_EXPIRES_AFTER = "365d"
NEVER = "never"
ACTIVE, REVOKED, EXPIRED = "Active", "Revoked", "Expired"


class Entitlement(Struct, omit_defaults=True, frozen=True):
    scopes: list[str] | None = None
    namespaces: list[str] | None = None
    claims: list[str] | None = None


class KeyRecord(Struct, frozen=True):
    """One key as stored (never holds the token; `lookup_hash` is `sha256:<hex>` of it). Times are epoch ms."""

    key_id: str
    name: str
    lookup_hash: str
    entitlements: dict[str, Entitlement]
    expires_after: str
    created_ms: int
    owner: str | None = None
    description: str | None = None
    expires_ms: int | None = None
    revoked_ms: int | None = None
    last_seen_ms: int | None = None

    def phase(self, now_ms: int) -> str:
        if self.revoked_ms is not None:
            return REVOKED
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return EXPIRED
        return ACTIVE


class MintKeyRequest(Struct, rename="camel"):
    name: str
    owner: str | None = None
    description: str | None = None
    entitlements: dict[str, Entitlement] | None = None
    expires_after: str | None = DEFAULT_EXPIRES_AFTER


class ApiKey(Struct, rename="camel", omit_defaults=True):
    key_id: str
    name: str
    entitlements: dict[str, Entitlement]
    phase: str
    created_at: str
    owner: str | None = None
    description: str | None = None
    expires_after: str | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    last_seen_at: str | None = None


class MintKeyResponse(Struct, rename="camel", omit_defaults=True):
    key_id: str
    name: str
    entitlements: dict[str, Entitlement]
    phase: str
    created_at: str
    token: str
    owner: str | None = None
    description: str | None = None
    expires_after: str | None = None
    expires_at: str | None = None


class ApiKeyList(Struct):
    keys: list[ApiKey]


class AuthenticateKeyRequest(Struct):
    token: str


class AuthenticateKeyResponse(Struct, rename="camel", omit_defaults=True):
    key_id: str
    name: str
    entitlements: dict[str, Entitlement]
    owner: str | None = None
    expires_at: str | None = None


class StatusResponse(Struct, omit_defaults=True):
    status: str  # required, so omit_defaults never drops it
    message: str | None = None


mint_request_decoder = msgspec.json.Decoder(MintKeyRequest)
authenticate_request_decoder = msgspec.json.Decoder(AuthenticateKeyRequest)
record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(KeyRecord)


class KeyValidationError(ValueError):
    """A mint request is invalid; the message is safe to return (it never contains a token)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def duration_seconds(text: str) -> int | None:
    """`12h`, `365d`, `2w`, `1y` -> seconds; `never` -> None. Raises KeyValidationError otherwise."""
    if text == NEVER:
        return None
    m = DURATION_RE.match(text)
    if m is None:
        raise KeyValidationError(f"expiresAfter must look like `12h`, `365d` or `never`, got {text!r}")
    return int(m.group(1)) * UNIT_SECONDS[m.group(2)]


def validate_entitlements(ents: dict[str, Entitlement], store_targets: frozenset[str]) -> None:
    for target, ent in ents.items():
        if not TARGET_RE.match(target):
            raise KeyValidationError(
                f"entitlement target must be `layer` or `vectorstore.<name>`, got {target!r} - at `$.entitlements`")
        if target.startswith("vectorstore.") and target not in store_targets:
            known = ", ".join(sorted(store_targets))
            raise KeyValidationError(f"unknown vectorstore {target!r}; this gateway serves {known}")
        for scope in ent.scopes or ():
            if scope not in SCOPES:
                raise KeyValidationError(
                    f"Expected `read`, `write` or `admin`, got {scope!r} - at `$.entitlements.{target}.scopes`")
        for glob in ent.namespaces or ():
            if not glob or len(glob) > 256 or "/" in glob:
                raise KeyValidationError(
                    f"namespace globs must be 1-256 characters without `/`, got {glob!r}"
                    f" - at `$.entitlements.{target}.namespaces`")


def validate_mint(req: MintKeyRequest, store_targets: frozenset[str]) -> str:
    """Check a mint request; returns the effective expiresAfter."""
    name = req.name.strip()
    if not name or len(name) > 128:
        raise KeyValidationError("name must be 1-128 characters - at `$.name`")
    expires_after = req.expires_after or DEFAULT_EXPIRES_AFTER
    duration_seconds(expires_after)
    validate_entitlements(req.entitlements or {}, store_targets)
    return expires_after


def api_key(rec: KeyRecord, now: int) -> ApiKey:
    return ApiKey(
        key_id=rec.key_id, name=rec.name, entitlements=rec.entitlements, phase=rec.phase(now),
        created_at=rfc3339(rec.created_ms) or "", owner=rec.owner, description=rec.description,
        expires_after=rec.expires_after, expires_at=rfc3339(rec.expires_ms), revoked_at=rfc3339(rec.revoked_ms),
        last_seen_at=rfc3339(rec.last_seen_ms),
    )
