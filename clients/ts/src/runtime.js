// The hand-written runtime under the generated client: requests, perf, typed errors, header copies and the
// fall-through to Turbopuffer. Its rules are shared with the Python and Go runtimes (sdk/scenarios.json).

export const DEFAULT_BASE_URL = "https://aws-us-east-1.hevlayer.com";
export const DEFAULT_TURBOPUFFER_URL = "https://aws-us-east-1.turbopuffer.com";
export const TURBOPUFFER_DIRECT = "turbopuffer_direct";
const STAMP = "_hevlayer_upserted_at";
const SIMPLE_VECTOR_KEYS = new Set(["vector", "top_k", "filters", "include_attributes"]);
// Failures that prove the request never reached the gateway (undici's cause codes).
const CONNECT_CODES = new Set([
  "ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT",
]);
// A pooled connection the gateway closed (it died): nothing was answered, so a read-only call is resent once, on a
// fresh connection, whose connect failure can then fall through. Writes are not resent.
const STALE_CODES = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE"]);
const TAG = /^[A-Za-z0-9:_\-./=+]+$/;

/** An error answer: `status`, and from the JSON body `error`, `message` and `feature` (`body` is all of it). */
export class HevlayerError extends Error {
  constructor(status, message, { error = null, feature = null, body = null } = {}) {
    super(message);
    this.name = "HevlayerError";
    this.status = status;
    this.error = error;
    this.feature = feature;
    this.body = body;
  }
}

/** Connecting to the gateway failed and the call could not fall through; `reason` says why. */
export class GatewayUnreachableError extends HevlayerError {
  constructor(message, reason, cause) {
    super(0, message, { error: "gateway_unreachable" });
    this.name = "GatewayUnreachableError";
    this.reason = reason;
    this.cause = cause;
  }
}

export function cleanTags(tags) {
  const clean = new Set();
  for (const raw of tags) {
    const tag = String(raw).trim();
    if (!tag) continue;
    if (Buffer.byteLength(tag) > 128) throw new Error(`search-history tag ${JSON.stringify(tag)} exceeds 128 bytes`);
    if (!TAG.test(tag)) {
      throw new Error(`search-history tag ${JSON.stringify(tag)} may contain only ASCII letters, digits and :_-.=/+`);
    }
    clean.add(tag);
  }
  if (clean.size > 32) throw new Error("search-history tags are limited to 32 unique tags");
  return [...clean].sort().join(",");
}

function wire(value) {
  if (Array.isArray(value)) return value.map(wire).join(",");
  return String(value);
}

/** `/v2/namespaces/{namespace}` with each argument percent-encoded as one path segment. */
export function fillPath(template, args) {
  let i = 0;
  return template.replace(/\{[^}]+\}/g, () => encodeURIComponent(String(args[i++])));
}

/** A Layer query Turbopuffer can answer directly, translated; or the reason it cannot be. */
export function simpleVector(body) {
  if (body === null || typeof body !== "object" || !Array.isArray(body.vector) || body.vector.length === 0) {
    return { why: "the query has no `vector`, so it needs Layer state" };
  }
  const extra = Object.keys(body)
    .filter((k) => !SIMPLE_VECTOR_KEYS.has(k) && body[k] !== null && body[k] !== undefined && body[k] !== false)
    .sort();
  if (extra.length) return { why: `the query uses ${extra.join(", ")}, which needs Layer state` };
  const out = { rank_by: ["vector", "ANN", body.vector], top_k: body.top_k || 10 };
  if (body.filters !== undefined && body.filters !== null) out.filters = body.filters;
  if (body.include_attributes === true) out.exclude_attributes = [STAMP];
  else if (body.include_attributes !== undefined && body.include_attributes !== null) {
    out.include_attributes = body.include_attributes;
  }
  return { body: out };
}

function isConnectFailure(err) {
  const cause = err && err.cause;
  if (!cause) return false;
  if (CONNECT_CODES.has(cause.code)) return true;
  return Array.isArray(cause.errors) && cause.errors.length > 0 && cause.errors.every((e) => CONNECT_CODES.has(e.code));
}

async function errorFrom(response) {
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (body && typeof body === "object" && !Array.isArray(body)) {
    const error = body.error === undefined || body.error === null ? null : String(body.error);
    const message = body.message || error || text || response.statusText;
    const feature = body.feature === undefined || body.feature === null ? null : String(body.feature);
    return new HevlayerError(response.status, String(message), { error, feature, body });
  }
  return new HevlayerError(response.status, text || response.statusText, { body });
}

