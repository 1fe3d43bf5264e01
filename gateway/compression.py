"""gzip in one place: response compression, and bounded inflation of the bodies the gateway must read.

Relayed upstream answers are never re-encoded: the client's Accept-Encoding goes upstream with the request (as gzip
or identity, see `forwarded_encoding`) and a gzipped answer is relayed byte for byte with its Content-Encoding. Where the gateway reads an upstream body (a
cursor, a stamp to hide, a namespace list to filter, the cache mirror) it inflates it with a bound
(`identity_body`). The responses the gateway builds or rewrites itself are gzipped by `compress_response`, called
once by the request driver, when the client asked and the body is at least GZIP_MIN_BYTES; bodies from
THREAD_MIN_BYTES are compressed in a worker thread so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from gateway.http import Ctx, Response
from gateway.upstream import UpstreamResponse

GZIP_MIN_BYTES = 1024  # as the local store; the official client also gzips request bodies from 1 KiB
GZIP_LEVEL = 1  # fastest level: most of the size gain at a fraction of level 6's CPU (see bench: compression)
GZIP_WBITS = 31  # gzip container
THREAD_MIN_BYTES = 64 * 1024  # ~0.5 ms of level-1 gzip on this class of machine
INFLATE_STEP = 1 << 20  # inflate in steps, so a bomb stops at the limit and the body budget sees it grow
INSPECT_LIMIT_BYTES = 256 * 1024 * 1024  # an upstream body inflating beyond this is not read (zip-bomb guard)
GZIP_HEADERS = (("content-encoding", "gzip"), ("vary", "accept-encoding"))


class TooLarge(Exception):
    """Inflating would produce more than the allowed bytes."""


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip (`gzip`/`x-gzip`, or `*`, with a non-zero q)."""
    star = False
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        name, _, q = params.strip().partition("=")
        try:
            weight = float(q) if name.strip().lower() == "q" else 1.0
        except ValueError:
            weight = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            return weight > 0
        if coding == "*":
            star = weight > 0
    return star


def forwarded_encoding(ctx: Ctx) -> str:
    """The Accept-Encoding sent upstream on the client's behalf: gzip when the client takes it, else identity, so
    that whatever comes back is something the gateway can read when it must (a `br` answer it could only relay)."""
    return "gzip" if accepts_gzip(ctx.headers.get("accept-encoding")) else "identity"


def gzip_bytes(data: bytes) -> bytes:
    return zlib.compress(data, GZIP_LEVEL, GZIP_WBITS)


def gunzip(data: bytes, limit: int, account: Callable[[int], None] | None = None) -> bytes:
    """Inflate every gzip member of `data`, INFLATE_STEP bytes at a time; raises TooLarge past `limit` output bytes,
    zlib.error when corrupt or truncated. `account(n)` hears of each step's output before it is kept (and may raise:
    the request-body budget)."""
    out: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(GZIP_WBITS)
        while True:
            chunk = inflater.decompress(data, INFLATE_STEP)
            data = inflater.unconsumed_tail
            size += len(chunk)
            if size > limit:
                raise TooLarge
            if account is not None:
                account(len(chunk))
            out.append(chunk)
            if inflater.eof:
                break
            if not chunk and not data:
                raise zlib.error("truncated gzip stream")
        data = inflater.unused_data
        if not data:
            return b"".join(out)


def identity_body(resp: UpstreamResponse, limit: int = INSPECT_LIMIT_BYTES) -> bytes | None:
    """The upstream body as plain bytes (inflated when upstream gzipped it); None when it cannot be read within
    `limit` (corrupt, too large, or an encoding other than gzip)."""
    encoding = next((v.strip().lower() for h, v in resp.headers if h == "content-encoding"), "identity")
    if encoding == "identity":
        return resp.body
    if encoding != "gzip":
        return None
    try:
        return gunzip(resp.body, limit)
    except (TooLarge, zlib.error):
        return None


def compressible(resp: Response) -> bool:
    """A gateway-built response large enough to gzip (relayed bodies go as upstream sent them)."""
    return not resp.relayed and len(resp.body) >= GZIP_MIN_BYTES


async def compress_response(resp: Response, accept_encoding: str | None) -> Response:
    """gzip a gateway-built response when the client accepts it; relayed and small responses pass unchanged."""
    if not compressible(resp) or not accepts_gzip(accept_encoding):
        return resp
    if len(resp.body) >= THREAD_MIN_BYTES:
        body = await asyncio.to_thread(gzip_bytes, resp.body)
    else:
        body = gzip_bytes(resp.body)
    return Response(resp.status, body, [*resp.headers, *GZIP_HEADERS])
