"""openapi.yaml and the router describe the same routes: the same (method, path) set both ways, the same route
classes, and the running gateway serves the file itself at GET /openapi.yaml (public)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import yaml

from gateway.auth import ROUTE_CLASSES
from gateway.router import build_router

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
METHODS = ("get", "put", "post", "patch", "delete")


def _shape(template: str) -> str:
    """Parameter names differ (`{ns}` in the router, `{namespace}` in the spec): compare the shape only."""
    return re.sub(r"{[^}]+}", "{}", template)


def spec_routes() -> dict[tuple[str, str], str]:
    return {(m.upper(), _shape(path)): op["x-layer-route-class"]
            for path, item in SPEC["paths"].items() for m, op in item.items() if m in METHODS}


def router_routes() -> dict[tuple[str, str], str]:
    return {(r.method, _shape(r.template)): r.route_class for r in build_router().routes.values()}


def test_every_route_is_in_the_spec_and_every_operation_is_a_route() -> None:
    spec, router = spec_routes(), router_routes()
    assert sorted(set(router) - set(spec)) == [], "routes the gateway serves but openapi.yaml does not describe"
    assert sorted(set(spec) - set(router)) == [], "operations in openapi.yaml the gateway does not serve"


def test_route_classes_agree() -> None:
    spec, router = spec_routes(), router_routes()
    assert {k: v for k, v in spec.items() if router.get(k) != v} == {}
    assert len(router) == len({(m, _shape(t)) for m, t in ROUTE_CLASSES})


def test_public_operations_need_no_key_and_the_others_do() -> None:
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            public = op["x-layer-route-class"] == "public"
            assert (op.get("security") == []) == public, f"{method.upper()} {path}: security vs route class"


def test_the_gateway_serves_its_spec(gateway_stack) -> None:
    gw, _ = gateway_stack
    with urllib.request.urlopen(gw.url + "/openapi.yaml", timeout=10) as resp:  # no Authorization header
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/yaml"
        assert resp.read() == SPEC_PATH.read_bytes()