export class Runtime {
  constructor({
    baseUrl = DEFAULT_BASE_URL, apiKey, timeoutMs = 30000, fallbackToTurbopuffer = true, turbopufferApiKey,
    turbopufferApiUrl, logger = console, fetch: fetchImpl = globalThis.fetch,
  } = {}) {
    const env = globalThis.process ? globalThis.process.env : {};
    this._baseUrl = String(baseUrl || DEFAULT_BASE_URL).replace(/\/+$/, "");
    const token = (apiKey || "").trim();
    this._auth = token ? `Bearer ${token}` : null;
    this._timeoutMs = timeoutMs;
    this._fallback = fallbackToTurbopuffer;
    this._tpufKey = (turbopufferApiKey || env.TURBOPUFFER_API_KEY || "").trim() || null;
    this._tpufUrl = String(turbopufferApiUrl || env.TURBOPUFFER_API_URL || DEFAULT_TURBOPUFFER_URL).replace(/\/+$/, "");
    this._logger = logger;
    this._fetch = fetchImpl;
  }

  _request(op, pathArgs, body, query, headers) {
    const params = new URLSearchParams(op.fixedQuery);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.append(name, wire(value));
    }
    const sent = {};
    for (const [name, value] of Object.entries(headers)) {
      if (value === undefined || value === null) continue;
      const text = name === "x-hevlayer-tags" ? cleanTags(value) : String(value).trim();
      if (text) sent[name] = text;
    }
    const qs = params.toString();
    return { method: op.method, path: fillPath(op.path, pathArgs) + (qs ? `?${qs}` : ""), headers: sent, body };
  }

  _fallThrough(op, pathArgs, req, err) {
    let body = req.body;
    let why = null;
    if (!this._fallback) why = "fall-through to Turbopuffer is disabled (fallbackToTurbopuffer: false)";
    else if (op.fallback === "none" || !op.upstreamPath) why = `${op.name} is a Layer-only call`;
    else if (!this._tpufKey) why = "no Turbopuffer key (TURBOPUFFER_API_KEY) to fall through with";
    else if (op.fallback === "simple-vector") ({ body, why = null } = simpleVector(req.body));
    if (why !== null) {
      throw new GatewayUnreachableError(
        `cannot reach the gateway (${err.cause ? err.cause.code || err.message : err.message}); ${op.name} cannot fall through: ${why}`,
        why, err);
    }
    const query = req.path.includes("?") ? req.path.slice(req.path.indexOf("?")) : "";
    this._logger.warn(`hevlayer: gateway unreachable; sending ${op.name} directly to Turbopuffer at ${this._tpufUrl}`);
    return {
      method: op.upstreamMethod || op.method, path: fillPath(op.upstreamPath, pathArgs) + query,
      headers: { authorization: `Bearer ${this._tpufKey}` }, body,
    };
  }

  async _send(base, req, signal) {
    const headers = { ...req.headers };
    let payload;
    if (req.body !== undefined && req.body !== null) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(req.body);
    }
    const timeout = AbortSignal.timeout(this._timeoutMs);
    return this._fetch(base + req.path, { method: req.method, headers, body: payload, signal: signal || timeout });
  }

  async _call(op, pathArgs, body, query, headers, options = {}) {
    const req = this._request(op, pathArgs, body, query, headers);
    if (this._auth) req.headers.authorization = this._auth;
    const started = performance.now();
    let response;
    let fallback = null;
    try {
      response = await this._send(this._baseUrl, req, options.signal).catch((err) => {
        if (op.read && err && err.cause && STALE_CODES.has(err.cause.code)) {
          return this._send(this._baseUrl, req, options.signal);
        }
        throw err;
      });
    } catch (err) {
      if (!isConnectFailure(err)) throw err;
      response = await this._send(this._tpufUrl, this._fallThrough(op, pathArgs, req, err), options.signal);
      fallback = TURBOPUFFER_DIRECT;
    }
    if (!response.ok) throw await errorFrom(response);
    let data = null;
    if (op.response === "text") data = await response.text();
    else {
      const text = await response.text();
      data = text ? JSON.parse(text) : null;
    }
    const latencyMs = performance.now() - started;
    if (data && typeof data === "object" && !Array.isArray(data)) {
      for (const [header, field, kind] of op.headerFields) {
        const value = response.headers.get(header);
        if (!value) continue;
        if (kind === "integer") {
          const n = Number(value);
          if (Number.isSafeInteger(n)) data[field] = n;
        } else data[field] = value;
      }
    }
    if (options.withPerf) {
      return { data, perf: { latencyMs, cacheStatus: response.headers.get("x-layer-cache"), fallback } };
    }
    return data;
  }
}
