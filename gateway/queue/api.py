"""Helpers shared by the pipeline and UDF routes: body decoding, timestamps, the worker's queue service."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from gateway.http import GatewayError, bad_request, validation_error

T = TypeVar("T")
MAX_WORKER_ID_BYTES = 256
UNAVAILABLE = GatewayError("queue_unavailable", "the queue database is not available on this worker", status=503,
                           source="internal", retryable=True)
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def decode(body: bytes, kind: type[T]) -> T:
    """A request body as `kind`: malformed JSON 400, a wrong shape 422 naming the field; an empty body is `{}`."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body if body.strip() else b"{}")  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"invalid JSON body: {exc}") from None


def now_ms() -> int:
    return int(time.time() * 1000)


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def service(state: Any) -> Any:
    svc = state.queue
    if svc is None:
        raise UNAVAILABLE
    return svc



def worker_id(value: str, where: str = "$.worker_id") -> str:
    if not value or len(value.encode()) > MAX_WORKER_ID_BYTES:
        raise validation_error(f"worker_id must be 1-{MAX_WORKER_ID_BYTES} bytes - at `{where}`")
    return value


def in_range(value: int, low: int, high: int, where: str) -> int:
    if not low <= value <= high:
        raise validation_error(f"Expected `int` between {low} and {high}, got {value} - at `{where}`")
    return value


def not_found(kind: str, ident: str) -> GatewayError:
    return GatewayError("not_found", f"{kind} '{ident}' not found", status=404)
