"""All Prometheus metric objects in one place (prometheus-client multiprocess mode across Granian workers).

`layer-gateway serve` creates PROMETHEUS_MULTIPROC_DIR before the workers start and removes it on exit; each
worker writes its own files there and the ops listener's `/metrics` (gateway/ops.py, in the serve process) merges
them.

The request path does not write those files itself: a multiprocess write takes a lock and packs into an mmap
(~1 µs) and a query makes ten of them. `observe` / `inc` add to per-worker totals in memory instead, and `flush`
writes them out; the app flushes every METRICS_FLUSH_INTERVAL_S and when the worker exits, so a scrape lags the
workers' requests by at most that interval.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, multiprocess

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_NAMESPACES = 5000  # label cardinality cap; further namespaces are counted as "other"
OP = ("pipeline_id", "namespace", "status")

QUERY_DURATION = Histogram("layer_query_duration_seconds", "Query time seen by the client", OP, buckets=BUCKETS)
QUERY_TPUF = Histogram("layer_query_tpuf_seconds", "Query time spent waiting on the upstream", OP, buckets=BUCKETS)
QUERY_OVERHEAD = Histogram("layer_query_overhead_seconds", "Query time spent in the gateway", OP, buckets=BUCKETS)
QUERY_SHAPE = Counter("layer_query_shape_total", "Queries by shape",
                      ("pipeline_id", "namespace", "has_filter", "has_rank_by", "status"))
UPSERT_DURATION = Histogram("layer_upsert_duration_seconds", "Write time seen by the client", OP, buckets=BUCKETS)
UPSERT_TPUF = Histogram("layer_upsert_tpuf_seconds", "Write time spent waiting on the upstream", OP, buckets=BUCKETS)
UPSERT_OVERHEAD = Histogram("layer_upsert_overhead_seconds", "Write time spent in the gateway", OP, buckets=BUCKETS)
UPSERT_BATCH = Histogram("layer_upsert_batch_size", "Rows per write", ("pipeline_id", "namespace"),
                         buckets=(1, 10, 100, 1000, 10_000, 100_000))
HEAD_DURATION = Histogram("layer_head_duration_seconds", "Namespace metadata time", ("namespace", "status"),
                          buckets=BUCKETS)
LIST_DURATION = Histogram("layer_list_duration_seconds", "Namespace list time", ("status",), buckets=BUCKETS)
QUERY_RETRIES = Counter("layer_query_retries_total", "One-shot 429 query retries", ("namespace", "outcome"))
REQUESTS = Counter("layer_http_requests_total", "Requests by route and status class", ("route", "method", "code"))
TPUF_INFLIGHT = Gauge("layer_tpuf_inflight", "Upstream requests in flight (sampled at each metrics flush)",
                      multiprocess_mode="livesum")
# The httptools transport's connection pools (gateway/httpclient), sampled at each flush; `upstream` is host:port.
UPSTREAM_CONNECTIONS = Gauge("layer_upstream_connections", "Upstream connections by state (idle|active)",
                             ("upstream", "state"), multiprocess_mode="livesum")
UPSTREAM_OPENED = Counter("layer_upstream_connections_opened_total", "Upstream connections opened", ("upstream",))
UPSTREAM_DISCARDED = Counter("layer_upstream_connections_discarded_total",
                             "Upstream connections closed, by reason (expired, closed, not_reusable, error, timeout, "
                             "stale, cancelled, shutdown)", ("upstream", "reason"))
UPSTREAM_REQUESTS = Counter("layer_upstream_requests_total", "Upstream exchanges by connection (new|reused)",
                            ("upstream", "connection"))
UPSTREAM_RETRIES = Counter("layer_upstream_retries_total",
                           "Idempotent requests sent again after a reused connection died before answering",
                           ("upstream",))
UPSTREAM_POOL_WAITS = Counter("layer_upstream_pool_waits_total", "Requests that waited for a free pooled connection",
                              ("upstream",))

# ---- cache metrics (owned by the cache engineer) go below this line ----
# `set` = the backend's set for the namespace (AEROSPIKE_SET_PREFIX + ns; the namespace for the embedded cache).
CACHE_LOOKUPS = Counter("layer_cache_lookups_total", "Document cache lookups by result (hit|miss|error)",
                        ("set", "namespace", "result"))
FETCH_DURATION = Histogram("layer_fetch_duration_seconds", "Document fetch time by cache result",
                           ("operation", "namespace", "cache_result"), buckets=BUCKETS)
FETCH_BATCH_SIZE = Histogram("layer_fetch_batch_size", "Ids per batch fetch", ("operation",),
                             buckets=(1, 10, 100, 1000, 10_000))
CACHE_BACKFILLS = Counter("layer_cache_backfills_total", "Cache backfills (fetch, nearest_to_id, warm)",
                          ("set", "status"))
CACHE_BACKFILL_DURATION = Histogram("layer_cache_backfill_duration_seconds", "Cache backfill time",
                                    ("set", "status"), buckets=BUCKETS)
CACHE_OVERSIZED = Counter("layer_cache_oversized_total", "Documents too big for a cache record (skipped)", ("set",))
CACHE_MIRROR = Counter("layer_cache_mirror_total", "Write-mirror cache operations by kind and status",
                       ("kind", "status"))
CACHE_OP_DURATION = Histogram("layer_aerospike_op_duration_seconds", "Cache backend operation time",
                              ("operation", "set", "status"), buckets=BUCKETS)
CACHE_CONNECTION = Gauge("layer_aerospike_connection_state", "Cache backend connection (one-hot open|failed)",
                         ("state",), multiprocess_mode="livemostrecent")
CACHE_STATE = Gauge("hevlayer_cache_state", "Namespace cache state (one-hot cold|warming|warm)",
                    ("namespace", "store_kind", "state"), multiprocess_mode="livemostrecent")
CACHE_COLD_RESPONSES = Counter("hevlayer_cache_cold_responses_total", "503 cache_cold answers",
                               ("namespace", "store_kind"))
WARM_DOCUMENTS = Counter("layer_cache_warm_documents_total", "Documents written into the cache by warm jobs",
                         ("namespace",))
# ---- end of cache metrics ----

# ---- pipelines and functions (gateway/queue); pipeline and UDF label values are capped at MAX_QUEUE_IDS ----
PIPELINE_STAGE_COUNT = Gauge("layer_pipeline_stage_count", "Pipeline documents per stage (sampled by the lease sweep)",
                             ("pipeline_id", "stage"), multiprocess_mode="livemostrecent")
PIPELINE_INDEXED = Counter("layer_pipeline_indexed_total", "Pipeline documents indexed", ("pipeline_id",))
PIPELINE_FAILED = Counter("layer_pipeline_failed_total", "Pipeline documents moved to failed", ("pipeline_id", "reason"))
UDF_QUEUE_DEPTH = Gauge("layer_udf_queue_depth", "UDF items pending (sampled by the lease sweep)", ("udf",),
                        multiprocess_mode="livemostrecent")
UDF_STAGE_COUNT = Gauge("layer_udf_stage_count", "UDF items per state (sampled by the lease sweep)", ("udf", "stage"),
                        multiprocess_mode="livemostrecent")
QUEUE_CLAIMED = Counter("layer_queue_claimed_total", "Documents or items leased to workers", ("queue", "id"))
QUEUE_COMPLETED = Counter("layer_queue_completed_total", "Documents indexed or items completed", ("queue", "id"))
UDF_FAILURES = Counter("layer_udf_failures_total", "UDF item failures by kind "
                       "(transient, permanent, max_attempts, lease_expired, writeback_rejected)", ("udf", "kind"))
UDF_DISCOVERY_SWEEPS = Counter("layer_udf_discovery_sweeps_total", "Discovery sweeps by trigger and outcome",
                               ("udf", "trigger", "status"))
UDF_ENQUEUED = Counter("layer_udf_enqueued_total", "UDF items enqueued or revived, by source", ("udf", "source"))
UDF_TRIGGER_ERRORS = Counter("layer_udf_trigger_errors_total", "Write triggers that failed (the write itself did not)",
                             ("udf",))
# ---- watermark metrics (gateway/consistency.py, gateway/watch_board.py) ----
WATCH_METADATA_CALLS = Counter("layer_watermark_metadata_calls_total",
                               "Upstream namespace metadata calls: watcher polls (poll) and request-path fetches the "
                               "watcher used (request)", ("namespace", "source"))
WATCH_FENCES = Counter("layer_watermark_fences_total", "Write fences (namespace set updating on a write's outcome)",
                       ("namespace",))
WATCH_HINTS = Counter("layer_watermark_hints_total",
                      "Namespaces set updating early by a query response showing unindexed documents", ("namespace",))
WATCH_POLLS_VOIDED = Counter("layer_watermark_polls_voided_total",
                             "Poll answers dropped because a fence or hint came after the poll started")
WATCH_LEASE_CHANGES = Counter("layer_watermark_lease_changes_total",
                              "Shared watch leases taken by this worker (claimed free, or taken over when expired)")
WATERMARK_AGE = Gauge("layer_watermark_age_seconds",
                      "Age of the oldest watermark among updating namespaces (sampled at each metrics flush)",
                      multiprocess_mode="livemax")

MAX_QUEUE_IDS = 50
_seen_queue_ids: set[str] = set()

METRICS_FLUSH_INTERVAL_S = 1.0

_seen_namespaces: set[str] = set()
# Pending per-worker totals: histogram child -> [sum, per-bucket counts]; counter child -> increment.
_pending_hist: dict[Any, list[Any]] = {}
_pending_inc: dict[Any, float] = {}
# Labelled children cached per label tuple: `.labels()` takes a lock and builds tuples on every call.
_children: dict[tuple[Any, ...], Any] = {}
# Called at the start of every flush: per-worker objects (the upstream pools) that export state they count themselves.
_samplers: list[Callable[[], None]] = []
_pool_seen: dict[tuple[str, ...], int] = {}


def ns_label(ns: str | None) -> str:
    if ns is None:
        return ""
    if ns in _seen_namespaces:
        return ns
    if len(_seen_namespaces) >= MAX_NAMESPACES:
        return "other"
    _seen_namespaces.add(ns)
    return ns


def queue_label(owner: str) -> str:
    """A pipeline or UDF id as a label value: the first MAX_QUEUE_IDS per worker, then `other`."""
    if owner in _seen_queue_ids:
        return owner
    if len(_seen_queue_ids) >= MAX_QUEUE_IDS:
        return "other"
    _seen_queue_ids.add(owner)
    return owner


def status_label(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (502, 504):
        return "timeout" if status == 504 else "tpuf_error"
    return "tpuf_error" if status >= 500 or status == 429 else "layer_error"


def observe(child: Any, value: float) -> None:
    """Histogram child `.observe(value)`, batched until the next flush."""
    pending = _pending_hist.get(child)
    if pending is None:
        pending = _pending_hist[child] = [0.0, [0] * len(child._upper_bounds)]
    pending[0] += value
    pending[1][bisect_left(child._upper_bounds, value)] += 1


def inc(child: Any, amount: float = 1.0) -> None:
    """Counter child `.inc(amount)`, batched until the next flush."""
    _pending_inc[child] = _pending_inc.get(child, 0.0) + amount


def add_sampler(sampler: Callable[[], None]) -> None:
    _samplers.append(sampler)


def sample_pool(pool: dict[str, Any]) -> None:
    """One pool snapshot (gateway/httpclient/pool.py): gauges set, cumulative counts added as increments."""
    label = pool["upstream"]
    UPSTREAM_CONNECTIONS.labels(label, "idle").set(pool["idle"])
    UPSTREAM_CONNECTIONS.labels(label, "active").set(pool["active"])
    counts = [(UPSTREAM_OPENED, (label,), pool["opened"]), (UPSTREAM_RETRIES, (label,), pool["retried"]),
              (UPSTREAM_POOL_WAITS, (label,), pool["waited"]),
              (UPSTREAM_REQUESTS, (label, "reused"), pool["reused"]),
              (UPSTREAM_REQUESTS, (label, "new"), pool["requests"] - pool["reused"])]
    counts += [(UPSTREAM_DISCARDED, (label, reason), n) for reason, n in pool["discarded"].items()]
    for metric, labels, total in counts:
        key = (metric._name, *labels)
        if total > _pool_seen.get(key, 0):
            inc(metric.labels(*labels), total - _pool_seen.get(key, 0))
            _pool_seen[key] = total


def flush() -> None:
    """Write the pending totals to this worker's multiprocess files (the histogram's own sum and bucket values:
    prometheus-client has no public bulk observe)."""
    for sampler in _samplers:
        sampler()
    for child, (total, counts) in _pending_hist.items():
        child._sum.inc(total)
        for bucket, n in zip(child._buckets, counts):
            if n:
                bucket.inc(n)
    _pending_hist.clear()
    for child, amount in _pending_inc.items():
        child.inc(amount)
    _pending_inc.clear()


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: labels() takes a lock and builds its key on every call (hot paths)."""
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def request_counter(route: str, method: str, code: int) -> Any:
    key = ("req", route, method, str(code))
    found = _children.get(key)
    if found is None:
        found = _children[key] = (REQUESTS.labels(route, method, key[3]),)
    return found[0]


