// The session's rules (src/session.ts) against a scripted daemon: in-memory streams carry
// real frames both ways, and each test plays the daemon's side step by step. Deterministic;
// the browser test (web/test) runs the same session against a real chatd.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ErrorCode, GoodbyeCode } from "../src/codes.js";
import { FrameDecoder, encodeServerFrame } from "../src/frame.js";
import { ChatError, Client, ClosedError, type Transport } from "../src/session.js";
import type { ClientFrame, ConversationId, Entry, Event, Limits, Request, ServerFrame } from "../src/types.js";

const room: ConversationId = { kind: "Room", room: 7n };

const limits = (maxInFlight: number): Limits => ({
  maxFrame: 65_536,
  maxBody: 16_384,
  maxPage: 100,
  sendRate: 10,
  sendBurst: 20,
  maxInFlight,
  maxRoomsPerUser: 100,
  maxRoomMembers: 100,
  maxResumeGap: 1000,
  idleTimeoutMs: 30_000,
  authTimeoutMs: 10_000,
  typingTtlMs: 5_000,
});

/** One connection, as the daemon sees it. */
class Connection {
  private readonly toClient = new TransformStream<Uint8Array, Uint8Array>();
  private readonly toServer = new TransformStream<Uint8Array, Uint8Array>();
  private readonly writer = this.toClient.writable.getWriter();
  private readonly reader = this.toServer.readable.getReader();
  private readonly decoder = FrameDecoder.client();

  transport(): Transport {
    return {
      readable: this.toClient.readable,
      writable: this.toServer.writable,
      datagrams: null,
      close: () => void this.writer.close().catch(() => {}),
    };
  }

  /** The next frame the client wrote. */
  async next(): Promise<ClientFrame> {
    for (;;) {
      const frame = this.decoder.next();
      if (frame) return frame;
      const { value, done } = await this.reader.read();
      if (done) throw new Error("the client closed");
      this.decoder.push(value);
    }
  }

  async request(kind: Request["kind"]): Promise<{ id: number; request: Request }> {
    const frame = await this.next();
    assert.equal(frame.kind, "Request");
    if (frame.kind !== "Request") throw new Error();
    assert.equal(frame.request.kind, kind);
    return frame;
  }

  async send(frame: ServerFrame): Promise<void> {
    await this.writer.write(encodeServerFrame(frame));
  }

  async helloOk(maxInFlight = 8): Promise<void> {
    const session = { user: 1n, name: "ann", device: 9n, expiresAt: 0n };
    await this.send({ kind: "HelloOk", hello: { version: 2, server: "script", session, limits: limits(maxInFlight), serverTime: 0n } });
  }

  async end(): Promise<void> {
    await this.writer.close();
  }
}

