"""sdk/scenarios.json replayed against the recording fake (the same file the Go and TypeScript runners replay)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_layer import FakeLayer
from hevlayer import OPERATIONS, AsyncHevlayer, GatewayUnreachableError, Hevlayer, HevlayerError, LayerResponse

SCENARIOS = json.loads((Path(__file__).resolve().parents[3] / "sdk" / "scenarios.json").read_text())["scenarios"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLayer]:
    f = FakeLayer()
    yield f
    f.close()


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURBOPUFFER_API_KEY", raising=False)
    monkeypatch.delenv("TURBOPUFFER_API_URL", raising=False)


def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET")) as r:
        return json.loads(r.read())


def subset(expected: Any, actual: Any, where: str = "$") -> None:
    """Expected is a subset of actual; an expected null means absent or null; `reason` is a substring."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, want in expected.items():
            got = actual.get(key)
            if key == "reason":
                assert isinstance(got, str) and want in got, f"{where}.reason: {want!r} not in {got!r}"
            elif want is None:
                assert got is None, f"{where}.{key}: expected absent or null, got {got!r}"
            else:
                assert key in actual, f"{where}.{key}: missing in {actual!r}"
                subset(want, got, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {expected!r} != {actual!r}"
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            subset(want, got, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: expected {expected!r}, got {actual!r}"


def as_json(value: Any) -> Any:
    if isinstance(value, LayerResponse):
        perf = value.perf
        return {"data": as_json(value.data), "perf": {"latency_ms": perf.latency_ms, "cache_status": perf.cache_status,
                                                      "fallback": perf.fallback}}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    return value


def as_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, GatewayUnreachableError):
        return {"unreachable": True, "status": 0, "reason": exc.reason}
    if isinstance(exc, HevlayerError):
        return {"status": exc.status_code, "error": exc.error, "message": exc.message, "feature": exc.feature}
    if isinstance(exc, httpx.TransportError):
        return {"transport": True}
    return {"client": True, "message": str(exc)}


def client_options(fake: FakeLayer, sc: dict[str, Any]) -> dict[str, Any]:
    return {"base_url": fake.urls["dead" if sc.get("gateway") == "down" else "gateway"], "api_key": "gw-key",
            "turbopuffer_api_url": fake.urls["turbopuffer"],
            "turbopuffer_api_key": sc.get("turbopuffer_key", "tpuf-key"),
            "fallback_to_turbopuffer": sc.get("fallback", True),
            "timeout": sc["timeout_ms"] / 1000 if "timeout_ms" in sc else 10.0}


def arguments(sc: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    op = OPERATIONS[_snake(sc["op"])]
    args = dict(sc["args"])
    positional = [args.pop(name) for name in _path_names(op.path)]
    if "body" in args:
        positional.append(args.pop("body"))
    return positional, args


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _path_names(template: str) -> list[str]:
    return [part.split("}")[0] for part in template.split("{")[1:]]


def run_sync(fake: FakeLayer, sc: dict[str, Any]) -> tuple[Any, Exception | None]:
    positional, kwargs = arguments(sc)
    with Hevlayer(**client_options(fake, sc)) as client:
        try:
            return getattr(client, _snake(sc["op"]))(*positional, **kwargs, with_perf=sc.get("with_perf", False)), None
        except Exception as exc:  # noqa: BLE001 - the scenario says what is expected
            return None, exc


def run_async(fake: FakeLayer, sc: dict[str, Any]) -> tuple[Any, Exception | None]:
    positional, kwargs = arguments(sc)

    async def main() -> tuple[Any, Exception | None]:
        async with AsyncHevlayer(**client_options(fake, sc)) as client:
            try:
                method = getattr(client, _snake(sc["op"]))
                return await method(*positional, **kwargs, with_perf=sc.get("with_perf", False)), None
            except Exception as exc:  # noqa: BLE001
                return None, exc

    return asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario(fake: FakeLayer, sc: dict[str, Any], flavour: str) -> None:
    _http(fake.urls["gateway"] + "/__arm", sc.get("serve") or {})
    result, error = (run_sync if flavour == "sync" else run_async)(fake, sc)
    expect = sc["expect"]
    if "error" in expect:
        assert error is not None, f"expected an error, got {result!r}"
        subset(expect["error"], as_error(error), "error")
    else:
        assert error is None, f"unexpected error: {error!r}"
        subset(expect["result"], as_json(result), "result")
    subset(expect["requests"], _http(fake.urls["gateway"] + "/__log"), "requests")
