// A session with chatd (docs/PROTOCOL.md sections 7 and 8) over any transport that carries the
// session stream: the hello and its authentication, requests and their answers within the
// announced in-flight limit, events, typing on the datagram lane, and reconnection with a
// gapless resume from per-conversation cursors (8.5), the way the Rust SDK does it:
//
// - every entry event moves its conversation's cursor; a repeat (at or before the cursor) is
//   dropped, so a resume never shows an entry twice;
// - an acknowledged send moves the cursor too, once the entries before it were seen, so the
//   replay of a resume does not show the application its own message again;
// - requests unanswered when a connection is lost are sent again on the next one (a send
//   keeps its op id, so the daemon stores it once: 8.2);
// - `Lagged` is answered with a `Sync` from the cursors (8.6), after any catch-up running;
// - every entry received (pushed, replayed, paged) and every ack of its own is followed on
//   its conversation's hash chain (8.12, `Tracker`); a break is reported to `onChainBreak`,
//   and the tips can be saved to check the next run against (`chainTips`);
// - a connection is dialled again with backoff and jitter unless the daemon said not to come
//   back (`REPLACED`, `PROTOCOL_VIOLATION`) or the token is refused; after `TOKEN_EXPIRED`
//   the token source is asked for a fresh token.

import { ErrorCode, GoodbyeCode, errorName } from "./codes.js";
import { FrameDecoder, decodeServerFrame, encodeClientFrame } from "./frame.js";
import { type Break, type Report, type Tip, Tracker } from "./tracker.js";
import type {
  ConversationId,
  Cursor,
  Event,
  Goodbye,
  HelloOk,
  Limits,
  Request,
  Response,
  SendAck,
  ServerFrame,
  Session,
  Seq,
} from "./types.js";
import { conversationName } from "./types.js";

/** One connection's session stream (and datagram lane, when it has one). */
export interface Transport {
  readable: ReadableStream<Uint8Array>;
  writable: WritableStream<Uint8Array>;
  datagrams: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> } | null;
  /** Closes the connection with an application close code. */
  close(code: number, reason: string): void;
}

/** Opens a connection and its session stream. */
export type Connector = () => Promise<Transport>;

/** An `Error` frame answering a request, or refusing the hello's token. */
export class ChatError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    readonly retryAfterMs: number | null,
  ) {
    super(`${errorName(code)}: ${reason}`);
    this.name = "ChatError";
  }
}

/** The client closed, or stopped reconnecting; `goodbye` is the daemon's last word. */
export class ClosedError extends Error {
  constructor(readonly goodbye: Goodbye | null) {
    super(goodbye ? `closed: ${goodbye.reason || goodbye.code}` : "closed");
    this.name = "ClosedError";
  }
}

export type Status =
  | { kind: "connecting"; attempt: number }
  | { kind: "online"; session: Session | null; limits: Limits }
  | { kind: "closed"; goodbye: Goodbye | null; error: ChatError | null };

export interface ClientOptions {
  connect: Connector;
  /** The token of each connection (`null`: anonymous). Asked again on every connection, so
   *  it can hand out a fresh one after `TOKEN_EXPIRED`. */
  token: () => Promise<string | null> | string | null;
  device: bigint;
  /** `Hello.client` (at most 64 bytes). */
  client?: string;
  /** Where to resume from: the cursors a previous run saved (`Client.cursors()`). */
  cursors?: Cursor[];
  /** The hash chains' tips a previous run saved (`Client.chainTips()`), to check what
   *  follows against them. A tip before its conversation's cursor is dropped: the entries
   *  between would never come to be checked. */
  tips?: Tip[];
  /** A conversation's chain broke: the daemon gave this client a history that does not
   *  follow from what it gave before (or gives other members). */
  onChainBreak?: (broken: Break) => void;
  /** Dial again after a lost connection (default), or not. */
  reconnect?: boolean;
  /** Delay before the first redial and its ceiling, doubled per attempt. */
  backoffMs?: { initial: number; max: number };
  onEvent?: (event: Event) => void;
  onStatus?: (status: Status) => void;
}

