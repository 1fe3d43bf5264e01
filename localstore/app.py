"""The RSGI application: routing, auth, fault injection, gzip bodies, JSON errors, and the route handlers."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import os
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from .accounting import BILLABLE_QUERIED_MIN, elapsed_ms, returned_bytes
from .errors import StoreError, bad, invalid_type, shape
from .faults import Faults
from .operations import Operations, copy_request
from .query import parse_consistency, rrf, run_query
from .registry import Registry
from .schema import apply_update, full_view, meta_view
from .values import rfc3339
from .writes import READ_ONLY

JSON_HEADERS = [("content-type", "application/json")]
GZIP_HEADERS = [("content-encoding", "gzip"), ("vary", "accept-encoding")]
GZIP_MIN_BYTES = 1024  # smaller bodies are sent as they are (the official client gzips requests from 1 KiB too)
GZIP_LEVEL = 1
DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024  # Turbopuffer's write limit; applies to the inflated body too
decode_json = msgspec.json.Decoder().decode
encode_json = msgspec.json.Encoder().encode


def _err(status: int, message: str) -> tuple[int, Any]:
    return status, {"status": "error", "error": message}


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (`gzip`/`x-gzip` or `*` with a non-zero q)."""
    star = False
    for item in accept_encoding.split(","):
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


