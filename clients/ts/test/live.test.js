// The shared live scenario against the real gateway and local store (sdk/live_stack.py): write, query, fetch (a
// cache hit on the second call), mint a key and use it; then the gateway dies and a simple vector query falls
// through to the store (the same rows, perf.fallback === "turbopuffer_direct") while a fetch fails fast.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";

import { GatewayUnreachableError, Hevlayer, HevlayerError } from "../src/index.js";
import { SDK_DIR, startHelper } from "./helpers.js";

const rows = (result) => result.rows.map((r) => `${r.id}:${r.$dist.toFixed(6)}:${r.title}`);
const quiet = { warn() {} };

test("live: write, query, fetch, mint, then fall through", { skip: !existsSync(SDK_DIR + "live_stack.py") }, async () => {
  const stack = await startHelper("live_stack.py");
  try {
    const { gateway, store, key } = stack.info;
    const ns = `live-ts-${Date.now()}`;
    const client = new Hevlayer({ baseUrl: gateway, apiKey: key, turbopufferApiUrl: store, turbopufferApiKey: key, logger: quiet });
    const written = await client.writeNamespace(ns, {
      distance_metric: "cosine_distance",
      upsert_rows: [
        { id: "a", vector: [1, 0], title: "one" }, { id: "b", vector: [0.8, 0.2], title: "two" },
        { id: "c", vector: [0, 1], title: "three" },
      ],
    });
    assert.equal(written.rows_affected, 3);
    const query = { vector: [1, 0], top_k: 2, include_attributes: ["title"] };
    const before = await client.queryNamespace(ns, query, { withPerf: true });
    assert.deepEqual(before.data.rows.map((r) => r.id), ["a", "b"]);
    assert.equal(before.perf.fallback, null);
    await client.fetchDocument(ns, "a", { includeAttributes: ["title"] });
    const second = await client.fetchDocument(ns, "a", { includeAttributes: ["title"], withPerf: true });
    assert.equal(second.perf.cacheStatus, "hit");
    assert.deepEqual(second.data.attributes, { title: "one" });

    const minted = await client.mintKey({
      name: "live-reader", expiresAfter: "1h", entitlements: { "vectorstore.default": { scopes: ["read"], namespaces: [ns] } },
    });
    const reader = new Hevlayer({ baseUrl: gateway, apiKey: minted.token, fallbackToTurbopuffer: false });
    assert.deepEqual(rows(await reader.queryNamespace(ns, query)), rows(before.data));
    await assert.rejects(reader.writeNamespace(ns, { upsert_rows: [{ id: "x" }] }),
      (err) => err instanceof HevlayerError && err.status === 403 && err.error === "forbidden");

    await stack.send("kill-gateway");
    const after = await client.queryNamespace(ns, query, { withPerf: true });
    assert.equal(after.perf.fallback, "turbopuffer_direct");
    assert.deepEqual(rows(after.data), rows(before.data));
    await assert.rejects(client.fetchDocument(ns, "a"),
      (err) => err instanceof GatewayUnreachableError && err.reason.includes("Layer-only"));
  } finally {
    await stack.stop();
  }
});