interface Pending {
  request: Request;
  resolve: (response: Response) => void;
  reject: (error: Error) => void;
}

/** Per conversation, the last entry handled, and own acknowledged entries beyond it. */
class Positions {
  private readonly last = new Map<string, { conversation: ConversationId; seq: Seq }>();
  private readonly own = new Map<string, Set<Seq>>();

  constructor(cursors: Cursor[]) {
    for (const c of cursors) this.last.set(conversationName(c.conversation), { ...c });
  }

  /** An entry arrived: `false` when it is a repeat or the application's own acked send. */
  entry(conversation: ConversationId, seq: Seq): boolean {
    const key = conversationName(conversation);
    const last = this.last.get(key)?.seq ?? 0n;
    if (seq <= last) return false;
    const own = this.own.get(key);
    const mine = own?.delete(seq) ?? false;
    this.advance(key, conversation, seq);
    return !mine;
  }

  /** The application's own entry was acknowledged at `seq`. */
  acked(conversation: ConversationId, seq: Seq): void {
    const key = conversationName(conversation);
    const last = this.last.get(key)?.seq ?? 0n;
    if (seq === last + 1n) this.advance(key, conversation, seq);
    else if (seq > last) {
      const own = this.own.get(key) ?? new Set<Seq>();
      own.add(seq);
      this.own.set(key, own);
    }
  }

  private advance(key: string, conversation: ConversationId, seq: Seq): void {
    const own = this.own.get(key);
    while (own?.delete(seq + 1n)) seq += 1n;
    if (own && own.size === 0) this.own.delete(key);
    this.last.set(key, { conversation, seq });
  }

  cursors(): Cursor[] {
    return [...this.last.values()].map((c) => ({ ...c }));
  }
}

const FINAL_GOODBYES: readonly number[] = [GoodbyeCode.REPLACED, GoodbyeCode.PROTOCOL_VIOLATION];
/** The pause before a `Sync` after one that could not be served (8.5). */
const SYNC_PAUSE_MS = 100;
const REFUSED_TOKENS: readonly number[] = [
  ErrorCode.TOKEN_EXPIRED,
  ErrorCode.TOKEN_INVALID,
  ErrorCode.TOKEN_UNKNOWN_KEY,
  ErrorCode.TOKEN_MALFORMED,
  ErrorCode.TOKEN_REVOKED,
  ErrorCode.ACCOUNT_DISABLED,
  ErrorCode.UNKNOWN_USER,
  ErrorCode.UNSUPPORTED_VERSION,
];

/** A chatd client: one session at a time, reconnected and resumed until `close`. */
export class Client {
  private readonly positions: Positions;
  private readonly waiting: Pending[] = [];
  private inFlight = new Map<number, Pending>();
  private nextId = 1;
  private writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  private datagrams: WritableStreamDefaultWriter<Uint8Array> | null = null;
  private transport: Transport | null = null;
  private limits: Limits | null = null;
  private catchingUp = false;
  private syncAfterCatchUp = false;
  /** The running catch-up failed for a reason that passes (8.5): its `Sync` waits a pause. */
  private catchUpFailed = false;
  private closed = false;
  private status: Status = { kind: "connecting", attempt: 1 };
  private readonly tracker: Tracker;
  /** The chain checks, one after the other (hashing is asynchronous). */
  private checking: Promise<void> = Promise.resolve();

  constructor(private readonly options: ClientOptions) {
    const cursors = options.cursors ?? [];
    this.positions = new Positions(cursors);
    const cursorOf = new Map(cursors.map((c) => [conversationName(c.conversation), c.seq]));
    const tips = (options.tips ?? []).filter((t) => t.seq >= (cursorOf.get(conversationName(t.conversation)) ?? 0n));
    this.tracker = new Tracker(tips);
  }

