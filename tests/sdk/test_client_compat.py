"""The project's Python client keeps the published hevlayer 0.7.3's method names, arguments and models for every
operation they share (a user switches by changing nothing but the install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.published_client import run_published

ROOT = Path(__file__).resolve().parents[2]
API_SCRIPT = Path(__file__).resolve().parent / "client_api.py"
# Published methods that are routes this gateway serves (or helpers over them), so the project's client has them.
SHARED = {
    "authenticate_key", "batch_query_namespace", "branch_namespace", "copy_namespace", "delete_key", "delete_namespace",
    "evaluate_turbopuffer_recall", "explain_turbopuffer_query", "fetch_document", "fetch_documents", "get_key",
    "get_namespace_metadata", "get_turbopuffer_namespace_schema", "get_turbopuffer_v1_namespace_metadata",
    "get_warm_job", "hint_cache_warm", "list_keys", "list_namespaces", "list_turbopuffer_namespaces", "list_warm_jobs",
    "mint_key", "query_namespace", "query_turbopuffer_namespace", "revoke_key", "update_turbopuffer_namespace_metadata",
    "update_turbopuffer_namespace_schema", "warm_cache", "write_namespace", "warm_namespace", "patch_columns",
}


def ours() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "clients" / "python"), str(ROOT)])}
    out = subprocess.run([sys.executable, str(API_SCRIPT)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def apis() -> tuple[dict[str, Any], dict[str, Any]]:
    published, project = run_published(API_SCRIPT), ours()
    assert published["version"] == "0.7.3"
    assert str(ROOT / "clients" / "python") in project["file"]
    return published, project


def test_shared_methods_keep_names_and_arguments(apis: tuple[dict[str, Any], dict[str, Any]]) -> None:
    published, project = apis
    assert SHARED <= set(published["methods"])
    missing = sorted(SHARED - set(project["methods"]))
    assert missing == []
    changed = {m: (published["methods"][m], project["methods"][m]) for m in sorted(SHARED)
               if published["methods"][m] != project["methods"][m]}
    assert changed == {}


def test_shared_models_keep_their_fields(apis: tuple[dict[str, Any], dict[str, Any]]) -> None:
    published, project = apis
    shared = set(published["models"]) & set(project["models"])
    assert {"QueryRequest", "QueryResponse", "NamespaceMetadata", "ApiKey", "MintKeyRequest", "WarmJob",
            "TurbopufferWriteResponse", "FetchDocumentsResponse", "NamespaceList"} <= shared
    problems = {}
    for name in sorted(shared):
        theirs, mine = published["models"][name], project["models"][name]
        lost = sorted(set(theirs) - set(mine))
        stricter = sorted(f for f in theirs if f in mine and mine[f] and not theirs[f])
        if lost or stricter:
            problems[name] = {"lost": lost, "now_required": stricter}
    assert problems == {}
