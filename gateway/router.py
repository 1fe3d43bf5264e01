"""The route table: (method, path template) -> handler, compiled once into a segment trie.

The request path is split into decoded segments by `path_segments` (400 for dot segments, empty segments, encoded
slashes and bad escapes); the upstream path is rebuilt from the route template and those decoded segments
(`Route.upstream_path`), so what upstream receives is exactly what was routed and authorized.
Unknown path -> 404 JSON, known path with another method -> 405 JSON; nothing is re-routed silently.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

from msgspec import Struct

from gateway.auth import ANSWERED_LOCALLY, BODY_NAMESPACES, ROUTE_CLASSES
from gateway.http import Ctx, GatewayError, Response

if TYPE_CHECKING:
    from gateway.state import WorkerState

Handler = Callable[[Ctx, "WorkerState"], Awaitable[Response]]
# Modules whose ROUTES are merged into the table, in order; later entries replace earlier ones with the same
# (method, template). Optional modules (written by other engineers) are skipped while they do not exist.
ROUTE_MODULES = ("gateway.routes.ops", "gateway.routes.passthrough", "gateway.routes.namespaces",
                 "gateway.routes.query", "gateway.routes.pipelines", "gateway.routes.udfs")
OPTIONAL_ROUTE_MODULES = ("gateway.routes.documents", "gateway.routes.warm", "gateway.routes.keys")


# RFC 3986 pchar minus "/": what a path segment sent upstream keeps unescaped (everything else is escaped once).
SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
SEGMENT_AS_IS = re.compile(r"[A-Za-z0-9!$&'()*+,;=:@._~-]*")  # needs no escaping (the usual namespace name)
BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _invalid_path(message: str) -> GatewayError:
    return GatewayError("invalid_path", message, status=400)


def path_segments(path: str, *, percent_encoded: bool = True) -> list[str]:
    """The request path as decoded segments; 400 `invalid_path` for anything that could route or reach upstream
    differently from how it reads: `.`/`..` segments (also percent-encoded), empty segments (`//`, a trailing
    `/`), an encoded slash inside a segment, a malformed escape or bytes that are not UTF-8.

    `path` is the raw request-target path (ASGI `raw_path`). `percent_encoded=False` is for a server that has
    already decoded it (Granian's RSGI `scope.path` is percent-decoded with lossy UTF-8 and RSGI has no raw path):
    an encoded slash then arrives as a separator and cannot be told apart, and bad UTF-8 shows as U+FFFD.
    """
    if not path.startswith("/"):
        raise _invalid_path("the request path must start with `/`")
    if path == "/":
        return []
    segments = path[1:].split("/")
    for i, seg in enumerate(segments):
        if percent_encoded and "%" in seg:
            seg = segments[i] = _decode_segment(seg, i)
        elif not percent_encoded and "\ufffd" in seg:
            raise _invalid_path(f"path segment {i + 1} is not valid UTF-8")
        if seg in ("", ".", ".."):
            what = "empty" if not seg else f"`{seg}`"
            raise _invalid_path(f"path segment {i + 1} is {what}: empty and dot segments are not allowed")
    return segments


def _decode_segment(seg: str, i: int) -> str:
    if BAD_ESCAPE.search(seg):
        raise _invalid_path(f"path segment {i + 1} has a malformed percent-escape")
    try:
        decoded = unquote_to_bytes(seg).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_path(f"path segment {i + 1} is not valid UTF-8") from None
    if "/" in decoded:
        raise _invalid_path(f"path segment {i + 1} contains an encoded slash")
    return decoded


class RouteSpec(Struct, frozen=True):
    method: str
    template: str
    handler: Any  # Handler
    # Phase run after auth and before the body is read (e.g. the authenticate rate limit); may raise.
    before_body: Any = None  # Callable[[Ctx, WorkerState], Awaitable[None]] | None


class Route(Struct, frozen=True):
    method: str
    template: str
    handler: Any
    route_class: str
    name: str  # the template, used as the metrics/log label
    answered_locally: bool = False  # may answer without asking upstream (gateway.auth.ANSWERED_LOCALLY)
    body_namespaces: Any = None  # Callable[[bytes], list[str]] | None: namespaces the body names (read needed)
    before_body: Any = None

    def upstream_path(self, params: Mapping[str, str], template: str | None = None) -> str:
        """This route's path (or another template's, filled with the same parameters), each parameter
        percent-encoded once."""
        return (template or self.template).format_map({k: _encoded(v) for k, v in params.items()})


def _encoded(segment: str) -> str:
    return segment if SEGMENT_AS_IS.fullmatch(segment) else quote(segment, safe=SEGMENT_SAFE)


class _Node:
    __slots__ = ("literals", "methods", "param", "param_name")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.param_name = ""
        self.methods: dict[str, Route] = {}


class Router:
    def __init__(self, specs: Iterable[RouteSpec]) -> None:
        self.root = _Node()
        self.routes: dict[tuple[str, str], Route] = {}
        for spec in specs:
            key = (spec.method, spec.template)
            assert key in ROUTE_CLASSES, f"route {spec.method} {spec.template} has no class in gateway.auth"
            self.routes[key] = Route(spec.method, spec.template, spec.handler, ROUTE_CLASSES[key], spec.template,
                                     key in ANSWERED_LOCALLY, BODY_NAMESPACES.get(key), spec.before_body)
        for route in self.routes.values():
            self._insert(route)

    def _insert(self, route: Route) -> None:
        node = self.root
        for seg in route.template.strip("/").split("/"):
            if seg.startswith("{"):
                if node.param is None:
                    node.param = _Node()
                    node.param.param_name = seg[1:-1]
                assert node.param.param_name == seg[1:-1], f"conflicting parameter names at {route.template}"
                node = node.param
            else:
                node = node.literals.setdefault(seg, _Node())
        node.methods[route.method] = route

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]]:
        """Route the decoded segments from `path_segments`."""
        node = self.root
        params: dict[str, str] = {}
        for seg in segments:
            nxt = node.literals.get(seg)
            if nxt is None:
                nxt = node.param
                if nxt is None:
                    raise _no_route(method, segments)
                params[nxt.param_name] = seg
            node = nxt
        if not node.methods:
            raise _no_route(method, segments)
        route = node.methods.get(method)
        if route is None:
            allowed = ", ".join(sorted(node.methods))
            path = "/" + "/".join(segments)
            raise GatewayError("method_not_allowed", f"{method} is not allowed on {path}; allowed: {allowed}",
                               status=405, headers=[("allow", allowed)])
        return route, params


def _no_route(method: str, segments: list[str]) -> GatewayError:
    return GatewayError("not_found", f"no route for {method} /{'/'.join(segments)}", status=404)


def collect_specs() -> list[RouteSpec]:
    specs: list[RouteSpec] = []
    for name in ROUTE_MODULES:
        specs.extend(importlib.import_module(name).ROUTES)
    for name in OPTIONAL_ROUTE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        specs.extend(getattr(module, "ROUTES", ()))
    return specs


def build_router() -> Router:
    return Router(collect_specs())
