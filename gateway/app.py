"""The RSGI application: per-worker startup/shutdown and the one request driver.

Phases, in order: early_request (route match, drain check) -> auth -> request body -> handler (the route's own
phases: validate, stamp, cache mirror, watermark, upstream, response filter) -> response -> logging/metrics.
Every request gets exactly one response call: the driver runs inside a single try and any exception becomes a
JSON error through gateway.http.error_response.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import signal
import time
import zlib
from typing import Any

from gateway import metrics
from gateway.auth import (
    BEARER_CALLER,
    INVALID_KEY,
    MINTED_PREFIX,
    PUBLIC,
    STORE_ADMIN,
    authorize,
    bearer_token,
    store_key_matches,
)
from gateway.compression import TooLarge, compress_response, gunzip
from gateway.config import load_config
from gateway.http import INTERNAL_ERROR, Ctx, GatewayError, Response, error_response
from gateway.logs import log_request, setup_logging
from gateway.router import build_router
from gateway.state import WorkerState

log = logging.getLogger("gateway.app")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALWAYS_SERVED = frozenset({"/health", "/ready", "/metrics"})
DRAINING = GatewayError("gateway_draining", "gateway pod is draining; retry on another endpoint", status=503,
                        source="internal", headers=[("connection", "close"), ("x-should-retry", "true")])
# Optional per-worker hooks other modules provide: `async def attach(state)` / `async def detach(state)`.
WORKER_HOOK_MODULES = ("gateway.cache", "gateway.keys")


def _too_large(limit: int) -> GatewayError:
    return GatewayError("payload_too_large", f"request body exceeds the {limit}-byte limit", status=413)


async def read_body(ctx: Ctx, proto: Any, limit: int) -> bytes:
    length = ctx.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    if length is not None:
        body: bytes = await proto()
    else:  # chunked: stop reading as soon as the limit is passed
        parts, size = [], 0
        async for chunk in proto:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        body = b"".join(parts)
    if len(body) > limit:
        raise _too_large(limit)
    encoding = ctx.headers.get("content-encoding")
    if encoding and body:
        encoding = encoding.strip().lower()
        if encoding == "gzip":
            try:
                body = gunzip(body, limit)
            except zlib.error as exc:
                raise GatewayError("bad_request", f"request body is not valid gzip: {exc}", status=400) from None
            except TooLarge:
                raise _too_large(limit) from None
        elif encoding != "identity":
            raise GatewayError("unsupported_encoding", f"unsupported Content-Encoding `{encoding}`", status=415)
    return body


async def authenticate(ctx: Ctx, state: WorkerState) -> None:
    token = bearer_token(ctx.headers.get("authorization"))
    store_key = state.config.upstream_key
    if token.startswith(MINTED_PREFIX) and state.key_verifier is not None:
        principal = await state.key_verifier.verify(token)
        if principal is None:
            raise INVALID_KEY
        ctx.principal, ctx.upstream_key = principal, store_key
    elif store_key is not None:
        if not store_key_matches(token, store_key):
            raise INVALID_KEY
        ctx.principal, ctx.upstream_key = STORE_ADMIN, store_key
    else:
        ctx.principal, ctx.upstream_key = BEARER_CALLER, token
    authorize(ctx.principal, ctx.route.route_class, ctx.namespace)


async def drive(ctx: Ctx, state: WorkerState, proto: Any) -> Response:
    route, params = state.router.match(ctx.method, ctx.path)
    ctx.route, ctx.params = route, params
    ctx.namespace = params.get("ns")
    if state.draining and route.template not in ALWAYS_SERVED:
        raise DRAINING
    if route.route_class != PUBLIC:
        await authenticate(ctx, state)
    if ctx.method in BODY_METHODS:
        ctx.body = await read_body(ctx, proto, state.config.max_body_bytes)
    return await route.handler(ctx, state)


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
    while True:
        await asyncio.sleep(metrics.METRICS_FLUSH_INTERVAL_S)
        try:
            metrics.TPUF_INFLIGHT.set(state.upstream.inflight)
            metrics.flush()
        except Exception:
            log.exception("metrics flush failed")


class GatewayApp:
    def __init__(self) -> None:
        self.state: WorkerState | None = None
        self._metrics_task: asyncio.Task[None] | None = None

    # ---- per-worker lifecycle (RSGI: the loop is not running in these two) ----
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        config = load_config()
        setup_logging(config.log_level)
        self.state = WorkerState(config, build_router())
        loop.run_until_complete(self._startup())
        # Replace Granian's SIGTERM handler: drain first, then hand over to its SIGINT shutdown path.
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    async def _startup(self) -> None:
        assert self.state is not None
        self.state.watcher.start()
        self._metrics_task = asyncio.get_running_loop().create_task(_flush_metrics(self.state))
        await _call_hooks(self.state, "attach")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.state is not None:
            loop.run_until_complete(self._shutdown())
        metrics.worker_exit()

    async def _shutdown(self) -> None:
        assert self.state is not None
        await self.state.watcher.stop()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
        try:
            await _call_hooks(self.state, "detach")
        finally:
            await self.state.upstream.close()

    def _on_sigterm(self) -> None:
        state = self.state
        if state is None or state.draining:
            return
        state.draining = True
        log.info("draining", extra={"fields": {"inflight": state.inflight, "pid": state.pid}})
        asyncio.get_event_loop().create_task(self._drain(state))

    async def _drain(self, state: WorkerState) -> None:
        now = time.monotonic()
        grace_end = now + state.config.drain_grace_ms / 1000
        deadline = now + max(state.config.drain_timeout_ms, state.config.drain_grace_ms) / 1000
        while time.monotonic() < deadline and (state.inflight > 0 or time.monotonic() < grace_end):
            await asyncio.sleep(0.01)
        log.info("drained", extra={"fields": {"inflight": state.inflight, "pid": state.pid}})
        os.kill(os.getpid(), signal.SIGINT)

    # ---- one request ----
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        state = self.state
        assert state is not None
        ctx = Ctx(scope.method, scope.path, scope.query_string, scope.headers)
        ctx.scope = scope
        state.inflight += 1
        try:
            resp = await drive(ctx, state, proto)
        except GatewayError as err:
            resp = error_response(err)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": ctx.path, "method": ctx.method}})
            resp = error_response(INTERNAL_ERROR)
        finally:
            state.inflight -= 1
        resp = await compress_response(resp, ctx.headers.get("accept-encoding"))
        proto.response_bytes(resp.status, resp.headers, resp.body)
        self._observe(ctx, resp.status)

    @staticmethod
    def _observe(ctx: Ctx, status: int) -> None:
        route = ctx.route.name if ctx.route is not None else "unmatched"
        metrics.inc(metrics.request_counter(route, ctx.method, status))
        principal = ctx.principal.name if ctx.principal is not None else None
        log_request(ctx.method, route, ctx.namespace, status, ctx.started, ctx.upstream_seconds, principal,
                    ctx.log_extra)


app = GatewayApp()
