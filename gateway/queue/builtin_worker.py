"""`layer-gateway udf-worker --builtin minilm --udf-id ID`: a pull worker for a Function, beside the gateway.

It claims items over the gateway's HTTP API (like any worker), embeds the text of a whole claim in one batched call,
and completes every item with its `vector`. The text of an item is its inputs other than `id`/`vector`, joined by
newlines; an item with no text fails permanently. Stop it with SIGTERM or Ctrl-C (it finishes the current batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

log = logging.getLogger("gateway.udf_worker")
BUILTINS = ("minilm",)


class GatewayClient:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        if self.api_key:
            req.add_header("authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"POST {path}: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None


def item_text(item: dict[str, Any]) -> str:
    values = item.get("input") or {}
    parts = [str(v) for k, v in values.items() if k not in ("id", "vector") and v not in (None, "")]
    return "\n".join(parts)


def run_batch(client: GatewayClient, model: Any, udf_id: str, worker_id: str, limit: int | None) -> int:
    """Claim, embed, complete once; returns the number of items claimed."""
    body: dict[str, Any] = {"worker_id": worker_id}
    if limit:
        body["limit"] = limit
    claimed = client.post(f"/v2/udfs/{udf_id}/claim", body)["items"]
    if not claimed:
        return 0
    with_text = [(i, item_text(i)) for i in claimed]
    ok = [(i, t) for i, t in with_text if t]
    empty = [i for i, t in with_text if not t]
    if ok:
        vectors = model.embed([t for _, t in ok])
        done = [{"namespace": i["namespace"], "id": i["id"], "vector": v} for (i, _), v in zip(ok, vectors)]
        client.post(f"/v2/udfs/{udf_id}/items/complete", {"worker_id": worker_id, "items": done})
    if empty:
        failed = [{"namespace": i["namespace"], "id": i["id"], "kind": "permanent", "message": "no text to embed"}
                  for i in empty]
        client.post(f"/v2/udfs/{udf_id}/items/fail", {"worker_id": worker_id, "items": failed})
    return len(claimed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="layer-gateway udf-worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builtin", required=True, choices=BUILTINS, help="the built-in function to run")
    ap.add_argument("--udf-id", default=os.environ.get("HEVLAYER_UDF_ID"), help="the Function to work for")
    ap.add_argument("--base-url", default=os.environ.get("HEVLAYER_BASE_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--api-key", default=os.environ.get("HEVLAYER_API_KEY") or os.environ.get("LAYER_GATEWAY_API_KEY"))
    ap.add_argument("--worker-id", default=os.environ.get("HEVLAYER_WORKER_ID"))
    ap.add_argument("--limit", type=int, default=None, help="items per claim (default: the spec's worker.batch_size)")
    ap.add_argument("--poll-interval", type=float, default=2.0, help="seconds to wait after an empty claim")
    ap.add_argument("--once", action="store_true", help="stop when a claim comes back empty")
    args = ap.parse_args(argv)
    if not args.udf_id:
        ap.error("--udf-id (or HEVLAYER_UDF_ID) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from gateway.queue.embed import MiniLM

    model = MiniLM()
    client = GatewayClient(args.base_url, args.api_key)
    worker_id = args.worker_id or f"{args.udf_id}-{uuid.uuid4().hex[:8]}"
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    log.info("udf-worker %s (%s) for UDF %s at %s", worker_id, args.builtin, args.udf_id, args.base_url)
    try:
        while not stopping:
            if run_batch(client, model, args.udf_id, worker_id, args.limit) == 0:
                if args.once:
                    break
                time.sleep(args.poll_interval)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"layer-gateway udf-worker: {exc}", file=sys.stderr)
        return 1
    return 0
