"""What a response reports about its own cost: billable logical bytes and server timings.

`billable_logical_bytes_returned` counts the logical size of the returned data, not its JSON text (Turbopuffer's
rule, calibrated on the official client's live test: 5 rows of id + 2-dim vector + `$dist`, one row with
`"hello": "world"`, bill 105 bytes = 5 x (8 + 2 x 4 + 4) + 5):

- id: 8 bytes (uint), 16 (uuid), the UTF-8 length of a string id;
- `$dist` and computed scores: 4 bytes (float32);
- dense vectors: dimensions x element width (f32 4, f16 2, i8 1), whatever `vector_encoding` the response uses;
  multi-vectors: the same per vector; sparse vectors: per entry its token's UTF-8 length + 2;
- attributes by schema type: string = UTF-8 length, int/uint/float/datetime = 8, uuid = 16, bool = 1,
  bytes = decoded length, arrays = the sum of their elements; attribute names are not billed;
- aggregations: 8 bytes per aggregate value, group keys by value (as an attribute of their type).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .schema import Schema
from .values import MULTI_RE, VEC_RE

BILLABLE_QUERIED_MIN = 256_000_000  # live bills a small namespace as 256 MB queried
SCORE_BYTES = 4
NUMBER_BYTES = 8
UUID_BYTES = 16
ELEMENT_BYTES = {"f32": 4, "f16": 2, "i8": 1}
FIXED_BYTES = {"int": NUMBER_BYTES, "uint": NUMBER_BYTES, "float": NUMBER_BYTES, "datetime": NUMBER_BYTES,
               "uuid": UUID_BYTES, "bool": 1}


def elapsed_ms(t0: float) -> float:
    """Query timings: milliseconds since `t0` (perf_counter), fractional to the microsecond, never 0."""
    return max(round((time.perf_counter() - t0) * 1000, 3), 0.001)


def elapsed_whole_ms(t0: float) -> int:
    """Write timings are whole milliseconds (the client's WritePerformance is an int; a fraction there fails the
    validation of an async copy's result), rounded up: a write that ran never reports 0."""
    return math.ceil((time.perf_counter() - t0) * 1000)


def value_bytes(value: Any, typ: str | None) -> int:
    """Logical size of one returned value; `typ` is its schema type (None: by the JSON value)."""
    if value is None:
        return 0
    if typ is not None:
        m = VEC_RE.match(typ)
        if m:
            return int(m.group(1)) * ELEMENT_BYTES[m.group(2)]
        m = MULTI_RE.match(typ)
        if m:
            return len(value) * int(m.group(1)) * ELEMENT_BYTES[m.group(2)] if isinstance(value, list) else 0
        if typ == "{}f16":
            return sum(len(k.encode()) + 2 for k in value) if isinstance(value, dict) else 0
        if typ.startswith("[]") and isinstance(value, list):
            return sum(value_bytes(v, typ[2:]) for v in value)
        if typ in FIXED_BYTES:
            return FIXED_BYTES[typ]
        if typ == "bytes" and isinstance(value, str):
            return len(value) * 3 // 4 - value[-2:].count("=")
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return NUMBER_BYTES
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(value_bytes(v, None) for v in value)
    if isinstance(value, dict):
        return sum(len(str(k).encode()) + value_bytes(v, None) for k, v in value.items())
    return 0


def _id_bytes(doc_id: Any, id_type: str | None) -> int:
    if isinstance(doc_id, int):
        return NUMBER_BYTES
    return UUID_BYTES if id_type == "uuid" else len(str(doc_id).encode())


def row_bytes(row: dict[str, Any], schema: Schema, id_type: str | None) -> int:
    n = 0
    for key, value in row.items():
        if key == "id":
            n += _id_bytes(value, id_type)
        elif key == "$dist":
            n += SCORE_BYTES
        elif key in schema:
            n += value_bytes(value, schema[key]["type"])
        elif isinstance(value, float):  # a computed score (float32)
            n += SCORE_BYTES
        else:
            n += value_bytes(value, None)
    return n


def returned_bytes(result: dict[str, Any], schema: Schema, id_type: str | None) -> int:
    """Billable logical bytes of a query result (single, or a multi-query's `results`)."""
    if "results" in result:
        return sum(returned_bytes(r, schema, id_type) for r in result["results"])
    n = sum(row_bytes(r, schema, id_type) for r in result.get("rows", ()))
    n += NUMBER_BYTES * len(result.get("aggregations", ()))
    for group in result.get("aggregation_groups", ()):
        n += sum(value_bytes(v, None) for v in group.values())
    return n
