"""sdk/generate.py: byte-identical output on every run, committed clients that match the spec, and a spec change
that `just sdk-check` notices in all three languages."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("sdk_generate", ROOT / "sdk" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sdk_generate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


generate = _load()
SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_runs_are_byte_identical_and_match_the_committed_clients(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    generate.generate(tmp_path / "a")
    generate.generate(tmp_path / "b")
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    assert {name: (ROOT / name).read_bytes() == data for name, data in first.items()} == dict.fromkeys(first, True)
    assert generate.check() == 0


def test_a_spec_change_is_caught_in_every_language(capsys: pytest.CaptureFixture[str]) -> None:
    changed = copy.deepcopy(SPEC)
    changed["components"]["schemas"]["Document"]["properties"]["score"] = {"type": "number"}
    assert generate.check(changed) == 1
    out = capsys.readouterr().out
    for path in ("clients/python/hevlayer/models.py", "clients/ts/src/models.gen.d.ts", "clients/go/models_gen.go"):
        assert f"  {path}\n" in out
    assert "run `just sdk` and commit the result" in out


def test_an_operation_added_to_the_spec_reaches_every_client(tmp_path: Path) -> None:
    """What adding a route (pipelines, functions) takes: a spec entry, then `just sdk`."""
    changed = copy.deepcopy(SPEC)
    changed["paths"]["/v2/pipelines"] = {"get": {
        "operationId": "listPipelines", "summary": "Pipelines", "x-layer-route-class": "read",
        "responses": {"200": {"description": "ok", "content": {"application/json": {
            "schema": {"type": "object", "additionalProperties": True}}}}}}}
    generate.generate(tmp_path, changed)
    assert "def list_pipelines(" in (tmp_path / "clients/python/hevlayer/client.py").read_text()
    assert "listPipelines(" in (tmp_path / "clients/ts/src/client.gen.js").read_text()
    assert "func (c *Client) ListPipelines(ctx context.Context)" in (tmp_path / "clients/go/client_gen.go").read_text()


def test_generated_files_say_so() -> None:
    for path in generate.generated_in_tree():
        assert generate.HEADER in (ROOT / path).read_text()[:300]
    assert len(generate.generated_in_tree()) == 9
