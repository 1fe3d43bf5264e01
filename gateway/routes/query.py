"""Queries: `POST /v2/namespaces/{ns}/query` (and v1 rewritten to v2).

Phases: decode a narrow view -> Layer keys (vector / nearest_to_id / as_of / between / cursor) -> stable-read
watermark (eventual consistency + `_hevlayer_upserted_at <= W` while the namespace is updating) -> upstream with one
immediate retry on 429 (watermark forced on) -> upstream body relayed untouched + Layer headers.
The upstream body is never re-shaped: row order, numeric ids, billing, performance and aggregations are kept.
"""

from __future__ import annotations

import random
import re
import time
from functools import partial
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway import metrics
from gateway.auth import BEARER_CALLER
from gateway.cache.partition import cache_namespace, partitioned
from gateway.cache.results import CachedResult
from gateway.compression import forwarded_encoding, identity_body
from gateway.consistency import EXHAUSTIVE_KEY, STABLE, TAIL_BYTES, shows_unindexed
from gateway.cursor import decode_cursor, encode_cursor
from gateway.http import Ctx, Response, json_encode, validation_error
from gateway.router import RouteSpec
from gateway.routes.passthrough import relay, rewritten, upstream_path
from gateway.state import WorkerState
from gateway.upstream import UpstreamResponse
from gateway.vectors import resolve_vectors

STAMP = "_hevlayer_upserted_at"
EVENTUAL_TAIL = b',"consistency":{"level":"eventual"}}'
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
TAG = re.compile(r"^[A-Za-z0-9:_\-./=+]{1,128}$")
MAX_TAGS = 32
HINT_INFLATE_LIMIT = 16 * 1024  # a gzipped query body is inflated for the unindexed hint only up to this size
LAYER_KEYS = ("vector", "nearest_to_id", "as_of", "between", "cursor", "include_leg_breakdown")


class QueryView(msgspec.Struct):
    """The fields the gateway looks at. Turbopuffer's own fields stay raw JSON (upstream validates them and answers
    in its own words); only Layer's keys are typed, so only they can fail to decode here."""

    rank_by: Raw | UnsetType = UNSET
    top_k: Raw | UnsetType = UNSET
    limit: Raw | UnsetType = UNSET
    filters: Raw | UnsetType = UNSET
    consistency: Raw | UnsetType = UNSET
    queries: Raw | UnsetType = UNSET
    aggregate_by: Raw | UnsetType = UNSET
    include_attributes: Raw | UnsetType = UNSET
    exclude_attributes: Raw | UnsetType = UNSET
    offset: Raw | UnsetType = UNSET
    vector: list[float] | str | UnsetType = UNSET
    nearest_to_id: list[str | int] | UnsetType = UNSET
    as_of: int | UnsetType = UNSET
    between: tuple[int, int] | UnsetType = UNSET
    cursor: str | UnsetType = UNSET
    include_leg_breakdown: bool | UnsetType = UNSET


class RowView(msgspec.Struct):
    id: Any = None


class ResultView(msgspec.Struct):
    rows: list[RowView] | None = None


query_view_decoder = msgspec.json.Decoder(QueryView)
result_view_decoder = msgspec.json.Decoder(ResultView)


class Plan:
    """What the Layer phases decided for one query."""

    __slots__ = (
        "body",
        "doc",
        "has_filter",
        "has_rank_by",
        "inject",
        "layer",
        "multi",
        "offset",
        "page_size",
        "sent",
        "strong",
        "watch",
        "watermark",
    )

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None  # decoded body, only when it must be rewritten
        self.body = b""
        self.sent: dict[str, Any] | None = None  # what `body` encodes, when built here from `doc`
        self.watch: str | None = None  # the namespace's watch name (None: derive mode, no identity known)
        self.watermark: int | None = None
        self.inject = False
        self.layer = False  # the Layer query shape (vector / nearest_to_id / cursor ...), not a native body
        self.strong = False
        self.page_size: int | None = None
        self.offset = 0
        self.multi = False
        self.has_filter = False
        self.has_rank_by = False


