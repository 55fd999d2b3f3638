// @chatd/client: chatd's wire protocol (docs/PROTOCOL.md, version 2) for TypeScript, in
// browsers and node: the codec, the framing, the hash chain (and a tracker that follows it),
// the error and goodbye codes, a session that reconnects and resumes, and its WebTransport
// connector for browsers.

export { DecodeError, Reader, Writer } from "./codec.js";
export * from "./types.js";
export * from "./frame.js";
export * from "./codes.js";
export * as chain from "./chain.js";
export * from "./session.js";
export * from "./tracker.js";
export * from "./webtransport.js";