  /** The chains' tips once every check queued so far is done (save them with the cursors). */
  async chainTips(): Promise<Tip[]> {
    await this.checking;
    return this.tracker.tips();
  }

  /** What the chain checks found so far. */
  chainReport(): Report {
    return this.tracker.report;
  }

  private check(step: (tracker: Tracker) => Promise<Break | null | void>): void {
    this.checking = this.checking
      .then(() => step(this.tracker))
      .then((broken) => {
        if (broken) this.options.onChainBreak?.(broken);
      })
      .catch(() => {});
  }

  /** Connects and keeps connecting until `close` (or a final refusal); resolves once the
   *  first session is up, rejects when it cannot start. */
  start(): Promise<HelloOk> {
    return new Promise((resolve, reject) => {
      void this.run(resolve, reject);
    });
  }

  /** The status now. */
  current(): Status {
    return this.status;
  }

  /** Where to resume from next time (save them, e.g. in localStorage). */
  cursors(): Cursor[] {
    return this.positions.cursors();
  }

  /** Sends a request; resolves with its answer, rejects with `ChatError` for an `Error`, or
   *  `ClosedError` when the client closes first. Sent again after a reconnect. */
  request(request: Request): Promise<Response> {
    if (this.closed) return Promise.reject(new ClosedError(null));
    return new Promise((resolve, reject) => {
      this.waiting.push({ request, resolve, reject });
      this.pump();
    });
  }

  /** A typing update, on the datagram lane when the transport has one. Never answered. */
  typing(conversation: ConversationId, active: boolean): void {
    const frame = encodeClientFrame({ kind: "Typing", update: { conversation, active } });
    if (this.datagrams) void this.datagrams.write(frame).catch(() => {});
    else if (this.writer) void this.writer.write(frame).catch(() => {});
  }

  /** Closes the session (code 0) and stops reconnecting; unanswered requests reject. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.transport?.close(0, "bye");
    this.fail(new ClosedError(null));
    this.setStatus({ kind: "closed", goodbye: null, error: null });
  }

  private setStatus(status: Status): void {
    this.status = status;
    this.options.onStatus?.(status);
  }

  private fail(error: Error): void {
    for (const p of [...this.inFlight.values(), ...this.waiting]) p.reject(error);
    this.inFlight.clear();
    this.waiting.length = 0;
  }

  private async run(started: (ok: HelloOk) => void, failed: (e: Error) => void): Promise<void> {
    const backoff = this.options.backoffMs ?? { initial: 250, max: 10_000 };
    let delay = backoff.initial;
    let first = true;
    for (let attempt = 1; !this.closed; attempt++) {
      this.setStatus({ kind: "connecting", attempt });
      let goodbye: Goodbye | null = null;
      try {
        const { hello, reader } = await this.connect();
        delay = backoff.initial;
        attempt = 0;
        if (first) started(hello);
        first = false;
        goodbye = await this.serve(reader);
      } catch (e) {
        if (e instanceof ChatError && REFUSED_TOKENS.includes(e.code)) {
          // An expired token gets one more try with whatever the source gives now.
          if (e.code === ErrorCode.TOKEN_EXPIRED && attempt === 1 && !first) continue;
          this.closed = true;
          this.fail(e);
          this.setStatus({ kind: "closed", goodbye: null, error: e });
          if (first) failed(e);
          return;
        }
        if (first && this.options.reconnect === false) {
          this.closed = true;
          this.fail(e instanceof Error ? e : new Error(String(e)));
          this.setStatus({ kind: "closed", goodbye: null, error: null });
          return failed(e instanceof Error ? e : new Error(String(e)));
        }
      } finally {
        this.detach();
      }
      if (this.closed) return;
      if (this.options.reconnect === false || (goodbye && FINAL_GOODBYES.includes(goodbye.code))) {
        this.closed = true;
        this.fail(new ClosedError(goodbye));
        this.setStatus({ kind: "closed", goodbye, error: null });
        if (first) failed(new ClosedError(goodbye));
        return;
      }
      // Jitter: 50-100% of the delay, so a restarted daemon is not hit all at once.
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)));
      delay = Math.min(delay * 2, backoff.max);
    }
  }

  /** Dials, says hello (with the token and the cursors), and waits for `HelloOk`. */
  private async connect(): Promise<{ hello: HelloOk; reader: FrameReader }> {
    const token = await this.options.token();
    const transport = await this.options.connect();
    this.transport = transport;
    const writer = transport.writable.getWriter();
    const reader = new FrameReader(transport.readable.getReader());
    await writer.write(
      encodeClientFrame({
        kind: "Hello",
        hello: {
          versions: { min: 2, max: 2 },
          client: this.options.client ?? "@chatd/client",
          device: this.options.device,
          auth: token === null ? null : { token, resume: { cursors: this.positions.cursors() } },
        },
      }),
    );
    let refusal: ChatError | null = null;
    for (;;) {
      const frame = await reader.next();
      if (frame === null) throw refusal ?? new Error("the daemon closed the session stream");
      if (frame.kind === "Error" && frame.id === null) {
        refusal = new ChatError(frame.error.code, frame.error.reason, frame.error.retryAfterMs);
      } else if (frame.kind === "HelloOk") {
        if (refusal) {
          transport.close(0, "token refused");
          throw refusal;
        }
        this.writer = writer;
        this.datagrams = transport.datagrams?.writable.getWriter() ?? null;
        this.limits = frame.hello.limits;
        this.catchingUp = token !== null;
        this.setStatus({ kind: "online", session: frame.hello.session, limits: frame.hello.limits });
        // Unanswered requests of the lost connection go first, in their order.
        const resend = [...this.inFlight.values()];
        this.inFlight.clear();
        this.waiting.unshift(...resend);
        this.pump();
        return { hello: frame.hello, reader };
      } else if (frame.kind === "Goodbye") {
        throw refusal ?? new ClosedError(frame.goodbye);
      }
    }
  }

