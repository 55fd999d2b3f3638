// Every test vector of docs/PROTOCOL.md section 13, byte for byte: each decodes, and encodes
// back to exactly its bytes; a few are checked field by field against the document's prose;
// the chained page follows its hash chain. Also the varint examples of section 3.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  DecodeError,
  FrameDecoder,
  Reader,
  Writer,
  chain,
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  type ClientFrame,
  type ServerFrame,
} from "../src/index.js";

const doc = readFileSync(new URL("../../../../docs/PROTOCOL.md", import.meta.url), "utf8");

/** The vectors of the document, by name. */
function vectors(): Map<string, Uint8Array> {
  const found = new Map<string, Uint8Array>();
  for (const m of doc.matchAll(/```hex vector=([\w-]+)\n([\s\S]*?)```/g)) {
    const hex = (m[2] as string).replace(/\s+/g, "");
    found.set(m[1] as string, Uint8Array.from(Buffer.from(hex, "hex")));
  }
  return found;
}

/** The vectors of frames a client sends; every other vector is the daemon's. */
const CLIENT = new Set([
  "ping",
  "send-text",
  "hello-anonymous",
  "hello-token-resume",
  "register",
  "history-before",
  "mark-read",
  "typing-datagram",
  "sync",
  "presence-follow",
  "hello-client-64",
  "presence-257",
  "edit",
  "delete",
  "react",
  "send-mention",
  "history-thread",
]);

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function decoded(name: string): ClientFrame | ServerFrame {
  const bytes = vectors().get(name);
  assert.ok(bytes, `no vector ${name}`);
  return CLIENT.has(name) ? decodeClientFrame(bytes) : decodeServerFrame(bytes);
}

test("every vector decodes and encodes back to its bytes", () => {
  const all = vectors();
  assert.ok(all.size >= 38, `only ${all.size} vectors found`);
  for (const [name, bytes] of all) {
    const again = CLIENT.has(name)
      ? encodeClientFrame(decodeClientFrame(bytes))
      : encodeServerFrame(decodeServerFrame(bytes));
    assert.equal(hex(again), hex(bytes), name);
  }
});

test("vectors read as the document describes them", async () => {
  assert.deepEqual(decoded("ping"), {
    kind: "Request",
    id: 7,
    request: { kind: "Ping" },
  });
  assert.deepEqual(decoded("send-text"), {
    kind: "Request",
    id: 2,
    request: {
      kind: "Send",
      message: {
        conversation: { kind: "Room", room: 5n },
        op: 77n,
        contentType: 0,
        replyTo: 42n,
        body: new TextEncoder().encode("hello"),
        mentions: [],
      },
    },
  });
  const sent = decoded("sent");
  assert.ok(sent.kind === "Response" && sent.response.kind === "Sent");
  const ack = sent.response.ack;
  assert.deepEqual(
    [ack.conversation, ack.op, ack.seq, ack.ts, ack.duplicate],
    [{ kind: "Room", room: 5n }, 77n, 43n, 1_795_000_000_000n, false],
  );
  assert.equal(hex(ack.chain?.link ?? new Uint8Array()), "c4".repeat(32));
  const message = decoded("event-message");
  assert.ok(message.kind === "Event" && message.event.kind === "Entry");
  const entry = message.event.entry;
  assert.ok(entry.kind === "Message");
  assert.equal(new TextDecoder().decode(entry.body), "hello");
  assert.equal(entry.replyTo, 42n);
  const error = decoded("error-rate-limited");
  assert.deepEqual(error, {
    kind: "Error",
    id: 2,
    error: { code: 500, reason: "slow down", retryAfterMs: 250 },
  });
  const gap = decoded("event-gap");
  assert.deepEqual(gap, {
    kind: "Event",
    event: {
      kind: "Gap",
      gap: { conversation: { kind: "Direct", low: 1n, high: 2n }, from: 301n, to: 5000n },
    },
  });
  // The sent ack's digest is that of 13.12's message.
  assert.ok(ack.chain);
  assert.equal(hex(ack.chain.digest), hex(await chain.digest(entry)));
});

test("the chained page follows its hash chain, and an altered entry does not", async () => {
  const frame = decoded("history-chained");
  assert.ok(frame.kind === "Response" && frame.response.kind === "History");
  const page = frame.response.page;
  assert.ok(page.prior);
  assert.equal(hex(page.prior), hex(await chain.genesis(page.conversation)));
  const verifier = await chain.Verifier.start(page.conversation);
  for (const entry of page.entries) await verifier.check(entry);
  assert.equal(verifier.head.seq, 3n);
  const stated = /`link\(3\)` = `([0-9a-f]{64})`/.exec(doc);
  assert.equal(hex(verifier.head.link), stated?.[1]);
  // One byte of the message's body changed: its link no longer follows.
  const altered = page.entries.map((e) => ({ ...e }));
  const last = altered[2];
  assert.ok(last && last.kind === "Message");
  last.body = new TextEncoder().encode("hellO");
  const again = await chain.Verifier.start(page.conversation);
  await again.check(altered[0]!);
  await again.check(altered[1]!);
  await assert.rejects(again.check(last), (e: chain.ChainError) => e.rule === "Link");
  // Out of order.
  const skipping = await chain.Verifier.start(page.conversation);
  await assert.rejects(skipping.check(page.entries[1]!), (e: chain.ChainError) => e.rule === "OutOfOrder");
});

test("varints are written shortest and read with their width checked", () => {
  const cases: [bigint, string][] = [
    [0n, "00"],
    [250n, "fa"],
    [251n, "fbfb00"],
    [300n, "fb2c01"],
    [65_536n, "fc00000100"],
    [1n << 32n, "fd0000000001000000"],
  ];
  for (const [value, bytes] of cases) {
    const w = new Writer();
    w.u64(value);
    assert.equal(hex(w.bytes()), bytes);
    assert.equal(new Reader(Uint8Array.from(Buffer.from(bytes, "hex"))).u64(), value);
  }
  // A marker wider than the type, and the unused markers, are invalid.
  assert.throws(() => new Reader(Uint8Array.from([0xfc, 0, 0, 1, 0])).u16(), DecodeError);
  assert.throws(() => new Reader(Uint8Array.from([0xfe])).u64(), DecodeError);
});

test("framing: incomplete waits, oversize and leftovers are invalid", () => {
  const ping = vectors().get("ping")!;
  const decoder = FrameDecoder.client();
  decoder.push(ping.subarray(0, 3));
  assert.equal(decoder.next(), null);
  decoder.push(ping.subarray(3, 6));
  assert.equal(decoder.next(), null);
  decoder.push(ping.subarray(6));
  assert.deepEqual(decoder.next(), { kind: "Request", id: 7, request: { kind: "Ping" } });
  // A length over the client limit is refused as soon as the prefix arrives.
  assert.throws(() => FrameDecoder.client().push(Uint8Array.from([0x01, 0x00, 0x01, 0x00])), DecodeError);
  // A byte after the body.
  const longer = Uint8Array.from([0x05, 0, 0, 0, 2, 1, 7, 3, 0]);
  assert.throws(() => decodeClientFrame(longer), DecodeError);
  // An unknown version.
  assert.throws(() => decodeClientFrame(Uint8Array.from([0x04, 0, 0, 0, 9, 1, 7, 3])), DecodeError);
});