def and_filters(*parts: Any) -> Any:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else ["And", present]


def watermark_leaf(w: int) -> list[Any]:
    return [STAMP, "Lte", w]


def parse_tags(ctx: Ctx) -> None:
    seen: set[str] = set()
    for header in ("x-hevlayer-tags", "x-hevlayer-tag"):
        raw = ctx.headers.get(header)
        if not raw:
            continue
        for tag in raw.split(","):
            tag = tag.strip()
            if not tag:
                continue
            if len(tag.encode()) > 128 or not TAG.match(tag):
                raise validation_error(f"invalid tag {tag!r} in {header}: tags are 1-128 bytes of [A-Za-z0-9:_-./=+]")
            seen.add(tag)
    if len(seen) > MAX_TAGS:
        raise validation_error(f"too many tags: {len(seen)} unique tags, at most {MAX_TAGS}")


def traceparent(ctx: Ctx) -> str:
    inbound = ctx.headers.get("traceparent")
    if inbound and TRACEPARENT.match(inbound.strip()):
        return inbound.strip()
    # trace id (16 bytes) + span id (8 bytes): W3C asks for randomness, not secrecy (no syscall per request)
    rnd = f"{random.getrandbits(192):048x}"
    return f"00-{rnd[:32]}-{rnd[32:]}-01"


def decode_view(body: bytes) -> QueryView | None:
    """The view of a query body; None when the body is not a JSON object (upstream's to reject). A Layer key of the
    wrong type is the gateway's own 422 (only Layer keys are typed, so only they carry an error path)."""
    try:
        return query_view_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if " - at `$." in str(exc):
            raise validation_error(f"invalid query request: {exc}") from None
        return None
    except msgspec.DecodeError:
        return None


def raw_value(raw: Raw | UnsetType) -> Any:
    return None if raw is UNSET else msgspec.json.decode(raw)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _page_size(view: QueryView) -> int | None:
    if view.top_k is not UNSET:
        return _count(raw_value(view.top_k))
    limit = raw_value(view.limit)
    if isinstance(limit, dict) and "per" not in limit:
        return _count(limit.get("total"))
    return _count(limit)


def _temporal(view: QueryView) -> Any:
    if view.as_of is not UNSET and view.between is not UNSET:
        raise validation_error("`as_of` and `between` are mutually exclusive")
    if view.as_of is not UNSET:
        return [STAMP, "Lte", view.as_of]
    if view.between is not UNSET:
        lo, hi = view.between
        if lo >= hi:
            raise validation_error(f"`between` must be [lo, hi] with lo < hi, got [{lo}, {hi}]")
        return ["And", [[STAMP, "Gt", lo], [STAMP, "Lte", hi]]]
    return None


async def layer_rewrite(ctx: Ctx, state: WorkerState, view: QueryView, plan: Plan) -> dict[str, Any]:
    """Turn the Layer query shape into a native body (only called when a Layer key or the watermark needs it)."""
    doc: dict[str, Any] = msgspec.json.decode(ctx.body)
    for key in LAYER_KEYS:
        doc.pop(key, None)
    has_vec, has_ids = view.vector is not UNSET, view.nearest_to_id is not UNSET
    if has_vec and has_ids:
        raise validation_error("query request must specify exactly one of `vector` or `nearest_to_id`, not both")
    if (has_vec or has_ids) and view.rank_by is not UNSET:
        raise validation_error("`rank_by` cannot be combined with `vector` or `nearest_to_id`")
    if has_vec:
        if not view.vector:
            raise validation_error("`vector` must not be empty")
        doc["rank_by"] = ["vector", "ANN", view.vector]
    elif has_ids:
        if not view.nearest_to_id:
            raise validation_error("`nearest_to_id` must not be empty")
        doc["rank_by"] = ["vector", "ANN", await resolve_vectors(ctx, state, ctx.params["ns"], view.nearest_to_id)]
    if (has_vec or has_ids) and view.top_k is UNSET and view.limit is UNSET:
        doc["top_k"] = plan.page_size = 10
    if view.cursor is not UNSET:
        if view.offset is not UNSET:
            raise validation_error("`cursor` and `offset` are mutually exclusive")
        plan.offset = doc["offset"] = decode_cursor(view.cursor)
    doc["filters"] = and_filters(doc.get("filters"), _temporal(view))
    if doc["filters"] is None:
        del doc["filters"]
    return doc


