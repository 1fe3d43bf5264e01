export { Hevlayer, OPERATIONS } from "./client.gen.js";
export { GatewayUnreachableError, HevlayerError, TURBOPUFFER_DIRECT } from "./runtime.js";
