"""The gateway's core, independent of the server interface: per-worker startup/shutdown and the one request driver.

Phases, in order: early_request (route match) -> auth -> request body -> handler (the route's own phases: validate,
stamp, cache mirror, watermark, upstream, response filter) -> response -> logging/metrics. Every request gets exactly
one response: `Gateway.handle` runs the driver inside a single try and any exception becomes a JSON error through
gateway.http.error_response. The server adapters (gateway/servers/) turn their request into a `Ctx` and a body
stream, call `handle`, write the `Response` and call `observe`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable

from gateway import health, metrics
from gateway.auth import (
    ADMIN,
    BEARER_CALLER,
    INVALID_KEY,
    KEY_ROUTE_PREFIX,
    KEY_ROUTES_WITHOUT_STORE_KEY,
    MINTED_PREFIX,
    PUBLIC,
    READ,
    SCOPED_KEY_WITHOUT_STORE_KEY,
    STORE_ADMIN,
    WRITE,
    authorize,
    bearer_token,
    store_key_matches,
)
from gateway.body import PUBLIC_BODY_LIMIT, read_body
from gateway.compression import compress_response, compressible
from gateway.config import load_config
from gateway.http import INTERNAL_ERROR, Ctx, GatewayError, Response, error_response
from gateway.logs import log_request, setup_logging
from gateway.router import build_router, path_segments
from gateway.routes.passthrough import relay
from gateway.state import WorkerState
from gateway.tasks import Tasks

log = logging.getLogger("gateway.app")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# While draining every response tells keep-alive clients to reconnect (through the balancer, to another instance).
CONNECTION_CLOSE = ("connection", "close")
# Optional per-worker hooks other modules provide: `async def attach(state)` / `async def detach(state)`.
WORKER_HOOK_MODULES = ("gateway.cache", "gateway.keys", "gateway.queue")


async def authenticate(ctx: Ctx, state: WorkerState) -> Response | None:
    """Auth phase: bearer -> principal -> scope on the path's namespace. Returns upstream's answer when, in
    derive-from-request mode, upstream does not accept the bearer for a route that may answer locally."""
    token = bearer_token(ctx.headers.get("authorization"))
    store_key = state.config.upstream_key
    if store_key is None:
        if ctx.route.route_class == ADMIN and ctx.route.template.startswith(KEY_ROUTE_PREFIX):
            raise KEY_ROUTES_WITHOUT_STORE_KEY
        if token.startswith(MINTED_PREFIX):
            raise SCOPED_KEY_WITHOUT_STORE_KEY
        ctx.principal, ctx.upstream_key = BEARER_CALLER, token
    elif token.startswith(MINTED_PREFIX) and state.key_verifier is not None:
        principal = await state.key_verifier.verify(token)
        if principal is None:
            raise INVALID_KEY
        ctx.principal, ctx.upstream_key = principal, store_key
    elif store_key_matches(token, store_key):
        ctx.principal, ctx.upstream_key = STORE_ADMIN, store_key
    else:
        raise INVALID_KEY
    authorize(ctx.principal, ctx.route.route_class, ctx.namespace)
    if ctx.principal is BEARER_CALLER and ctx.route.answered_locally and state.verdicts is not None:
        verdict = await state.verdicts.check(token, ctx.namespace or "")
        if not isinstance(verdict, str):
            return relay(verdict)
        ctx.identity = verdict
    return None


def authorize_body(ctx: Ctx) -> None:
    """Auth phase, second half (after the body is read): read scope on every namespace the body names. Admins may
    read anything; in derive-from-request mode upstream checks the sources itself, with the caller's own key."""
    principal = ctx.principal
    if principal is None or principal.admin or principal is BEARER_CALLER:
        return
    for ns in ctx.route.body_namespaces(ctx.body):
        authorize(principal, READ, ns)


def request_segments(ctx: Ctx) -> list[str]:
    if ctx.raw_path is not None:
        return path_segments(ctx.raw_path)
    return path_segments(ctx.path, percent_encoded=False)  # Granian RSGI: scope.path is already decoded


