"""Principals, scopes and the one table of route classes (read / write / admin / public) for every route."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Protocol

from msgspec import Struct

from gateway.body_namespaces import write_sources
from gateway.http import GatewayError

PUBLIC, READ, WRITE, ADMIN = "public", "read", "write", "admin"
NS = "/v2/namespaces/{ns}"
V1NS = "/v1/namespaces/{ns}"
PIPELINES, PIPELINE = "/v2/pipelines", "/v2/pipelines/{pipeline_id}"
UDFS, UDF = "/v2/udfs", "/v2/udfs/{udf_id}"

# (method, path template) -> route class. Every route the gateway serves, including the ones other modules add
# (documents, warm, keys); the router refuses to start if a route is missing here, so nothing escapes auth.
ROUTE_CLASSES: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/openapi.yaml"): PUBLIC,
    ("POST", "/v2/keys/authenticate"): PUBLIC,
    # Turbopuffer routes Layer enhances
    ("POST", NS): WRITE,
    ("DELETE", NS): WRITE,
    ("POST", NS + "/query"): READ,
    ("GET", NS + "/metadata"): READ,
    ("GET", "/v2/namespaces"): READ,
    ("GET", V1NS + "/hint_cache_warm"): READ,
    # Turbopuffer routes proxied verbatim
    ("GET", "/v1/namespaces"): READ,
    ("GET", V1NS + "/metadata"): READ,
    ("PATCH", V1NS + "/metadata"): WRITE,
    ("GET", V1NS + "/schema"): READ,
    ("POST", V1NS + "/schema"): WRITE,
    ("POST", V1NS + "/query"): READ,
    ("POST", NS + "/explain_query"): READ,
    ("POST", V1NS + "/_debug/recall"): READ,  # runs queries only; the original's "write" was a classifier accident
    ("POST", NS + "/async"): WRITE,
    ("GET", V1NS + "/operations/{op_id}"): READ,
    # Layer routes other modules serve
    ("GET", NS + "/documents/{doc_id}"): READ,
    ("POST", NS + "/documents"): READ,  # a batch fetch reads (fix of quirk §7.11)
    ("POST", NS + "/warm"): WRITE,
    ("GET", NS + "/warm-jobs"): READ,
    ("GET", NS + "/warm-jobs/{job_id}"): READ,
    ("POST", "/v2/keys"): ADMIN,
    ("GET", "/v2/keys"): ADMIN,
    ("GET", "/v2/keys/{key_id}"): ADMIN,
    ("POST", "/v2/keys/{key_id}/revoke"): ADMIN,
    ("DELETE", "/v2/keys/{key_id}"): ADMIN,
    # Pipelines and Functions (gateway/routes/pipelines.py, udfs.py). Namespace grants are checked by the handlers
    # against each pipeline's target namespace, each UDF's targets and each item's namespace.
    ("POST", PIPELINES): ADMIN,
    ("GET", PIPELINES): READ,
    ("DELETE", PIPELINE): ADMIN,
    ("GET", PIPELINE + "/status"): READ,
    ("PUT", PIPELINE + "/documents/{doc_id}"): WRITE,
    ("GET", PIPELINE + "/documents/{doc_id}/chunks"): READ,
    ("PUT", PIPELINE + "/documents/{doc_id}/vectors"): WRITE,
    ("POST", PIPELINE + "/claim"): WRITE,
    ("POST", PIPELINE + "/documents/heartbeat"): WRITE,
    ("POST", PIPELINE + "/documents/stage"): WRITE,
    ("POST", UDFS): ADMIN,
    ("GET", UDFS): READ,
    ("GET", UDF): READ,
    ("PUT", UDF): ADMIN,
    ("DELETE", UDF): ADMIN,
    ("GET", UDF + "/status"): READ,
    ("POST", UDF + "/pause"): ADMIN,
    ("POST", UDF + "/resume"): ADMIN,
    ("POST", UDF + "/reset-failed"): ADMIN,
    ("POST", UDF + "/discover"): ADMIN,
    ("POST", UDF + "/claim"): WRITE,
    ("POST", UDF + "/items/heartbeat"): WRITE,
    ("POST", UDF + "/items/complete"): WRITE,
    ("POST", UDF + "/items/fail"): WRITE,
}

# Routes that may answer without asking upstream (cache hits, warm jobs). In derive-from-request mode the gateway
# cannot judge a bearer itself, so these are served only to a bearer upstream has recently accepted for the
# namespace (gateway/verdicts.py). A new route that answers from local state must be listed here.
ANSWERED_LOCALLY: frozenset[tuple[str, str]] = frozenset({
    ("GET", NS + "/documents/{doc_id}"),
    ("POST", NS + "/documents"),
    ("POST", NS + "/warm"),
    ("GET", NS + "/warm-jobs"),
    ("GET", NS + "/warm-jobs/{job_id}"),
    ("GET", V1NS + "/hint_cache_warm"),
})

# Routes whose body may name other namespaces (copy/branch sources): each one needs read scope too.
BODY_NAMESPACES: dict[tuple[str, str], Callable[[bytes], list[str]]] = {
    ("POST", NS): write_sources,
    ("POST", NS + "/async"): write_sources,
}

MINTED_PREFIX = "hvl_"


class Grant(Struct, frozen=True):
    scopes: frozenset[str]
    namespaces: tuple[str, ...]  # globs; () = none


class Principal(Struct, frozen=True):
    name: str
    key_id: str | None
    admin: bool
    grants: tuple[Grant, ...] = ()


class KeyVerifier(Protocol):
    async def verify(self, token: str) -> Principal | None:
        """Called for every bearer starting with `hvl_`; returns the key's Principal, or None (-> 401)."""
        ...


