"""Request bodies: read only after auth, capped per route, inflated with a bound, and counted against a per-worker
budget of bytes held at once.

Granian reads nothing of a body before the app asks for it: its RSGI protocol keeps hyper's `Incoming` until the
app collects or streams it (the RSGI adapter streams it), and hyper sends `100 Continue` only then. A request
answered without reading its body gets `connection: close` and the connection is closed after the response (hyper
drains only what is already buffered), so an unread body costs the worker nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from gateway.compression import TooLarge, gunzip
from gateway.http import Ctx, GatewayError, parse_count

PUBLIC_BODY_LIMIT = 64 * 1024  # routes that need no key (POST /v2/keys/authenticate)
SMALL_BODY = 64 * 1024  # bodies up to this size (queries, small writes) are counted but never refused
BUSY = GatewayError("server_busy", "this worker is holding too many request bodies; retry shortly", status=503,
                    source="internal", retryable=True, headers=[("retry-after", "1")])
# A read that raises (Granian: RSGIProtocolClosed, a RuntimeError) means the client broke off mid-body.
UNREADABLE = GatewayError("bad_request", "the request body could not be read: the connection broke off", status=400)


def _too_large(limit: int) -> GatewayError:
    return GatewayError("payload_too_large", f"request body exceeds the {limit}-byte limit", status=413)


class BodyBudget:
    """Bytes of request bodies (as received and inflated) one worker holds at once (LAYER_MAX_BUFFERED_BODY_BYTES).

    A body growing past SMALL_BODY that would take the total past the limit while other requests hold bytes is
    refused with 503 + retry-after. A request that is alone may always grow to the body size limit (one maximal
    write is never refused), and small bodies always pass, so queries keep flowing while big writes fill the budget:
    the worker holds at most max(limit, one maximal body) plus SMALL_BODY per request in flight.
    Reservations are returned by `release` once the response is sent.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, ctx: Ctx, n: int) -> None:
        large = ctx.body_reserved + n > SMALL_BODY
        if large and self.used > ctx.body_reserved and self.used + n > self.limit:
            raise BUSY
        self.used += n
        ctx.body_reserved += n

    def release(self, ctx: Ctx, n: int | None = None) -> None:
        n = ctx.body_reserved if n is None else n
        self.used -= n
        ctx.body_reserved -= n


async def read_body(ctx: Ctx, chunks: AsyncIterator[bytes], limit: int, budget: BodyBudget) -> bytes:
    """The whole body from the adapter's chunks (which enforce the slow-client limits), inflated when
    `content-encoding: gzip` (gateway.compression, step by step and counted); 413 past `limit` (before reading,
    when the content-length says so), 503 when the worker's budget is spent, 400/415 for bad or unknown encodings."""
    length = ctx.headers.get("content-length")
    if length is not None:
        announced = parse_count(length.strip(), "content-length")
        if announced > limit:
            raise _too_large(limit)
        budget.reserve(ctx, announced)
    parts, size = [], 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if length is None:  # counted as it arrives: no length was announced
                budget.reserve(ctx, len(chunk))
            parts.append(chunk)
    except RuntimeError:
        raise UNREADABLE from None
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    encoding = ctx.headers.get("content-encoding")
    if encoding and body:
        encoding = encoding.strip().lower()
        if encoding == "gzip":
            try:
                inflated = gunzip(body, limit, lambda n: budget.reserve(ctx, n))
            except zlib.error as exc:
                raise GatewayError("bad_request", f"request body is not valid gzip: {exc}", status=400) from None
            except TooLarge:
                raise _too_large(limit) from None
            budget.release(ctx, len(body))
            return inflated
        if encoding != "identity":
            raise GatewayError("unsupported_encoding", f"unsupported Content-Encoding `{encoding}`", status=415)
    return body