def hide_stamp(q: Any) -> None:
    """`include_attributes: true` / `exclude_attributes` would return the gateway's stamp, which Turbopuffer never
    returns: ask for "everything except the stamp" instead. An explicit list naming the stamp is honoured; a
    malformed `exclude_attributes` is left for upstream to reject."""
    if not isinstance(q, dict):
        return
    exclude = q.get("exclude_attributes", [])
    if not isinstance(exclude, list) or STAMP in exclude:
        return
    if q.get("include_attributes") is True:
        del q["include_attributes"]
        q["exclude_attributes"] = [*exclude, STAMP]
    elif "exclude_attributes" in q:
        q["exclude_attributes"] = [*exclude, STAMP]


def _shows_stamp(view: QueryView) -> bool:
    exclude = raw_value(view.exclude_attributes)
    return raw_value(view.include_attributes) is True or isinstance(exclude, list) and STAMP not in exclude


def with_watermark(doc: dict[str, Any], w: int) -> dict[str, Any]:
    out = dict(doc)
    if "queries" in out and isinstance(out["queries"], list):
        out["queries"] = [dict(q, filters=and_filters(q.get("filters"), watermark_leaf(w))) if isinstance(q, dict)
                          else q for q in out["queries"]]
    else:
        out["filters"] = and_filters(out.get("filters"), watermark_leaf(w))
    return out


async def plan_query(ctx: Ctx, state: WorkerState) -> Plan:
    plan = Plan()
    view = decode_view(ctx.body)
    if view is None:  # not a JSON object: forwarded as it came, upstream answers
        plan.body = ctx.body
        return plan
    plan.multi = view.queries is not UNSET
    plan.has_filter = view.filters is not UNSET or view.as_of is not UNSET or view.between is not UNSET
    plan.has_rank_by = view.rank_by is not UNSET or view.vector is not UNSET or view.nearest_to_id is not UNSET
    plan.page_size = None if plan.multi else _page_size(view)
    plan.offset = _count(raw_value(view.offset)) or 0
    consistency = raw_value(view.consistency)
    plan.strong = isinstance(consistency, dict) and consistency.get("level") == "strong"
    ns = ctx.params["ns"]
    plan.watch = await cache_namespace(state, ns, ctx.upstream_key, ctx)
    if plan.watch is not None:
        plan.watermark, inject = state.watcher.decision(plan.watch)
    else:
        inject = False
    plan.inject = inject and not plan.strong
    plan.layer = any(getattr(view, k) is not UNSET for k in LAYER_KEYS)
    if plan.inject or plan.multi or plan.layer or _shows_stamp(view):
        plan.doc = await layer_rewrite(ctx, state, view, plan)
        hide_stamp(plan.doc)
        queries = plan.doc.get("queries")
        for sub in queries if isinstance(queries, list) else ():
            hide_stamp(sub)
        if view.consistency is UNSET:
            plan.doc["consistency"] = {"level": "eventual"}
        plan.sent = with_watermark(plan.doc, plan.watermark) if plan.inject else plan.doc
        plan.body = json_encode(plan.sent)
    elif view.consistency is UNSET:
        # Only the consistency level changes: splice it in instead of re-encoding the body.
        head = ctx.body.rstrip()[:-1].rstrip()
        plan.body = head + (EVENTUAL_TAIL[1:] if head.endswith(b"{") else EVENTUAL_TAIL)
    else:
        plan.body = ctx.body
    return plan