class App:
    def __init__(self) -> None:
        self.reg: Registry | None = None
        self.faults = Faults()
        self.counts: dict[str, dict[str, int]] = {}  # route -> namespace -> requests (`/_localstore/counters`)
        self.operations = Operations()
        self.key = os.environ.get("LOCALSTORE_API_KEY") or None
        # LOCALSTORE_API_KEYS="key=org,...": several organisations, each key seeing only its org's namespaces (as
        # Turbopuffer's namespaces live per organisation). LOCALSTORE_API_KEY, when set too, is the default org's.
        self.tenants = parse_tenants(os.environ.get("LOCALSTORE_API_KEYS", ""))
        self.orgs: dict[str, Registry] = {}
        # Test hook (/_localstore/received): requests received per SHA-256 of their bearer, whatever their answer.
        self.received: dict[str, int] = {}
        # `serve --enable-faults`: without it the test hooks /_localstore/faults (it can fail or stall any request)
        # and /_localstore/journal do not exist.
        self.faults_enabled = os.environ.get("LOCALSTORE_ENABLE_FAULTS") == "1"
        self.max_body = int(os.environ.get("LOCALSTORE_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)

    def __rsgi_init__(self, loop: Any) -> None:
        self.setup()

    def setup(self) -> None:
        if self.reg is None:
            data_dir = os.environ.get("LOCALSTORE_DATA_DIR", "./localstore-data")
            lag_ms = int(os.environ.get("LOCALSTORE_INDEX_LAG_MS", "0") or 0)
            self.reg = Registry(data_dir, lag_ms)
            self.orgs = {org: Registry(os.path.join(data_dir, "orgs", org), lag_ms)
                         for org in sorted(set(self.tenants.values()))}
            print(f"localstore listening on {os.environ.get('LOCALSTORE_URL', '')}", flush=True)

    def __rsgi_del__(self, loop: Any) -> None:
        pass

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        await self.__call__(scope, protocol)

    async def __call__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        self.setup()
        try:
            status, body = await self.handle(scope, protocol)
        except StoreError as e:
            status, body = _err(e.status, e.message)
        except Exception as e:  # noqa: BLE001 - last resort, still a JSON body
            print(f"localstore internal error: {e!r}", file=sys.stderr, flush=True)
            status, body = _err(500, f"internal error: {e}")
        headers = JSON_HEADERS if status != 429 else JSON_HEADERS + [("retry-after", "0")]
        data = encode_json(body)
        if len(data) >= GZIP_MIN_BYTES and accepts_gzip(scope.headers.get("accept-encoding", "")):
            data, headers = gzip.compress(data, GZIP_LEVEL, mtime=0), headers + GZIP_HEADERS
        protocol.response_bytes(status, headers, data)

    async def _body(self, scope: Any, protocol: Any) -> Any:
        length = scope.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body:
            raise StoreError(413, f"request body exceeds {self.max_body} bytes")
        raw = await protocol()
        if len(raw) > self.max_body:
            raise StoreError(413, f"request body exceeds {self.max_body} bytes")
        if scope.headers.get("content-encoding", "").lower() == "gzip":
            raw = _gunzip(raw, self.max_body)
        if not raw:
            raise bad("request body is empty; expected JSON")
        try:
            return decode_json(raw)
        except msgspec.DecodeError as e:
            raise bad(f"malformed JSON: {e}") from None

    async def handle(self, scope: Any, protocol: Any) -> tuple[int, Any]:
        method, parts = scope.method, [unquote(p) for p in scope.path.strip("/").split("/")]
        if parts[0] == "_localstore":
            return await self._admin(method, parts, scope, protocol)
        route, ns, allowed = _route(parts)
        if route is None:
            return _err(404, f"no route for {scope.path}")
        if method not in allowed:
            return _err(405, f"method {method} not allowed on {scope.path}")
        token = _bearer(scope)
        if self.faults_enabled:
            digest = hashlib.sha256(token.encode()).hexdigest()
            self.received[digest] = self.received.get(digest, 0) + 1
        denied = self._denied(scope)
        if denied is not None:
            return denied
        per_ns = self.counts.setdefault(_fault_route(route, method), {})
        per_ns[ns] = per_ns.get(ns, 0) + 1
        fault = self.faults.match(_fault_route(route, method), ns)
        failing = fault is not None and fault["status"] is not None
        if fault is not None:
            if fault["delay_ms"]:
                await asyncio.sleep(fault["delay_ms"] / 1000)
            if failing and not fault["apply"]:
                return _err(fault["status"], "injected fault")
        body = await self._body(scope, protocol) if method in ("POST", "PATCH") else None
        handler: Callable[[str, str, Any, Any], tuple[int, Any]] = getattr(self, "h_" + route)
        org = self.tenants.get(token)
        if org is None:
            result = handler(method, ns, body, scope)
        else:  # handlers are synchronous: nothing else runs while `reg` is this org's registry
            default, self.reg = self.reg, self.orgs[org]
            try:
                result = handler(method, ns, body, scope)
            finally:
                self.reg = default
        if fault is not None and fault["after_ms"]:
            await asyncio.sleep(fault["after_ms"] / 1000)
        if failing:
            return _err(fault["status"], "injected fault (the request was applied)")
        return result

    def _denied(self, scope: Any) -> tuple[int, Any] | None:
        token = _bearer(scope)
        if not token:
            return _err(401, "missing or malformed Authorization: Bearer <api key> header")
        if self.tenants:
            accepted = [*self.tenants, *([self.key] if self.key is not None else [])]
            # every key compared (constant time each), so the answer time does not tell which one is closest
            if not sum(hmac.compare_digest(token.encode(), key.encode()) for key in accepted):
                return _err(403, "API key is not authorized")
        elif self.key is not None and not hmac.compare_digest(token.encode(), self.key.encode()):
            return _err(403, "API key is not authorized")
        return None

    async def _admin(self, method: str, parts: list[str], scope: Any, protocol: Any) -> tuple[int, Any]:
        if parts == ["_localstore", "health"]:
            return (200, {"status": "ok"}) if method == "GET" else _err(405, "method not allowed")
        if parts[1:] not in (["faults"], ["journal"], ["received"], ["counters"]) or not self.faults_enabled:
            return _err(404, f"no route for {scope.path}")
        denied = self._denied(scope)  # test hooks: only with --enable-faults and the store's key
        if denied is not None:
            return denied
        if parts[1] == "received":
            if method == "GET":
                return 200, {"by_bearer_sha256": self.received}
            return _err(405, "method not allowed")
        if parts[1] == "counters":  # requests per route and namespace, e.g. the metadata calls of the watchers
            if method == "DELETE":
                self.counts = {}
                return 200, {"status": "ok"}
            return 200, {"counters": self.counts}
        if parts[1] == "faults":
            if method == "GET":
                return 200, self.faults.listing()
            if method == "DELETE":
                self.faults.clear()
                return 200, {"status": "ok"}
            if method == "POST":
                return 200, {"status": "ok", "fault": self.faults.add(await self._body(scope, protocol))}
            return _err(405, "method not allowed")
        assert self.reg is not None
        if method == "GET":
            ns = parse_qs(scope.query_string).get("namespace", [""])[0]
            return 200, {"entries": self.reg.journal.entries(ns)}
        if method == "POST":
            body = await self._body(scope, protocol)
            if not isinstance(body, dict) or not isinstance(body.get("namespace"), str):
                raise shape("journal: expected {\"namespace\": str}")
            self.reg.journal.start(body["namespace"])
            return 200, {"status": "ok"}
        return _err(405, "method not allowed")

    # ---- handlers -------------------------------------------------------------------------------
    def h_write(self, method: str, ns: str, body: Any, scope: Any) -> tuple[int, Any]:
        if method == "DELETE":
            assert self.reg is not None
            self.reg.delete(ns)
            return 200, {"status": "OK"}
        assert self.reg is not None
        return 200, self.reg.write(ns, body)

    def h_query(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        t0 = time.perf_counter()
        assert self.reg is not None
        ns = self.reg.get(name)
        if not isinstance(body, dict):
            raise shape("query: expected an object")
        eventual = parse_consistency(body.get("consistency"))
        t_exec = time.perf_counter()
        docs, unindexed = ns.view(eventual)
        enc = body.get("vector_encoding", "float")
        if "queries" in body:
            qs = body["queries"]
            if not isinstance(qs, list):
                raise shape("queries: expected an array")
            if not 1 <= len(qs) <= 16:
                raise bad("queries: between 1 and 16 subqueries are allowed")
            extra = set(body) - {"queries", "consistency", "vector_encoding", "rerank_by", "limit", "top_k", "offset"}
            if extra:
                raise bad(f"unknown field(s) in multi-query: {sorted(extra)}")
            results = [run_query(ns, q, docs, enc) for q in qs]
            rr = body.get("rerank_by")
            if rr is not None:
                if not isinstance(rr, list) or not rr or rr[0] != "RRF":
                    raise bad("rerank_by: only [\"RRF\", {...}] is supported")
                lim = body.get("limit", body.get("top_k", 10))
                lim = lim.get("total", 10) if isinstance(lim, dict) else lim
                opts = rr[1] if len(rr) > 1 and isinstance(rr[1], dict) else {}
                offset = _count(body.get("offset", 0), "offset")
                rows = rrf([r.get("rows", []) for r in results], opts, _count(lim, "limit"), offset)
                results = [{"rows": rows}]
            out: dict[str, Any] = {"results": results}
        else:
            out = run_query(ns, body, docs, enc)
        executed_ms = elapsed_ms(t_exec)
        out["billing"] = {"billable_logical_bytes_queried": BILLABLE_QUERIED_MIN,
                          "billable_logical_bytes_returned": returned_bytes(out, ns.schema, ns.id_type)}
        out["performance"] = {"approx_namespace_size": len(ns.current.rows), "cache_hit_ratio": 1.0,
                              "cache_temperature": "hot", "exhaustive_search_count": unindexed,
                              "query_execution_ms": executed_ms, "server_total_ms": elapsed_ms(t0)}
        return 200, out

    def _metadata(self, name: str, v2: bool) -> dict[str, Any]:
        assert self.reg is not None
        ns = self.reg.get(name)
        out: dict[str, Any] = {
            "approx_logical_bytes": ns.current.nbytes, "approx_row_count": len(ns.current.rows),
            "created_at": rfc3339(ns.created_at), "updated_at": rfc3339(ns.updated_at),
            "last_write_at": rfc3339(ns.updated_at),
            "schema": meta_view(ns.schema, ns.id_type, ns.metric),
            "encryption": {"mode": "default"} if v2 else {"sse": True}, "index": ns.index_status()}
        if ns.read_only:
            out["read_only"] = True
        return out

    def h_metadata_v2(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        return 200, self._metadata(name, True)

    def h_metadata_v1(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        if method == "PATCH":
            assert self.reg is not None
            ns = self.reg.get(name)
            if not isinstance(body, dict):
                raise shape("metadata patch: expected an object")
            ro = body.get("read_only")
            if ro is not None and not isinstance(ro, bool):
                raise invalid_type(ro, "a boolean", "read_only")
            if set(body) - {"read_only", "pinning"}:
                raise bad(f"unknown field(s): {sorted(set(body) - {'read_only', 'pinning'})}")
            if ro is not None and ro != ns.read_only:
                ns.read_only = ro
                self.reg.save_meta(ns)
        return 200, self._metadata(name, False)

    def h_namespaces(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        qs = parse_qs(scope.query_string or "")
        size_raw = qs.get("page_size", ["100"])[0]
        try:
            size = int(size_raw)
        except ValueError:
            raise invalid_type(size_raw, "an integer", "page_size") from None
        if not 1 <= size <= 1000:
            raise bad("page_size must be between 1 and 1000")
        assert self.reg is not None
        return 200, self.reg.listing(qs.get("prefix", [""])[0], size, qs.get("cursor", [None])[0])

    def h_schema(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        assert self.reg is not None
        ns = self.reg.get(name)
        if method == "POST":
            if ns.read_only:
                raise bad(READ_ONLY)
            if not isinstance(body, dict):
                raise shape("schema update: expected a map of attribute to schema")
            schema = {k: dict(v) for k, v in ns.schema.items()}
            id_type = ns.id_type
            for attr, param in body.items():
                id_type = apply_update(schema, attr, param, id_type) or id_type
            ns.schema, ns.id_type = schema, id_type
            for docs in {id(ns.current): ns.current, id(ns.indexed): ns.indexed}.values():
                docs.terms.clear()
            self.reg.save_meta(ns)
        return 200, full_view(ns.schema, ns.id_type)

    def h_hint_cache_warm(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        assert self.reg is not None
        self.reg.get(name)
        return 202, {"status": "ACCEPTED", "message": "cache warm hint accepted"}

    def h_explain_query(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        assert self.reg is not None
        ns = self.reg.get(name)
        docs, _ = ns.view(False)
        if isinstance(body, dict) and "queries" not in body:
            run_query(ns, body, docs, "float")
        return 200, {"plan_text": f"exact scan over {len(docs.rows)} rows of namespace '{name}'"}

    def h_async(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        assert self.reg is not None
        write = copy_request(body)
        fault = self.faults.match("copy", name)
        delay_s = fault["delay_ms"] / 1000 if fault else 0.0
        fail = fault["status"] if fault else None
        return 200, {"token": self.operations.start(name, write, self.reg.write, delay_s, fail)}

    def h_operation(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        return 200, self.operations.get(name, unquote(scope.path.rstrip("/").rsplit("/", 1)[1]))

    def h_recall(self, method: str, name: str, body: Any, scope: Any) -> tuple[int, Any]:
        assert self.reg is not None
        ns = self.reg.get(name)
        k = body.get("top_k", 10) if isinstance(body, dict) else 10
        out: dict[str, Any] = {"avg_recall": 1.0, "avg_ann_count": float(k), "avg_exhaustive_count": float(k)}
        if isinstance(body, dict) and body.get("include_ground_truth"):
            out["ground_truth"] = []
        _ = ns
        return 200, out


def _bearer(scope: Any) -> str:
    auth = scope.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


ORG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def parse_tenants(raw: str) -> dict[str, str]:
    """`key=org,key=org` -> {key: org}; an org name is a directory name, so [A-Za-z0-9_-]+."""
    tenants: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, org = item.strip().partition("=")
        if not sep or not key or not org or not set(org) <= ORG_CHARS:
            raise SystemExit(f"LOCALSTORE_API_KEYS: expected key=org[,key=org...] (org: [A-Za-z0-9_-]+), got {item!r}")
        tenants[key] = org
    return tenants


def _gunzip(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise bad("request body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise StoreError(413, f"request body exceeds {limit} bytes once inflated")
    if not inflater.eof or inflater.unused_data:
        raise bad("request body is not valid gzip: truncated, or data after the stream")
    return out


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise invalid_type(v, "a non-negative integer", what)
    return v


def _route(p: list[str]) -> tuple[str | None, str, tuple[str, ...]]:
    n = len(p)
    if n >= 2 and p[1] == "namespaces":
        if p[0] == "v2" and n == 3:
            return "write", p[2], ("POST", "DELETE")
        if p[0] == "v2" and n == 4:
            sub = {"query": "query", "metadata": "metadata_v2", "explain_query": "explain_query",
                   "async": "async"}.get(p[3])
            if sub:
                return sub, p[2], ("GET",) if sub == "metadata_v2" else ("POST",)
        if p[0] == "v1" and n == 5 and p[3] == "operations":
            return "operation", p[2], ("GET",)
        if p[0] == "v1" and n == 2:
            return "namespaces", "", ("GET",)
        if p[0] == "v1" and n == 4:
            sub = {"metadata": "metadata_v1", "schema": "schema", "hint_cache_warm": "hint_cache_warm"}.get(p[3])
            if sub:
                allowed = {"metadata_v1": ("GET", "PATCH"), "schema": ("GET", "POST"), "hint_cache_warm": ("GET",)}
                return sub, p[2], allowed[sub]
        if p[0] == "v1" and n == 5 and p[3] == "_debug" and p[4] == "recall":
            return "recall", p[2], ("POST",)
    return None, "", ()


def _fault_route(route: str, method: str) -> str:
    if route == "write":
        return "delete" if method == "DELETE" else "write"
    return {"metadata_v1": "metadata", "metadata_v2": "metadata"}.get(route, route)


app = App()
