"""Public operational routes: bare `/health` and `/ready` (status, version and the answering worker's pid, which
tests use to reach every worker) and `/openapi.yaml`. Metrics and detailed health live on the ops listener
(gateway/ops.py)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from gateway.health import VERSION
from gateway.http import Ctx, GatewayError, Response, json_response
from gateway.router import RouteSpec
from gateway.state import WorkerState

# The repository's openapi.yaml (the single source of truth for routes and clients), served as it is on disk.
SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC_HEADERS = [("content-type", "application/yaml")]


async def health(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, {"status": "ok", "version": VERSION, "worker": {"pid": state.pid}})


async def ready(ctx: Ctx, state: WorkerState) -> Response:
    if state.draining:
        return json_response(503, {"status": "draining", "version": VERSION})
    return await health(ctx, state)


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
    RouteSpec("GET", "/openapi.yaml", openapi_spec),
)
