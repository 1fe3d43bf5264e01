"""Operational routes: /health, /ready, /metrics and /openapi.yaml (public)."""

from __future__ import annotations

import inspect
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway import metrics
from gateway.http import Ctx, GatewayError, Response, json_response
from gateway.router import RouteSpec
from gateway.state import WorkerState

VERSION = "0.1.0"
METRICS_HEADERS = [("content-type", metrics.CONTENT_TYPE)]
# The repository's openapi.yaml (the single source of truth for routes and clients), served as it is on disk.
SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC_HEADERS = [("content-type", "application/yaml")]
NO_CACHE = {"aerospike": {"connected": False, "generation": 0}, "cache_state": []}


async def cache_health(state: WorkerState) -> dict[str, Any]:
    """The cache's part of /health: `aerospike` and `cache_state` (cache.health() when the cache provides it)."""
    health = getattr(state.cache, "health", None)
    if health is None:
        return dict(NO_CACHE)
    result = health()
    return await result if inspect.isawaitable(result) else result


async def _body(state: WorkerState, status: str) -> dict[str, Any]:
    up = state.upstream
    body: dict[str, Any] = {"status": status, "version": VERSION}
    body["upstream"] = {
        "host": urlsplit(up.base_url).netloc,
        "mode": "embedded" if state.config.embedded else "configured",
        "auth": "store_key" if up.store_key else "derive_from_request",
        "last_ok_ms": up.last_ok_ms,
        **({"last_error": up.last_error} if up.last_error else {}),
    }
    body.update(await cache_health(state))
    body["worker"] = {"pid": state.pid, "inflight": state.inflight, "watched_namespaces": len(state.watcher.namespaces)}
    return body


async def health(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, await _body(state, "ok"))


async def ready(ctx: Ctx, state: WorkerState) -> Response:
    if state.draining:
        return json_response(503, {"status": "draining", "version": VERSION})
    return json_response(200, await _body(state, "ok"))


async def metrics_route(ctx: Ctx, state: WorkerState) -> Response:
    return Response(200, metrics.render(), METRICS_HEADERS)


@cache
def _spec() -> bytes | None:
    try:
        return SPEC_PATH.read_bytes()
    except OSError:
        return None


async def openapi_spec(ctx: Ctx, state: WorkerState) -> Response:
    spec = _spec()
    if spec is None:
        raise GatewayError("not_found", "openapi.yaml is not installed next to this gateway", status=404)
    return Response(200, spec, SPEC_HEADERS)


ROUTES = (
    RouteSpec("GET", "/health", health),
    RouteSpec("GET", "/ready", ready),
    RouteSpec("GET", "/metrics", metrics_route),
    RouteSpec("GET", "/openapi.yaml", openapi_spec),
)
