// Smoke scenario for the official TypeScript client (@turbopuffer/turbopuffer) against a Layer gateway.
// Env: TPUF_URL (base URL, no {region}), TPUF_KEY, TPUF_NS (namespace to use).
// Prints one JSON object describing what the client saw; the Python test asserts on it.
import Turbopuffer from '@turbopuffer/turbopuffer';

const baseURL = process.env.TPUF_URL;
const apiKey = process.env.TPUF_KEY;
const name = process.env.TPUF_NS;
const out = { steps: [] };

function step(label, data) {
  out.steps.push(label);
  out[label] = data;
}

async function main() {
  // region must stay null: the client refuses a region together with a base URL lacking "{region}".
  const tpuf = new Turbopuffer({ apiKey, baseURL, region: null, maxRetries: 0, timeout: 20_000 });
  const ns = tpuf.namespace(name);

  const w = await ns.write({
    upsert_rows: [
      { id: 1, vector: [0.1, 0.2], title: 'one' },
      { id: 2, vector: [0.9, 0.1], title: 'two' },
    ],
    distance_metric: 'cosine_distance',
  });
  step('write', { status: w.status, rows_affected: w.rows_affected });

  const q = await ns.query({ rank_by: ['vector', 'ANN', [0.1, 0.2]], top_k: 10, include_attributes: true });
  step('query', { rows: q.rows, has_billing: q.billing !== undefined, has_performance: q.performance !== undefined });

  const f = await ns.query({ rank_by: ['id', 'asc'], top_k: 10, filters: ['title', 'Eq', 'two'] });
  step('filtered', { rows: f.rows });

  // compression: true gzips request bodies above the client's threshold.
  const gz = new Turbopuffer({ apiKey, baseURL, region: null, maxRetries: 0, compression: true });
  const rows = Array.from({ length: 30 }, (_, i) => ({ id: 100 + i, vector: [i / 30, 0.5], pad: 'x'.repeat(64) }));
  const gw = await gz.namespace(name).write({ upsert_rows: rows });
  step('gzip_write', { rows_affected: gw.rows_affected });

  const m = await ns.metadata();
  step('metadata', { approx_row_count: m.approx_row_count, index: m.index, created_at: m.created_at });

  const names = [];
  for await (const summary of tpuf.namespaces({ prefix: name, page_size: 1 })) names.push(summary.id);
  step('namespaces', names);

  const d = await ns.deleteAll();
  step('delete', { status: d.status });

  try {
    await ns.query({ rank_by: ['id', 'asc'], top_k: 1 });
    step('after_delete', { status: 200 });
  } catch (e) {
    step('after_delete', { status: e.status ?? null, name: e.constructor?.name ?? null });
  }
}

main()
  .catch((e) => {
    out.error = { message: String(e?.message ?? e), status: e?.status ?? null };
  })
  .finally(() => {
    process.stdout.write(JSON.stringify(out) + '\n');
  });
