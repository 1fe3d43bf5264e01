// sdk/scenarios.json replayed against the recording fake (the same file the Python and Go runners replay).
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { GatewayUnreachableError, Hevlayer, HevlayerError } from "../src/index.js";
import { dispatch } from "./dispatch.gen.js";
import { IN_REPO, SDK_DIR, startHelper, subset } from "./helpers.js";

const scenarios = IN_REPO ? JSON.parse(readFileSync(SDK_DIR + "scenarios.json", "utf8")).scenarios : [];

function asJson(value, withPerf) {
  if (!withPerf) return value;
  const { latencyMs, cacheStatus, fallback } = value.perf;
  return { data: value.data, perf: { latency_ms: latencyMs, cache_status: cacheStatus, fallback } };
}

function asError(err) {
  if (err instanceof GatewayUnreachableError) return { unreachable: true, status: 0, reason: err.reason };
  if (err instanceof HevlayerError) return { status: err.status, error: err.error, message: err.message, feature: err.feature };
  if (err.name === "TimeoutError" || err.name === "AbortError" || err instanceof TypeError) return { transport: true };
  return { client: true, message: String(err) };
}

async function call(url, body) {
  const response = await fetch(url, body ? { method: "POST", body: JSON.stringify(body) } : {});
  return response.json();
}

describe("scenarios", { skip: !IN_REPO && "sdk/scenarios.json not found" }, () => {
  let fake;
  const silent = { warn() {} };
  before(async () => {
    delete process.env.TURBOPUFFER_API_KEY;
    delete process.env.TURBOPUFFER_API_URL;
    fake = await startHelper("fake_layer.py");
  });
  after(async () => fake && fake.stop());

  for (const sc of scenarios) {
    test(sc.name, async () => {
      const urls = fake.info;
      await call(urls.gateway + "/__arm", sc.serve || {});
      const client = new Hevlayer({
        baseUrl: sc.gateway === "down" ? urls.dead : urls.gateway, apiKey: "gw-key", turbopufferApiUrl: urls.turbopuffer,
        turbopufferApiKey: "turbopuffer_key" in sc ? sc.turbopuffer_key || "" : "tpuf-key",
        fallbackToTurbopuffer: sc.fallback !== false, timeoutMs: sc.timeout_ms || 10000, logger: silent,
      });
      let result;
      let error = null;
      try {
        result = await dispatch(client, sc.op, sc.args, { withPerf: !!sc.with_perf });
      } catch (err) {
        error = err;
      }
      if ("error" in sc.expect) {
        if (error === null) throw new Error(`expected an error, got ${JSON.stringify(result)}`);
        subset(sc.expect.error, asError(error), "error");
      } else {
        if (error !== null) throw error;
        subset(sc.expect.result, asJson(result, sc.with_perf), "result");
      }
      subset(sc.expect.requests, await call(urls.gateway + "/__log"), "requests");
    });
  }
});
