"""Runs under the published hevlayer 0.7.3 interpreter (tests/support/published_client.py) for bench/queue_bench.py:
drains a UDF with `run_udf_worker` and `@udf(kind="embedding")`, one encode per item, and prints the seconds it took
(model load excluded) as one JSON line.

    python queue_published_worker.py BASE_URL API_KEY UDF_ID REPO_ROOT SITE_PACKAGES

The model and torch come from the gateway's environment: REPO_ROOT and SITE_PACKAGES are appended to sys.path, after
the published client's own packages, so `hevlayer` still resolves to 0.7.3.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time

url, key, udf_id, repo, site = sys.argv[1:6]
del sys.path[0]  # this script's directory: bench/profile.py would shadow the stdlib `profile` torch imports
sys.path += [repo, site]

from hevlayer import AsyncHevlayer
from hevlayer.udf import run_udf_worker, udf

from gateway.queue.embed import MiniLM

model = MiniLM()


@udf(kind="embedding", batch_size=32)
def embed_title(*, title: str) -> list[float]:
    return model.embed([title])[0]


async def main() -> float:
    async with AsyncHevlayer(api_key=key, base_url=url) as client:
        started = time.perf_counter()
        while (await client.get_udf_status(udf_id)).pending_count:
            await run_udf_worker(embed_title, udf_id=udf_id, api_key=key, base_url=url, worker_id="bench", once=True)
        return time.perf_counter() - started


seconds = asyncio.run(main())
print(json.dumps({"seconds": seconds, "hevlayer": importlib.metadata.version("hevlayer")}))
