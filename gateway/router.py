"""The route table: (method, path template) -> handler, compiled once into a segment trie.

Unknown path -> 404 JSON, known path with another method -> 405 JSON; nothing is re-routed silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from gateway.auth import ROUTE_CLASSES
from gateway.http import Ctx, GatewayError, Response

if TYPE_CHECKING:
    from gateway.state import WorkerState

Handler = Callable[[Ctx, "WorkerState"], Awaitable[Response]]
# Modules whose ROUTES are merged into the table, in order; later entries replace earlier ones with the same
# (method, template). Optional modules (written by other engineers) are skipped while they do not exist.
ROUTE_MODULES = ("gateway.routes.ops", "gateway.routes.passthrough", "gateway.routes.namespaces",
                 "gateway.routes.query")
OPTIONAL_ROUTE_MODULES = ("gateway.routes.documents", "gateway.routes.warm", "gateway.routes.keys")


class RouteSpec(Struct, frozen=True):
    method: str
    template: str
    handler: Any  # Handler


class Route(Struct, frozen=True):
    method: str
    template: str
    handler: Any
    route_class: str
    name: str  # the template, used as the metrics/log label


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
            self.routes[key] = Route(spec.method, spec.template, spec.handler, ROUTE_CLASSES[key], spec.template)
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

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        node: _Node | None = self.root
        params: dict[str, str] = {}
        for seg in path.strip("/").split("/"):
            nxt = node.literals.get(seg) if node else None
            if nxt is None and node is not None and node.param is not None and seg:
                nxt = node.param
                params[nxt.param_name] = seg
            node = nxt
            if node is None:
                break
        if node is None or not node.methods:
            raise GatewayError("not_found", f"no route for {method} {path}", status=404)
        route = node.methods.get(method)
        if route is None:
            allowed = ", ".join(sorted(node.methods))
            raise GatewayError("method_not_allowed", f"{method} is not allowed on {path}; allowed: {allowed}",
                               status=405, headers=[("allow", allowed)])
        return route, params


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
