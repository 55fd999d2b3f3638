// Framing (docs/PROTOCOL.md section 2): a u32 little-endian length, the version byte, the body.

import { DecodeError, Reader, Writer } from "./codec.js";
import {
  type ClientFrame,
  type ServerFrame,
  readClientFrame,
  readServerFrame,
  writeClientFrame,
  writeServerFrame,
} from "./types.js";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 2;
/** The length prefix's size. */
export const LENGTH_PREFIX = 4;
/** Longest client frame (`length`, the version byte and the body). */
export const MAX_CLIENT_FRAME = 65_536;
/** Longest server frame. */
export const MAX_SERVER_FRAME = 2_097_152;
/** The frames of versions 1 and 2 share the framing; `Error` and `Goodbye` keep version 1's
 *  layout in every version (section 7). */
const READABLE_VERSIONS = [1, PROTOCOL_VERSION];

function framed(body: Uint8Array, max: number): Uint8Array {
  const length = body.length + 1;
  if (length > max) throw new RangeError(`a frame of ${length} bytes is over ${max}`);
  const out = new Uint8Array(LENGTH_PREFIX + length);
  new DataView(out.buffer).setUint32(0, length, true);
  out[LENGTH_PREFIX] = PROTOCOL_VERSION;
  out.set(body, LENGTH_PREFIX + 1);
  return out;
}

/** A client frame, length prefix included. */
export function encodeClientFrame(frame: ClientFrame): Uint8Array {
  const w = new Writer();
  writeClientFrame(w, frame);
  return framed(w.bytes(), MAX_CLIENT_FRAME);
}

/** A server frame, length prefix included (for tests and servers written in TypeScript). */
export function encodeServerFrame(frame: ServerFrame): Uint8Array {
  const w = new Writer();
  writeServerFrame(w, frame);
  return framed(w.bytes(), MAX_SERVER_FRAME);
}

/** One frame's body and version, decoded by `read`, consumed exactly. */
function decodeBody<T>(version: number, body: Uint8Array, read: (r: Reader) => T): T {
  if (!READABLE_VERSIONS.includes(version)) throw new DecodeError(`unknown version ${version}`);
  const r = new Reader(body);
  const value = read(r);
  r.end();
  return value;
}

/** Splits a byte stream into frames: `push` what arrives, take frames with `next` until it
 *  says none is complete. An invalid frame throws `DecodeError`: close the connection. */
export class FrameDecoder<T> {
  private buf = new Uint8Array(0);

  constructor(
    private readonly read: (r: Reader) => T,
    private readonly max: number,
  ) {}

  /** A decoder of what the daemon sends. */
  static server(): FrameDecoder<ServerFrame> {
    return new FrameDecoder(readServerFrame, MAX_SERVER_FRAME);
  }

  /** A decoder of what clients send. */
  static client(): FrameDecoder<ClientFrame> {
    return new FrameDecoder(readClientFrame, MAX_CLIENT_FRAME);
  }

  push(bytes: Uint8Array): void {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    this.buf = joined;
    // The length is checked as soon as its bytes arrive, before the body is waited for.
    if (this.buf.length >= LENGTH_PREFIX) this.length();
  }

  private length(): number {
    const length = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0, true);
    if (length === 0) throw new DecodeError("a frame of length 0");
    if (length > this.max) throw new DecodeError(`a frame of ${length} bytes is over ${this.max}`);
    return length;
  }

  /** Bytes held that do not make a frame yet. */
  pending(): number {
    return this.buf.length;
  }

  /** The next complete frame, or `null` when more bytes are needed. */
  next(): T | null {
    if (this.buf.length < LENGTH_PREFIX) return null;
    const length = this.length();
    if (this.buf.length < LENGTH_PREFIX + length) return null;
    const version = this.buf[LENGTH_PREFIX] as number;
    const body = this.buf.subarray(LENGTH_PREFIX + 1, LENGTH_PREFIX + length);
    const value = decodeBody(version, body, this.read);
    this.buf = this.buf.slice(LENGTH_PREFIX + length);
    return value;
  }
}

/** Exactly one frame (a datagram carries one), length prefix included. */
export function decodeServerFrame(bytes: Uint8Array): ServerFrame {
  return decodeOne(bytes, FrameDecoder.server());
}

/** Exactly one client frame, length prefix included. */
export function decodeClientFrame(bytes: Uint8Array): ClientFrame {
  return decodeOne(bytes, FrameDecoder.client());
}

function decodeOne<T>(bytes: Uint8Array, decoder: FrameDecoder<T>): T {
  decoder.push(bytes);
  const frame = decoder.next();
  if (frame === null) throw new DecodeError("an incomplete frame");
  if (decoder.next() !== null || decoder.pending() > 0) {
    throw new DecodeError("bytes after the frame");
  }
  return frame;
}
