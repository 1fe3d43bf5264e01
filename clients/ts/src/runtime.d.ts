export declare const DEFAULT_BASE_URL: string;
export declare const DEFAULT_TURBOPUFFER_URL: string;
export declare const TURBOPUFFER_DIRECT: "turbopuffer_direct";

export interface Logger {
  warn(message: string): void;
}

export interface HevlayerOptions {
  /** The gateway, e.g. `process.env.LAYER_GATEWAY_URL`. */
  baseUrl?: string;
  /** Bearer for the gateway: the store key or a minted `hvl_` key. */
  apiKey?: string;
  timeoutMs?: number;
  /** Send calls that need no Layer state to Turbopuffer when the gateway cannot be connected to (default true). */
  fallbackToTurbopuffer?: boolean;
  /** Defaults to `TURBOPUFFER_API_KEY`; without one nothing falls through. */
  turbopufferApiKey?: string;
  /** Defaults to `TURBOPUFFER_API_URL`, else https://aws-us-east-1.turbopuffer.com. */
  turbopufferApiUrl?: string;
  logger?: Logger;
  fetch?: typeof fetch;
}

export interface CallOptions {
  /** Resolve to `{ data, perf }` instead of the data. */
  withPerf?: boolean;
  signal?: AbortSignal;
}

export interface LayerPerf {
  /** Client-measured, the whole call (a failed connect and a fall-through included). */
  latencyMs: number;
  /** The raw `x-layer-cache` header, or null. */
  cacheStatus: string | null;
  /** `"turbopuffer_direct"` when the call went to Turbopuffer directly. */
  fallback: "turbopuffer_direct" | null;
}

export interface LayerResponse<T> {
  data: T;
  perf: LayerPerf;
}

export interface Operation {
  name: string;
  method: string;
  path: string;
  fallback: "direct" | "simple-vector" | "none";
  upstreamMethod: string | null;
  upstreamPath: string | null;
  fixedQuery: [string, string][];
  response: "json" | "text";
  /** A read-only route: resent once on a fresh connection when a pooled one turns out dead. */
  read: boolean;
  headerFields: [string, string, "integer" | "string"][];
}

export declare class HevlayerError extends Error {
  constructor(status: number, message: string, init?: { error?: string | null; feature?: string | null; body?: unknown });
  status: number;
  error: string | null;
  feature: string | null;
  body: unknown;
}

export declare class GatewayUnreachableError extends HevlayerError {
  reason: string;
}

export declare function cleanTags(tags: string[]): string;
export declare function fillPath(template: string, args: string[]): string;
export declare function simpleVector(body: unknown): { body?: Record<string, unknown>; why?: string };

export declare class Runtime {
  constructor(options?: HevlayerOptions);
}
