"""HTTP handlers for /v2/keys: mint, list, get, revoke, delete (admin) and authenticate (public, rate-limited)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http import Ctx, GatewayError, Response, json_response
from gateway.router import RouteSpec

if TYPE_CHECKING:
    from gateway.keys.service import KeyService
    from gateway.state import WorkerState

TRUE_VALUES = frozenset({"true", "1", "yes"})
KEYS_DISABLED = GatewayError("service_unavailable", "the key store is not available on this worker", status=503,
                             source="internal", retryable=True)


def _service(state: WorkerState) -> KeyService:
    service = state.extras.get("keys")
    if service is None:
        raise KEYS_DISABLED
    return service  # type: ignore[no-any-return]


def _client_address(ctx: Ctx) -> str:
    client = ctx.client
    host, sep, port = client.rpartition(":")
    return host if sep and port.isdigit() else client


async def mint_key(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(201, await _service(state).mint(ctx.body))


async def list_keys(ctx: Ctx, state: WorkerState) -> Response:
    include = ctx.query.get("includeRevoked", "").strip().lower() in TRUE_VALUES
    return json_response(200, await _service(state).list(include))


async def get_key(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, await _service(state).get(ctx.params["key_id"]))


async def revoke_key(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, await _service(state).revoke(ctx.params["key_id"]))


async def delete_key(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, await _service(state).delete(ctx.params["key_id"]))


async def authenticate_rate_limit(ctx: Ctx, state: WorkerState) -> None:
    await _service(state).check_rate(_client_address(ctx))


async def authenticate_key(ctx: Ctx, state: WorkerState) -> Response:
    return json_response(200, await _service(state).authenticate(ctx.body))


ROUTES = [
    RouteSpec("POST", "/v2/keys", mint_key),
    RouteSpec("GET", "/v2/keys", list_keys),
    RouteSpec("GET", "/v2/keys/{key_id}", get_key),
    RouteSpec("POST", "/v2/keys/{key_id}/revoke", revoke_key),
    RouteSpec("DELETE", "/v2/keys/{key_id}", delete_key),
    RouteSpec("POST", "/v2/keys/authenticate", authenticate_key, before_body=authenticate_rate_limit),
]