STORE_ADMIN = Principal(name="store-key", key_id=None, admin=True)
# Derive-from-request mode: any bearer may read and write; it is the upstream's job to reject a bad key.
BEARER_CALLER = Principal(name="bearer", key_id=None, admin=False, grants=(Grant(frozenset({READ, WRITE}), ("*",)),))

MISSING_HEADER = GatewayError("unauthorized", "missing or malformed Authorization: Bearer header", status=401)
INVALID_KEY = GatewayError("invalid_api_key", "the API key is not valid", status=401)
# Derive-from-request mode has no upstream key for a scoped (minted) key to act with: such a bearer is refused here,
# never forwarded upstream, and the key routes say why instead of a bare 403.
SCOPED_KEY_WITHOUT_STORE_KEY = GatewayError(
    "scoped_keys_need_store_key",
    "scoped API keys (hvl_...) work only when the gateway has TURBOPUFFER_API_KEY; this gateway forwards each "
    "caller's own Turbopuffer key instead",
    status=401,
)
KEY_ROUTES_WITHOUT_STORE_KEY = GatewayError(
    "scoped_keys_need_store_key",
    "scoped API keys need TURBOPUFFER_API_KEY: without it the gateway forwards each caller's own Turbopuffer key and "
    "has no key of its own for a scoped key to act with",
    status=409,
)
KEY_ROUTE_PREFIX = "/v2/keys"


def bearer_token(header: str | None) -> str:
    if not header or not header.startswith("Bearer "):
        raise MISSING_HEADER
    token = header[7:].strip()
    if not token:
        raise MISSING_HEADER
    return token


def store_key_matches(token: str, store_key: str) -> bool:
    return hmac.compare_digest(token.encode(), store_key.encode())


def _grant_allows(grant: Grant, scope: str, namespace: str | None) -> bool:
    if scope not in grant.scopes and ADMIN not in grant.scopes:
        return False
    if namespace is None:
        return bool(grant.namespaces)
    return any(fnmatchcase(namespace, glob) for glob in grant.namespaces)


def authorize(principal: Principal, route_class: str, namespace: str | None) -> None:
    """Raise 403 unless the principal holds `route_class` scope on `namespace` (None = not namespaced)."""
    if principal.admin or route_class == PUBLIC:
        return
    if route_class != ADMIN and any(_grant_allows(g, route_class, namespace) for g in principal.grants):
        return
    where = f" on namespace '{namespace}'" if namespace is not None else ""
    raise GatewayError(
        "forbidden",
        f"key '{principal.name}' has no {route_class} scope{where}",
        status=403,
        extra={"required_scope": route_class},
    )


def can_read(principal: Principal | None, namespace: str) -> bool:
    """Whether a listing may show `namespace` to this caller (None = no auth configured)."""
    return principal is None or principal.admin or any(_grant_allows(g, READ, namespace) for g in principal.grants)
