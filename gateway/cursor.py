"""Opaque page cursors for Layer queries: base64url (no padding) of JSON {"o": offset}.

The original encoded (dist, id) and paged with a `$dist` band filter; neither Turbopuffer's documented filter
grammar nor the local store filters on `$dist`, so the cursor carries the upstream `offset` instead.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

from gateway.http import validation_error

MAX_OFFSET = 10_000  # Turbopuffer: offset + limit <= 10,000


class Cursor(msgspec.Struct, forbid_unknown_fields=True):
    o: int


cursor_decoder = msgspec.json.Decoder(Cursor)
cursor_encoder = msgspec.json.Encoder()


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(cursor_encoder.encode(Cursor(offset))).rstrip(b"=").decode()


def decode_cursor(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        offset = cursor_decoder.decode(raw).o
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise validation_error(f"invalid cursor: {exc}") from None
    if not 0 <= offset < MAX_OFFSET:
        raise validation_error(f"invalid cursor: offset {offset} out of range")
    return offset
