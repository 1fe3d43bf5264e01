// Compile-only (tsc --noEmit): the declared API is usable as the README shows it, with strict types.
import { GatewayUnreachableError, Hevlayer, HevlayerError } from "../src/index.js";
import type { LayerResponse, QueryResponse, TurbopufferWriteResponse } from "../src/index.js";

export async function usage(): Promise<void> {
  const client = new Hevlayer({ baseUrl: process.env.LAYER_GATEWAY_URL, apiKey: process.env.LAYER_GATEWAY_API_KEY });
  const written: TurbopufferWriteResponse = await client.writeNamespace("ns", { upsert_rows: [{ id: "a" }] });
  const rows: QueryResponse = await client.queryNamespace("ns", { vector: [0.1, 0.2], top_k: 5 }, { tags: ["a"] });
  const perf: LayerResponse<QueryResponse> = await client.queryNamespace("ns", { vector: [1] }, { withPerf: true });
  const fallback: "turbopuffer_direct" | null = perf.perf.fallback;
  const doc = await client.fetchDocument("ns", "a", { includeAttributes: ["title"] });
  const key = await client.mintKey({ name: "svc", expiresAfter: "12h" });
  const spec: string = await client.getOpenApiSpec();
  try {
    await client.listNamespaces({ pageSize: 10 });
  } catch (err) {
    if (err instanceof GatewayUnreachableError) console.log(err.reason);
    else if (err instanceof HevlayerError) console.log(err.status, err.error, err.body);
  }
  console.log(written.rows_affected, rows.stable_as_of, fallback, doc.attributes, key.token, spec.length);
}
