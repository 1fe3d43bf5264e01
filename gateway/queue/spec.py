"""The UDF spec (design §1.2): decoded with every default filled, validated, and echoed in normalised form.

Unknown keys are dropped; `index_selector`, `filter` and the worker's `image/url/port/pod_spec` are echoed only when
set; every other key is always echoed (never `omit_defaults`: `layer run` compares our echo with its manifest).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from msgspec import Struct

from gateway.http import validation_error

UDF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MARKER_PREFIX = "_hevlayer_udf_"
# Upper bounds keep every derived epoch-ms time inside 64 bits.
DAY_S, WEEK_S, YEAR_S = 86_400, 7 * 86_400, 365 * 86_400


class WorkerSpec(Struct):
    image: str | None = None
    url: str | None = None
    port: int | None = None
    pod_spec: Any = None
    batch_size: int = 32
    timeout_seconds: int = 30


class ScheduleSpec(Struct):
    discovery_interval_seconds: int = 60
    lease_seconds: int = 120
    max_in_flight_batches: int = 8
    max_concurrent_scans: int = 4


class RetrySpec(Struct):
    max_attempts: int = 8
    initial_backoff_seconds: int = 5
    max_backoff_seconds: int = 300


class UdfSpec(Struct):
    worker: WorkerSpec
    index_selector: Any = None
    target_namespaces: list[str] = []
    inputs: list[str] = []
    version: str = "v1"
    filter: Any = None
    schedule: ScheduleSpec | None = None
    retry: RetrySpec | None = None
    triggers: list[Literal["discovery", "write"]] = msgspec.field(default_factory=lambda: ["discovery"])
    invalidates: list[str] = []


_convert = msgspec.convert


def marker(udf_id: str) -> str:
    """The attribute stem of a UDF's row markers: `_hevlayer_udf_<id with - as _>` (`_v`, `_stale_after`)."""
    return MARKER_PREFIX + udf_id.replace("-", "_")


def check_udf_id(udf_id: str, where: str = "$.id") -> None:
    if not UDF_ID.match(udf_id):
        raise validation_error(f"UDF id must match {UDF_ID.pattern}, got {udf_id!r} - at `{where}`")


def check_namespace(ns: str, where: str) -> None:
    if not NAMESPACE.match(ns):
        raise validation_error(f"namespace names use 1-128 of [A-Za-z0-9._-], got {ns!r} - at `{where}`")


def _at_least(value: int, minimum: int, where: str, maximum: int | None = None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise validation_error(f"Expected `int` {bound}, got {value} - at `$.spec.{where}`")


def parse_spec(raw: Any, udf_id: str) -> UdfSpec:
    """A validated spec with every default filled (422 naming the field otherwise)."""
    if raw is None:
        raise validation_error("Object missing required field `spec` - at `$`")
    try:
        spec = _convert(raw, UdfSpec)
    except msgspec.ValidationError as exc:
        raise validation_error(f"{str(exc).replace('`$', '`$.spec', 1)}") from None
    spec.schedule = spec.schedule or ScheduleSpec()
    spec.retry = spec.retry or RetrySpec()
    _validate(spec, udf_id)
    return spec


def _validate(spec: UdfSpec, udf_id: str) -> None:
    assert spec.schedule is not None and spec.retry is not None
    if not spec.version or len(spec.version) > 256:
        raise validation_error("version must be 1-256 characters - at `$.spec.version`")
    for i, ns in enumerate(spec.target_namespaces):
        check_namespace(ns, f"$.spec.target_namespaces[{i}]")
    for i, name in enumerate(spec.inputs):
        if not name or name.startswith("$") or len(name.encode()) > 128:
            raise validation_error(f"inputs are attribute names (1-128 bytes, no leading `$`), got {name!r} - "
                                   f"at `$.spec.inputs[{i}]`")
    if len(set(spec.inputs)) != len(spec.inputs):
        raise validation_error("inputs must not repeat a name - at `$.spec.inputs`")
    w, s, r = spec.worker, spec.schedule, spec.retry
    _at_least(w.batch_size, 1, "worker.batch_size", 1000)
    _at_least(w.timeout_seconds, 1, "worker.timeout_seconds", DAY_S)
    _at_least(s.discovery_interval_seconds, 1, "schedule.discovery_interval_seconds", YEAR_S)
    _at_least(s.lease_seconds, 1, "schedule.lease_seconds", DAY_S)
    _at_least(s.max_in_flight_batches, 1, "schedule.max_in_flight_batches", 10_000)
    _at_least(s.max_concurrent_scans, 1, "schedule.max_concurrent_scans", 64)
    _at_least(r.max_attempts, 1, "retry.max_attempts", 1000)
    _at_least(r.initial_backoff_seconds, 0, "retry.initial_backoff_seconds", WEEK_S)
    _at_least(r.max_backoff_seconds, 0, "retry.max_backoff_seconds", WEEK_S)
    if r.initial_backoff_seconds > r.max_backoff_seconds:
        raise validation_error("retry.initial_backoff_seconds must not exceed max_backoff_seconds - at `$.spec.retry`")
    for i, other in enumerate(spec.invalidates):
        check_udf_id(other, f"$.spec.invalidates[{i}]")
        if other == udf_id:
            raise validation_error(f"a UDF cannot invalidate itself - at `$.spec.invalidates[{i}]`")


def normalised(spec: UdfSpec) -> dict[str, Any]:
    """The echo: every key, except the optional ones that are null."""
    assert spec.schedule is not None and spec.retry is not None
    w = spec.worker
    worker = {k: v for k, v in (("image", w.image), ("url", w.url), ("port", w.port), ("pod_spec", w.pod_spec))
              if v is not None}
    out: dict[str, Any] = {}
    if spec.index_selector is not None:
        out["index_selector"] = spec.index_selector
    out.update(target_namespaces=spec.target_namespaces, inputs=spec.inputs, version=spec.version)
    if spec.filter is not None:
        out["filter"] = spec.filter
    out["worker"] = {**worker, "batch_size": w.batch_size, "timeout_seconds": w.timeout_seconds}
    out["schedule"] = msgspec.structs.asdict(spec.schedule)
    out["retry"] = msgspec.structs.asdict(spec.retry)
    out.update(triggers=spec.triggers, invalidates=spec.invalidates)
    return out


def find_cycle(udf_id: str, invalidates: list[str], graph: dict[str, list[str]]) -> list[str] | None:
    """A path back to `udf_id` through the `invalidates` edges of the other UDFs, if the new edges close one."""
    graph = {**graph, udf_id: invalidates}
    stack = [(other, [udf_id, other]) for other in invalidates]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == udf_id:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((nxt, [*path, nxt]) for nxt in graph.get(node, ()))
    return None


def backoff_ms(attempts: int, retry: RetrySpec) -> int:
    """Wait after a transient failure of claim number `attempts`: initial * 2^(attempts-1), capped (no jitter)."""
    exponent = min(max(attempts - 1, 0), 40)
    return min(retry.initial_backoff_seconds * 2 ** exponent, retry.max_backoff_seconds) * 1000