async def drive(ctx: Ctx, state: WorkerState, chunks: AsyncIterator[bytes]) -> Response:
    route, params = state.router.match(ctx.method, request_segments(ctx))
    ctx.route, ctx.params = route, params
    ctx.namespace = params.get("ns")
    if route.route_class != PUBLIC:
        denied = await authenticate(ctx, state)
        if denied is not None:
            return denied
    if route.before_body is not None:
        await route.before_body(ctx, state)
    if ctx.method in BODY_METHODS:
        limit = state.config.max_body_bytes
        if route.route_class == PUBLIC:
            limit = min(limit, PUBLIC_BODY_LIMIT)
        ctx.body = await read_body(ctx, chunks, limit, state.bodies)
        if route.body_namespaces is not None:
            authorize_body(ctx)
    if route.route_class == WRITE and ctx.namespace is not None and state.results is not None:
        return await results_bumped_after(ctx, state, route.handler(ctx, state))
    return await route.handler(ctx, state)


async def results_bumped_after(ctx: Ctx, state: WorkerState, write: Awaitable[Response]) -> Response:
    """A write-class request on a namespace: the namespace's result generation (shared cache backend) is bumped
    before the answer goes out, whatever it is (a failed or timed-out write may have landed), except upstream's
    refusal of the caller's key (nothing was written; anyone could send it)."""
    refused = False
    try:
        resp = await write
        refused = resp.status in (401, 403)
        return resp
    finally:
        if not refused:
            await asyncio.shield(state.results.written(ctx.namespace))


async def _call_hooks(state: WorkerState, name: str) -> None:
    for module_name in WORKER_HOOK_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        hook = getattr(module, name, None)
        if hook is not None:
            result = hook(state)
            if inspect.isawaitable(result):
                await result


async def _flush_metrics(state: WorkerState) -> None:
    """Every METRICS_FLUSH_INTERVAL_S: this worker's metrics and health snapshot for the ops listener."""
    while True:
        await asyncio.sleep(metrics.METRICS_FLUSH_INTERVAL_S)
        metrics.TPUF_INFLIGHT.set(state.upstream.inflight)
        metrics.flush()
        await health.publish(state)


class Gateway:
    """One worker's gateway. `startup`/`shutdown` run once per worker process (the adapter calls them from its
    server's per-worker hooks); `handle` answers one request."""

    def __init__(self) -> None:
        self.state: WorkerState | None = None
        self._tasks = Tasks()  # metrics flush and health snapshot

    async def startup(self) -> None:
        config = load_config()
        setup_logging(config.log_level)
        self.state = state = WorkerState(config, build_router())
        state.watcher.start()
        self._tasks.loop("metrics flush", lambda: _flush_metrics(state))
        await _call_hooks(state, "attach")
        await health.publish(state)

    async def shutdown(self) -> None:
        """Stop background work (watcher, metric flushes and health snapshots, access checks, the modules' detach
        hooks: warm jobs are marked as interrupted there), close the upstream client and write this worker's last
        metrics. Idempotent."""
        state, self.state = self.state, None
        if state is None:
            return
        try:
            await state.watcher.stop()
            await self._tasks.stop()
            if state.verdicts is not None:
                await state.verdicts.stop()
            await _call_hooks(state, "detach")
        finally:
            try:
                await state.upstream.close()
            finally:
                health.unpublish(state)
                metrics.worker_exit()

    def begin_drain(self) -> None:
        """SIGTERM: /ready answers 503 and every response carries `Connection: close` from now on."""
        state = self.state
        if state is not None and not state.draining:
            state.draining = True
            log.info("draining", extra={"fields": {"inflight": state.inflight, "pid": state.pid}})

    @property
    def inflight(self) -> int:
        return self.state.inflight if self.state is not None else 0

    async def handle(self, ctx: Ctx, chunks: AsyncIterator[bytes]) -> Response:
        state = self.state
        assert state is not None
        state.inflight += 1
        try:
            resp = await drive(ctx, state, chunks)
        except GatewayError as err:
            resp = error_response(err)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": ctx.path, "method": ctx.method}})
            resp = error_response(INTERNAL_ERROR)
        finally:
            state.inflight -= 1
            if ctx.body_reserved:
                state.bodies.release(ctx)
        if compressible(resp):  # checked here first: most responses skip a coroutine
            resp = await compress_response(resp, ctx.headers.get("accept-encoding"))
        if state.draining:
            resp = Response(resp.status, resp.body, [*resp.headers, CONNECTION_CLOSE])
        return resp

    @staticmethod
    def observe(ctx: Ctx, status: int) -> None:
        route = ctx.route.name if ctx.route is not None else "unmatched"
        metrics.inc(metrics.request_counter(route, ctx.method, status))
        principal = ctx.principal.name if ctx.principal is not None else None
        log_request(ctx.method, route, ctx.namespace, status, ctx.started, ctx.upstream_seconds, principal,
                    ctx.log_extra)
