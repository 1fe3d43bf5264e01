"""Fuzz the real gateway with schemathesis against openapi.yaml (`just fuzz`; `.ci/run` runs a bounded pass).

Starts `layer-gateway serve` on the embedded default (its own local store and cache, fresh data dir) on 127.0.0.1,
runs every operation with positive and negative inputs, and checks: no 5xx, only documented status codes and
content types, and bodies that match the response schemas. Exits with schemathesis's status.

    python sdk/fuzz.py --max-examples 10 --seed 1     a bounded, reproducible pass
    python sdk/fuzz.py --max-time 600                 a long one
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.procs import start_embedded_gateway

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
KEY = "fuzz-admin-key"


def _post(url: str, method: str, path: str, doc: dict[str, object]) -> None:
    req = urllib.request.Request(url + path, data=json.dumps(doc).encode(), method=method,
                                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def seed(url: str) -> None:
    """The spec's examples exist (namespace `products`, pipeline `docs`, function `product-tags` with queued items),
    so the fuzzer also reaches past "not found"."""
    rows = [{"id": f"p{i}", "vector": [1.0, i / 10], "title": f"product {i}"} for i in range(5)]
    _post(url, "POST", "/v2/namespaces/products", {"upsert_rows": rows, "distance_metric": "cosine_distance"})
    _post(url, "POST", "/v2/pipelines", {"id": "docs", "target_namespace": "products"})
    _post(url, "PUT", "/v2/pipelines/docs/documents/d1", {"chunks": [{"id": "d1-0", "text": "a chunk"}]})
    _post(url, "POST", "/v2/udfs", {"id": "product-tags", "spec": {"target_namespaces": ["products"],
                                                                    "inputs": ["title"], "worker": {}}})
    _post(url, "POST", "/v2/udfs/product-tags/discover", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, help="test cases per operation and phase")
    parser.add_argument("--max-time", type=int, help="time budget in seconds (fuzzing repeats until it is spent)")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible run")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    args, extra = parser.parse_known_args(argv)
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        print("schemathesis is not installed: python -m pip install -e '.[dev]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="layer-fuzz-") as tmp:
        gateway = start_embedded_gateway(Path(tmp), KEY, args.workers)
        try:
            seed(gateway.url)
            cmd = [st, "run", str(ROOT / "openapi.yaml"), "--url", gateway.url, "-H", f"Authorization: Bearer {KEY}",
                   "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--generation-database", "none",
                   "--request-timeout", "30", "--no-color"]
            for flag, value in (("--max-examples", args.max_examples), ("--max-time", args.max_time),
                                ("--seed", args.seed)):
                if value is not None:
                    cmd += [flag, str(value)]
            print("+", " ".join(cmd), flush=True)
            code = subprocess.run([*cmd, *extra], cwd=tmp, check=False).returncode
        finally:
            gateway.stop()
        if code != 0:
            print(f"\n--- gateway log (tail) ---\n{gateway.log_path.read_text(errors='replace')[-4000:]}")
        return code


if __name__ == "__main__":
    sys.exit(main())