/** A connector handing out scripted connections, and the daemon's side of each. */
function daemon(): { connect: () => Promise<Transport>; accept: () => Promise<Connection> } {
  const waiting: ((c: Connection) => void)[] = [];
  const ready: Connection[] = [];
  return {
    connect: async () => {
      const c = new Connection();
      const take = waiting.shift();
      if (take) take(c);
      else ready.push(c);
      return c.transport();
    },
    accept: () => {
      const c = ready.shift();
      return c ? Promise.resolve(c) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

function message(seq: bigint, sender = 2n): Entry {
  return {
    kind: "Message",
    conversation: room,
    seq,
    ts: 0n,
    sender,
    op: seq,
    contentType: 0,
    replyTo: null,
    body: new Uint8Array(),
    edited: null,
    deleted: null,
    mentions: [],
    reactions: [],
    chain: { link: new Uint8Array(32), kept: null },
  };
}

const entry = (seq: bigint, sender?: bigint): ServerFrame => ({ kind: "Event", event: { kind: "Entry", entry: message(seq, sender) } });

function client(d: ReturnType<typeof daemon>, seen: Event[], extra: Partial<ConstructorParameters<typeof Client>[0]> = {}): Client {
  return new Client({
    connect: d.connect,
    token: () => "token",
    device: 9n,
    cursors: [{ conversation: room, seq: 3n }],
    backoffMs: { initial: 1, max: 1 },
    onEvent: (e) => seen.push(e),
    ...extra,
  });
}

/** A client connected to the scripted daemon: its hello answered with `maxInFlight`. */
async function connected(
  d: ReturnType<typeof daemon>,
  seen: Event[],
  extra: Partial<ConstructorParameters<typeof Client>[0]> = {},
  maxInFlight = 8,
): Promise<{ c: Client; conn: Connection }> {
  const c = client(d, seen, extra);
  const started = c.start();
  const conn = await d.accept();
  await conn.next();
  await conn.helloOk(maxInFlight);
  await started;
  return { c, conn };
}

const seqs = (events: Event[]) => events.flatMap((e) => (e.kind === "Entry" ? [e.entry.seq] : []));

test("a reconnect resumes from the cursors, without repeats or its own sends, and resends what was unanswered", async () => {
  const d = daemon();
  const seen: Event[] = [];
  const c = client(d, seen);
  const started = c.start();
  const first = await d.accept();
  const hello = await first.next();
  assert.equal(hello.kind, "Hello");
  if (hello.kind !== "Hello") return;
  assert.deepEqual(hello.hello.auth?.resume?.cursors, [{ conversation: room, seq: 3n }]);
  await first.helloOk();
  await started;

  await first.send(entry(3n)); // at the cursor: a repeat
  await first.send(entry(4n));
  const sent = c.request({
    kind: "Send",
    message: { conversation: room, op: 42n, contentType: 0, replyTo: null, body: new Uint8Array(), mentions: [] },
  });
  const send = await first.request("Send");
  await first.send({
    kind: "Response",
    id: send.id,
    response: { kind: "Sent", ack: { conversation: room, op: 42n, seq: 5n, ts: 0n, duplicate: false, chain: null } },
  });
  await sent;
  // The ack came without its place in the chain (as a retry's answer does): the client reads
  // the entry back to follow its chain.
  const readBack = await first.request("History");
  assert.deepEqual(readBack.request, {
    kind: "History",
    query: { conversation: room, from: { kind: "After", seq: 4n }, limit: 1, order: "OldestFirst", thread: null },
  });
  const page = { conversation: room, entries: [], head: 5n, more: false, prior: null };
  await first.send({ kind: "Response", id: readBack.id, response: { kind: "History", page } });
  const history = c.request({ kind: "Ping" });
  await first.request("Ping");
  await first.end(); // lost before the answer

  const second = await d.accept();
  const again = await second.next();
  assert.equal(again.kind, "Hello");
  if (again.kind !== "Hello") return;
  // 4 was seen, 5 is its own acknowledged send.
  assert.deepEqual(again.hello.auth?.resume?.cursors, [{ conversation: room, seq: 5n }]);
  await second.helloOk();
  const resent = await second.request("Ping");
  await second.send({ kind: "Response", id: resent.id, response: { kind: "Pong", serverTime: 1n } });
  assert.deepEqual(await history, { kind: "Pong", serverTime: 1n });
  // A barrier: frames are handled in order, so once this answer is in, so are the events.
  const barrier = c.request({ kind: "Ping" });
  const ping = await second.request("Ping");
  await second.send(entry(5n, 1n)); // its own send, replayed
  await second.send(entry(6n));
  await second.send({ kind: "Event", event: { kind: "CaughtUp", replayed: 2 } });
  await second.send({ kind: "Response", id: ping.id, response: { kind: "Pong", serverTime: 2n } });
  await barrier;
  c.close();
  assert.deepEqual(seqs(seen), [4n, 6n]);
});

test("Lagged is answered with a Sync from the cursors, after the catch-up running ends", async () => {
  const d = daemon();
  const seen: Event[] = [];
  const { c, conn } = await connected(d, seen);
  await conn.send(entry(4n));
  await conn.send({ kind: "Event", event: { kind: "Lagged" } });
  const ping = c.request({ kind: "Ping" });
  // Still catching up: the next frame is the ping, not a Sync.
  const first = await conn.request("Ping");
  await conn.send({ kind: "Response", id: first.id, response: { kind: "Pong", serverTime: 0n } });
  await ping;
  await conn.send({ kind: "Event", event: { kind: "CaughtUp", replayed: 1 } });
  const sync = await conn.request("Sync");
  assert.deepEqual(sync.request, { kind: "Sync", resume: { cursors: [{ conversation: room, seq: 4n }] } });
  c.close();
});

test("a catch-up that failed for a moving partition is synced again after a pause, and so is a refused Sync", async () => {
  const d = daemon();
  const { c, conn } = await connected(d, []);
  await conn.send(entry(4n));
  await conn.send({ kind: "Event", event: { kind: "Lagged" } });
  await conn.send({ kind: "Error", id: null, error: { code: ErrorCode.UNAVAILABLE, reason: "catch-up failed; sync again", retryAfterMs: null } });
  const caughtUp = Date.now();
  await conn.send({ kind: "Event", event: { kind: "CaughtUp", replayed: 1 } });
  const sync = await conn.request("Sync");
  assert.ok(Date.now() - caughtUp >= 90, "the Sync waited its pause");
  assert.deepEqual(sync.request, { kind: "Sync", resume: { cursors: [{ conversation: room, seq: 4n }] } });
  // Refused while the partition is still moving: sent again.
  await conn.send({ kind: "Error", id: sync.id, error: { code: ErrorCode.UNAVAILABLE, reason: "moving", retryAfterMs: null } });
  const again = await conn.request("Sync");
  assert.deepEqual(again.request, sync.request);
  c.close();
});

test("requests wait for the in-flight limit", async () => {
  const { c, conn } = await connected(daemon(), [], {}, 1);
  const one = c.request({ kind: "Ping" });
  const two = c.request({ kind: "FindRoom", name: "lunch" });
  const first = await conn.request("Ping");
  await conn.send({ kind: "Error", id: first.id, error: { code: 502, reason: "busy", retryAfterMs: 10 } });
  await assert.rejects(one, (e: unknown) => e instanceof ChatError && e.code === 502 && e.retryAfterMs === 10);
  // Only now, with the first answered, is the second written.
  await conn.request("FindRoom");
  c.close();
  await assert.rejects(two, ClosedError);
});

test("REPLACED is final: no reconnect, and what waits is rejected", async () => {
  const statuses: string[] = [];
  const { c, conn } = await connected(daemon(), [], { onStatus: (s) => statuses.push(s.kind) });
  const waiting = c.request({ kind: "Ping" });
  await conn.request("Ping");
  await conn.send({ kind: "Goodbye", goodbye: { code: GoodbyeCode.REPLACED, reason: "replaced" } });
  await assert.rejects(waiting, (e: unknown) => e instanceof ClosedError && e.goodbye?.code === GoodbyeCode.REPLACED);
  assert.deepEqual(statuses, ["connecting", "online", "closed"]);
});