  /** Reads one connection's frames until it ends; returns its goodbye, if any. */
  private async serve(reader: FrameReader): Promise<Goodbye | null> {
    const lane = this.transport?.datagrams?.readable.getReader();
    if (lane) void this.readDatagrams(lane);
    try {
      for (;;) {
        const frame = await reader.next();
        if (frame === null) return null;
        if (frame.kind === "Goodbye") return frame.goodbye;
        this.frame(frame);
      }
    } catch {
      return null;
    } finally {
      lane?.cancel().catch(() => {});
    }
  }

  private async readDatagrams(lane: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    for (;;) {
      const { value, done } = await lane.read().catch(() => ({ value: undefined, done: true }));
      if (done || !value) return;
      try {
        const frame = decodeServerFrame(value);
        if (frame.kind === "Event") this.options.onEvent?.(frame.event);
      } catch {
        // The lane is unreliable by design: a datagram that does not decode is dropped.
      }
    }
  }

  private frame(frame: ServerFrame): void {
    switch (frame.kind) {
      case "Response":
      case "Error": {
        const pending = frame.id === null ? undefined : this.inFlight.get(frame.id);
        if (frame.id !== null) this.inFlight.delete(frame.id);
        if (frame.kind === "Response") {
          const ack = sendAck(frame.response);
          if (ack) {
            this.positions.acked(ack.conversation, ack.seq);
            this.followAck(ack);
          }
          const response = frame.response;
          if (response.kind === "History") this.check((t) => t.page(response.page));
          pending?.resolve(frame.response);
        } else {
          const { code, reason, retryAfterMs } = frame.error;
          if (frame.id === null && this.catchingUp && code === ErrorCode.UNAVAILABLE) {
            this.catchUpFailed = true;
          }
          pending?.reject(new ChatError(code, reason, retryAfterMs));
        }
        this.pump();
        break;
      }
      case "Event":
        this.event(frame.event);
        break;
      case "HelloOk":
      case "Goodbye":
        break;
    }
  }