def mirror_counter(op: str, status: str) -> Any:
    """The CACHE_MIRROR child for (op, status), for `inc` (two per write: batched, not one mmap write each)."""
    key = ("mirror", op, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (CACHE_MIRROR.labels(op, status),)
    return found[0]


def op_children(kind: str, ns: str, status: str, *shape: str) -> tuple[Any, ...]:
    """(duration, upstream, overhead[, shape counter]) children for a query ("q") or write ("w")."""
    key = (kind, ns, status, *shape)
    found = _children.get(key)
    if found is None:
        labels = ("direct", ns, status)
        if kind == "q":
            found = (QUERY_DURATION.labels(*labels), QUERY_TPUF.labels(*labels), QUERY_OVERHEAD.labels(*labels),
                     QUERY_SHAPE.labels("direct", ns, *shape, status))
        else:
            found = (UPSERT_DURATION.labels(*labels), UPSERT_TPUF.labels(*labels), UPSERT_OVERHEAD.labels(*labels),
                     UPSERT_BATCH.labels("direct", ns))
        _children[key] = found
    return found


def observe_op(kind: str, ns: str | None, status: int, total: float, upstream: float, *shape: str) -> tuple[Any, ...]:
    children = op_children(kind, ns_label(ns), status_label(status), *shape)
    observe(children[0], total)
    observe(children[1], upstream)
    observe(children[2], max(total - upstream, 0.0))
    return children


def watch_children(ns: str) -> tuple[Any, ...]:
    """(poll calls, request-path calls, fences, hints) children for a namespace's watermark."""
    key = ("watch", ns)
    found = _children.get(key)
    if found is None:
        label = ns_label(ns)
        found = _children[key] = (WATCH_METADATA_CALLS.labels(label, "poll"),
                                  WATCH_METADATA_CALLS.labels(label, "request"),
                                  WATCH_FENCES.labels(label), WATCH_HINTS.labels(label))
    return found


def worker_exit() -> None:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


# ---- cache metrics (owned by the cache engineer) go below this line ----