async def send_with_retry(ctx: Ctx, state: WorkerState, plan: Plan, path: str) -> UpstreamResponse:
    """One upstream call, plus exactly one immediate retry on 429 with the watermark forced on (when known and the
    caller did not ask for strong consistency). A persisting 429 is relayed; other statuses are never retried."""
    resp = await state.upstream.request("POST", path, ctx.upstream_key, plan.body, "query", ctx,
                                        accept_encoding=forwarded_encoding(ctx), idempotent=True)
    return resp if resp.status != 429 else await retry_429(ctx, state, plan, path)


async def retry_429(ctx: Ctx, state: WorkerState, plan: Plan, path: str) -> UpstreamResponse:
    body = plan.body
    if plan.watermark is not None and not plan.inject and not plan.strong:
        doc = plan.doc if plan.doc is not None else msgspec.json.decode(plan.body)
        body = json_encode(with_watermark(doc, plan.watermark))
        plan.inject = True
    retry = await state.upstream.request("POST", path, ctx.upstream_key, body, "query (retry)", ctx,
                                         accept_encoding=forwarded_encoding(ctx), idempotent=True)
    metrics.QUERY_RETRIES.labels(metrics.ns_label(ctx.params["ns"]), "ok" if retry.ok else str(retry.status)).inc()
    return retry


def next_cursor(resp: UpstreamResponse, plan: Plan) -> str | None:
    """Layer single queries only (native bodies page with their own offset); decodes just the row ids."""
    if not plan.layer or plan.multi or not plan.page_size or not resp.ok:
        return None
    body = identity_body(resp)
    try:
        rows = result_view_decoder.decode(body).rows if body is not None else None
    except msgspec.DecodeError:
        return None
    if rows is None or len(rows) < plan.page_size or plan.offset + len(rows) >= 10_000:
        return None
    return encode_cursor(plan.offset + len(rows))


async def run_query(template: str | None, ctx: Ctx, state: WorkerState) -> Response:
    """The query routes' handler (`template`: the upstream path's, when not the route's own). The plain path awaits
    the upstream call itself: every coroutine between the server and the socket costs CPU on each wake-up."""
    parse_tags(ctx)
    trace = traceparent(ctx)
    plan = await plan_query(ctx, state)
    ns = ctx.params["ns"]
    path = upstream_path(ctx, template)
    if state.results is not None and state.results.enabled(ns):
        return await cached_query(ctx, state, plan, path, trace)
    resp = await state.upstream.request("POST", path, ctx.upstream_key, plan.body, "query", ctx,
                                        accept_encoding=forwarded_encoding(ctx), idempotent=True)
    if resp.status == 429:
        resp = await retry_429(ctx, state, plan, path)
    if resp.ok and plan.watch is not None:
        state.watcher.watch(plan.watch, ctx.upstream_key)
        if not plan.inject:
            hint_unindexed(state, plan.watch, resp)
    _observe(ctx, ns, plan, resp.status)
    return relay(resp, layer_headers(plan, trace, next_cursor(resp, plan)))


def layer_headers(plan: Plan, trace: str, cursor: str | None) -> list[tuple[str, str]]:
    headers = [("traceparent", trace)]
    if plan.watermark is not None:
        headers.append(("x-layer-stable-as-of", str(plan.watermark)))
    if plan.inject:
        headers.append(("x-layer-watermark-applied", "true"))
    if cursor is not None:
        headers.append(("x-layer-next-cursor", cursor))
    return headers