  private event(event: Event): void {
    if (event.kind === "Entry") {
      // Every entry is checked, repeats included (the one at a tip must carry its link).
      const entry = event.entry;
      this.check((t) => t.entry(entry));
      if (!this.positions.entry(event.entry.conversation, event.entry.seq)) return;
    } else if (event.kind === "Gap") {
      const gap = event.gap;
      this.check((t) => t.gap(gap));
    } else if (event.kind === "CaughtUp") {
      this.catchingUp = false;
      const pause = this.catchUpFailed;
      this.catchUpFailed = false;
      if (this.syncAfterCatchUp) {
        if (pause) {
          // Not again at once: a partition moving between nodes takes a moment.
          this.catchingUp = true;
          setTimeout(() => this.sync(), SYNC_PAUSE_MS);
        } else {
          this.sync();
        }
      }
    } else if (event.kind === "Lagged") {
      if (this.catchingUp) this.syncAfterCatchUp = true;
      else this.sync();
    }
    this.options.onEvent?.(event);
  }

  /** Follows an own entry's ack on its chain. An ack without its place (a retry answered
   *  from the daemon's stored op ids) has the entry read back, so the chain has no hole. */
  private followAck(ack: SendAck): void {
    const appended = ack.chain;
    if (appended) {
      this.check((t) => t.acked(ack.conversation, ack.seq, appended));
      return;
    }
    const from = { kind: "After" as const, seq: ack.seq - 1n };
    const query = { conversation: ack.conversation, from, limit: 1, order: "OldestFirst" as const, thread: null };
    this.request({ kind: "History", query }).catch(() => {});
  }

  /** Asks for what this connection missed, from the cursors; a `Sync` refused
   *  `UNAVAILABLE` (a partition moving between nodes) is sent again after a pause. */
  private sync(): void {
    if (this.transport === null) {
      this.catchingUp = false;
      return;
    }
    this.syncAfterCatchUp = false;
    this.catchingUp = true;
    this.request({ kind: "Sync", resume: { cursors: this.positions.cursors() } }).catch((e) => {
      if (e instanceof ChatError && e.code === ErrorCode.UNAVAILABLE) {
        setTimeout(() => this.sync(), SYNC_PAUSE_MS);
      } else {
        this.catchingUp = false;
      }
    });
  }

  /** Writes waiting requests while the in-flight limit allows. */
  private pump(): void {
    const writer = this.writer;
    if (!writer || !this.limits) return;
    while (this.waiting.length > 0 && this.inFlight.size < this.limits.maxInFlight) {
      const pending = this.waiting.shift() as Pending;
      const id = this.nextId;
      this.nextId = this.nextId >= 0xffff_ffff ? 1 : this.nextId + 1;
      this.inFlight.set(id, pending);
      // A write that fails means the connection is going: the request stays in flight and
      // is sent again on the next one.
      writer.write(encodeClientFrame({ kind: "Request", id, request: pending.request })).catch(() => {});
    }
  }

  private detach(): void {
    this.writer?.releaseLock();
    this.datagrams?.releaseLock();
    this.writer = null;
    this.datagrams = null;
    this.transport = null;
    this.limits = null;
  }
}

function sendAck(response: Response): SendAck | null {
  return response.kind === "Sent" ? response.ack : null;
}

/** Frames from a byte stream. */
class FrameReader {
  private readonly decoder = FrameDecoder.server();

  constructor(private readonly reader: ReadableStreamDefaultReader<Uint8Array>) {}

  /** The next frame, or `null` at the end of the stream. */
  async next(): Promise<ServerFrame | null> {
    for (;;) {
      const frame = this.decoder.next();
      if (frame !== null) return frame;
      const { value, done } = await this.reader.read();
      if (done) return null;
      this.decoder.push(value);
    }
  }
}
