export * from "./client.gen.js";
export type * from "./models.gen.js";
export { GatewayUnreachableError, HevlayerError, TURBOPUFFER_DIRECT } from "./runtime.js";
export type { CallOptions, HevlayerOptions, LayerPerf, LayerResponse, Logger } from "./runtime.js";