async def cached_query(ctx: Ctx, state: WorkerState, plan: Plan, path: str, trace: str) -> Response:
    """LAYER_RESULT_CACHE (gateway/cache/results.py): a hit, a share of an identical query in flight, or a miss
    that fills the cache. In derive-from-request mode the cache is used only by a bearer upstream accepts for the
    namespace (gateway/verdicts.py), and only for answers about the namespace identity upstream showed it."""
    results, ns = state.results, ctx.params["ns"]
    name = ns
    if ctx.principal is BEARER_CALLER and state.verdicts is not None:
        # Derive mode: answers are kept per namespace identity (gateway/cache/partition.py): another
        # organisation's namespace of this name, or an earlier one deleted since, never answers this caller.
        verdict = await state.verdicts.check(ctx.upstream_key or "", ns)
        if not isinstance(verdict, str):
            return relay(verdict)
        if not verdict:  # upstream showed no identity: nothing may be shared
            results.bypassed += 1
            return _answer_upstream(ctx, state, plan, trace, await send_with_retry(ctx, state, plan, path))
        name = partitioned(ns, verdict)
    key = await results.key(name, plan.watermark if plan.inject else None, plan.body, plan.sent)
    if key is None:  # the cache cannot vouch for a hit now: a plain query
        results.bypassed += 1
        resp = await send_with_retry(ctx, state, plan, path)
        return _answer_upstream(ctx, state, plan, trace, resp)
    found = results.get(key)
    if found is None:
        (resp, found), own_call = await results.shared(key, lambda: _fill(ctx, state, plan, path, key))
        if own_call or found is None:
            results.misses += 1
            if found is not None:
                return _answer_cached(ctx, state, plan, trace, found, "miss")
            if not own_call:  # shared a call whose answer is not cacheable (an error): ask with this caller's key
                resp = await send_with_retry(ctx, state, plan, path)
            return _answer_upstream(ctx, state, plan, trace, resp)
    results.hits += 1
    return _answer_cached(ctx, state, plan, trace, found, "hit")


async def _fill(ctx: Ctx, state: WorkerState, plan: Plan, path: str,
                key: tuple[Any, ...]) -> tuple[UpstreamResponse, CachedResult | None]:
    resp = await send_with_retry(ctx, state, plan, path)
    body = identity_body(resp) if resp.status == 200 else None
    if body is None:
        return resp, None
    found = CachedResult(body, rewritten(resp, body).headers, next_cursor(resp, plan))
    state.results.put(key, found)
    return resp, found


def _answer_upstream(ctx: Ctx, state: WorkerState, plan: Plan, trace: str, resp: UpstreamResponse) -> Response:
    ns = ctx.params["ns"]
    if resp.ok and plan.watch is not None:
        state.watcher.watch(plan.watch, ctx.upstream_key)
    _observe(ctx, ns, plan, resp.status)
    return relay(resp, [*layer_headers(plan, trace, next_cursor(resp, plan)), ("x-layer-cache", "miss")])


def _answer_cached(ctx: Ctx, state: WorkerState, plan: Plan, trace: str, found: CachedResult,
                   outcome: str) -> Response:
    ns = ctx.params["ns"]
    if plan.watch is not None:  # keeps the namespace polled: hits need fresh upstream metadata
        state.watcher.watch(plan.watch, ctx.upstream_key)
    _observe(ctx, ns, plan, 200)
    return Response(200, found.body, [*found.headers, *layer_headers(plan, trace, found.cursor),
                                      ("x-layer-cache", outcome)])


def hint_unindexed(state: WorkerState, ns: str, resp: UpstreamResponse) -> None:
    """While this worker thinks `ns` (a watch name) is stable, a response that searched unindexed documents says
    otherwise."""
    w = state.watcher.state(ns)
    if w is None or w.status != STABLE:
        return
    body = identity_body(resp, HINT_INFLATE_LIMIT) if len(resp.body) <= HINT_INFLATE_LIMIT else None
    if body is None and resp.body[-TAIL_BYTES:].rfind(EXHAUSTIVE_KEY) >= 0:
        body = resp.body  # identity and large: the tail is enough
    if body is not None and shows_unindexed(body):
        state.watcher.hint_unindexed(ns)


def _observe(ctx: Ctx, ns: str, plan: Plan, status: int) -> None:
    total = time.perf_counter() - ctx.started
    shape = ("true" if plan.has_filter else "false", "true" if plan.has_rank_by else "false")
    metrics.inc(metrics.observe_op("q", ns, status, total, ctx.upstream_seconds, *shape)[3])


ROUTES = (
    RouteSpec("POST", "/v2/namespaces/{ns}/query", partial(run_query, None)),
    RouteSpec("POST", "/v1/namespaces/{ns}/query", partial(run_query, "/v2/namespaces/{ns}/query")),
)
