// @chatd/client: chatd's wire protocol (docs/PROTOCOL.md, version 2) for TypeScript, in
// browsers and node: the codec, the framing and the hash chain.

export { DecodeError, Reader, Writer } from "./codec.js";
export * from "./types.js";
export * from "./frame.js";
export * as chain from "./chain.js";
