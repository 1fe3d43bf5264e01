"""Benchmark (not a test): CPU per request of the minted-key check on the hot path.

Measures `await verifier.verify(token)` + `authorize(principal, "read", ns)` on a warm per-worker cache backed by
the real SQLite key store (its background generation re-reads included). Target: < 20 µs per op.
Run: python -m bench.keys_bench [--ops N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from gateway.auth import authorize
from gateway.keys.service import KeyService
from gateway.keys.sqlite import SqliteKeyStore

TARGET_US = 20.0
BODY = (b'{"name":"bench","entitlements":{"vectorstore.default":{"scopes":["read","write"],'
        b'"namespaces":["cohort-*","products"]}}}')


async def measure(ops: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        service = KeyService(SqliteKeyStore(f"{tmp}/keys.sqlite3"))
        try:
            token = (await service.mint(BODY)).token
            verify = service.verifier.verify
            principal = await verify(token)
            assert principal is not None
            for _ in range(1000):  # warm up
                authorize(await verify(token), "read", "cohort-7")  # type: ignore[arg-type]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(ops):
                p = await verify(token)
                authorize(p, "read", "cohort-7")  # type: ignore[arg-type]
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            await service.close()
    return cpu / ops * 1e6, wall / ops * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=200_000)
    args = parser.parse_args()
    cpu_us, wall_us = asyncio.run(measure(args.ops))
    verdict = "OK" if cpu_us < TARGET_US else "OVER BUDGET"
    print(f"minted-key verify+authorize: {cpu_us:.2f} µs/op CPU, {wall_us:.2f} µs/op wall "
          f"({args.ops} ops, target < {TARGET_US:.0f} µs) {verdict}")
    return 0 if cpu_us < TARGET_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
