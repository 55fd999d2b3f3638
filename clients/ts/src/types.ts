// The frames of docs/PROTOCOL.md sections 4 to 6 as TypeScript values, with their encoders
// and decoders. Field order is wire order; names are the document's in camelCase. Enums with
// fields are `{ kind: "Variant", ... }`; enums without are the variant's name.

import type { ErrorCode, GoodbyeCode } from "./codes.js";
import { DecodeError, Reader, Writer } from "./codec.js";

// --- identifiers (section 4) -----------------------------------------------------------------

export type UserId = bigint;
export type DeviceId = bigint;
export type RoomId = bigint;
export type Seq = bigint;
export type OpId = bigint;
export type Timestamp = bigint;
export type RequestId = number;
export type ContentType = number;
/** A SHA-256 value of the hash chain (32 bytes, section 8.12). */
export type Hash = Uint8Array;

export type ConversationId =
  | { kind: "Direct"; low: UserId; high: UserId }
  | { kind: "Notes"; user: UserId }
  | { kind: "Room"; room: RoomId };

/** The direct conversation of two users, whichever order they are given in. */
export function direct(a: UserId, b: UserId): ConversationId {
  return a < b ? { kind: "Direct", low: a, high: b } : { kind: "Direct", low: b, high: a };
}

export function writeConversation(w: Writer, c: ConversationId): void {
  switch (c.kind) {
    case "Direct":
      w.variant(0);
      w.u64(c.low);
      w.u64(c.high);
      break;
    case "Notes":
      w.variant(1);
      w.u64(c.user);
      break;
    case "Room":
      w.variant(2);
      w.u64(c.room);
      break;
  }
}

export function readConversation(r: Reader): ConversationId {
  const index = r.variant();
  switch (index) {
    case 0: {
      const low = r.u64();
      const high = r.u64();
      if (low >= high) throw new DecodeError("a direct conversation's low id must be below its high");
      return { kind: "Direct", low, high };
    }
    case 1:
      return { kind: "Notes", user: r.u64() };
    case 2:
      return { kind: "Room", room: r.u64() };
    default:
      throw unknown("ConversationId", index);
  }
}

/** A conversation as text, as the daemon and the CLI print it. */
export function conversationName(c: ConversationId): string {
  switch (c.kind) {
    case "Direct":
      return `direct:${c.low}:${c.high}`;
    case "Notes":
      return `notes:${c.user}`;
    case "Room":
      return `room:${c.room}`;
  }
}

function unknown(what: string, index: number): DecodeError {
  return new DecodeError(`unknown ${what} variant ${index}`);
}

/** A unit enum: its variants' names in index order. */
function unitEnum<T extends string>(what: string, names: readonly T[]) {
  return {
    write(w: Writer, value: T): void {
      const index = names.indexOf(value);
      if (index < 0) throw new RangeError(`${value} is not a ${what}`);
      w.variant(index);
    },
    read(r: Reader): T {
      const index = r.variant();
      const name = names[index];
      if (name === undefined) throw unknown(what, index);
      return name;
    },
  };
}

const u64 = (w: Writer, v: bigint) => w.u64(v);
const readU64 = (r: Reader) => r.u64();
const hash = (w: Writer, v: Hash) => w.array(v, 32);
const readHash = (r: Reader) => r.array(32);

// --- client frames (section 5) -----------------------------------------------------------------

export type Role = "Member" | "Admin" | "Owner";
export const Role = unitEnum<Role>("Role", ["Member", "Admin", "Owner"]);
export type Marker = "Delivered" | "Read";
export const Marker = unitEnum<Marker>("Marker", ["Delivered", "Read"]);
export type Order = "OldestFirst" | "NewestFirst";
export const Order = unitEnum<Order>("Order", ["OldestFirst", "NewestFirst"]);

export interface VersionRange {
  min: number;
  max: number;
}
export interface Cursor {
  conversation: ConversationId;
  seq: Seq;
}
export interface Resume {
  cursors: Cursor[];
}
export interface Auth {
  token: string;
  resume: Resume | null;
}
export interface Hello {
  versions: VersionRange;
  client: string;
  device: DeviceId;
  auth: Auth | null;
}
export interface SendMessage {
  conversation: ConversationId;
  op: OpId;
  contentType: ContentType;
  replyTo: Seq | null;
  body: Uint8Array;
  mentions: UserId[];
}
export interface EditMessage {
  conversation: ConversationId;
  op: OpId;
  target: Seq;
  contentType: ContentType;
  body: Uint8Array;
}
export interface DeleteMessage {
  conversation: ConversationId;
  op: OpId;
  target: Seq;
}
export interface ReactMessage {
  conversation: ConversationId;
  op: OpId;
  target: Seq;
  reaction: string;
  remove: boolean;
}
export type HistoryFrom =
  | { kind: "Latest" }
  | { kind: "Before"; seq: Seq }
  | { kind: "After"; seq: Seq };
export interface HistoryQuery {
  conversation: ConversationId;
  from: HistoryFrom;
  limit: number;
  order: Order;
  thread: Seq | null;
}
export interface TypingUpdate {
  conversation: ConversationId;
  active: boolean;
}
export type UserRef = { kind: "Id"; user: UserId } | { kind: "Name"; name: string };

export type Request =
  | { kind: "Authenticate"; auth: Auth }
  | { kind: "Register"; name: string; password: string }
  | { kind: "Login"; name: string; password: string }
  | { kind: "Ping" }
  | { kind: "LookupUsers"; users: UserRef[] }
  | { kind: "CreateRoom"; name: string; inviteOnly: boolean }
  | { kind: "FindRoom"; name: string }
  | { kind: "JoinRoom"; room: RoomId }
  | { kind: "LeaveRoom"; room: RoomId }
  | { kind: "Invite"; room: RoomId; user: UserId }
  | { kind: "Kick"; room: RoomId; user: UserId }
  | { kind: "Ban"; room: RoomId; user: UserId }
  | { kind: "Unban"; room: RoomId; user: UserId }
  | { kind: "SetRole"; room: RoomId; user: UserId; role: Role }
  | { kind: "Members"; room: RoomId; after: UserId | null; limit: number }
  | { kind: "Conversations"; after: ConversationId | null; limit: number }
  | { kind: "Send"; message: SendMessage }
  | { kind: "History"; query: HistoryQuery }
  | { kind: "Mark"; conversation: ConversationId; marker: Marker; seq: Seq }
  | { kind: "Presence"; subscribe: UserId[]; unsubscribe: UserId[] }
  | { kind: "Sync"; resume: Resume }
  | { kind: "Edit"; edit: EditMessage }
  | { kind: "Delete"; delete: DeleteMessage }
  | { kind: "React"; react: ReactMessage };

export type ClientFrame =
  | { kind: "Hello"; hello: Hello }
  | { kind: "Request"; id: RequestId; request: Request }
  | { kind: "Typing"; update: TypingUpdate };

function writeCursor(w: Writer, c: Cursor): void {
  writeConversation(w, c.conversation);
  w.u64(c.seq);
}
function readCursor(r: Reader): Cursor {
  return { conversation: readConversation(r), seq: r.u64() };
}
function writeResume(w: Writer, resume: Resume): void {
  w.vec(resume.cursors, writeCursor);
}
function readResume(r: Reader): Resume {
  return { cursors: r.vec(readCursor) };
}
function writeAuth(w: Writer, auth: Auth): void {
  w.string(auth.token);
  w.option(auth.resume, writeResume);
}
function readAuth(r: Reader): Auth {
  return { token: r.string(), resume: r.option(readResume) };
}

/** The variant indices of the requests that name a room and a user. */
const ROOM_USER = { Invite: 9, Kick: 10, Ban: 11, Unban: 12 } as const;

function writeRequest(w: Writer, req: Request): void {
  const room = (room: RoomId, user: UserId) => {
    w.u64(room);
    w.u64(user);
  };
  switch (req.kind) {
    case "Authenticate":
      w.variant(0);
      writeAuth(w, req.auth);
      break;
    case "Register":
    case "Login":
      w.variant(req.kind === "Register" ? 1 : 2);
      w.string(req.name);
      w.string(req.password);
      break;
    case "Ping":
      w.variant(3);
      break;
    case "LookupUsers":
      w.variant(4);
      w.vec(req.users, (w, u) => {
        if (u.kind === "Id") {
          w.variant(0);
          w.u64(u.user);
        } else {
          w.variant(1);
          w.string(u.name);
        }
      });
      break;
    case "CreateRoom":
      w.variant(5);
      w.string(req.name);
      w.bool(req.inviteOnly);
      break;
    case "FindRoom":
      w.variant(6);
      w.string(req.name);
      break;
    case "JoinRoom":
    case "LeaveRoom":
      w.variant(req.kind === "JoinRoom" ? 7 : 8);
      w.u64(req.room);
      break;
    case "Invite":
    case "Kick":
    case "Ban":
    case "Unban":
      w.variant(ROOM_USER[req.kind]);
      room(req.room, req.user);
      break;
    case "SetRole":
      w.variant(13);
      room(req.room, req.user);
      Role.write(w, req.role);
      break;
    case "Members":
      w.variant(14);
      w.u64(req.room);
      w.option(req.after, u64);
      w.u16(req.limit);
      break;
    case "Conversations":
      w.variant(15);
      w.option(req.after, writeConversation);
      w.u16(req.limit);
      break;
    case "Send": {
      const m = req.message;
      w.variant(16);
      writeConversation(w, m.conversation);
      w.u64(m.op);
      w.u16(m.contentType);
      w.option(m.replyTo, u64);
      w.byteString(m.body);
      w.vec(m.mentions, u64);
      break;
    }
    case "History": {
      const q = req.query;
      w.variant(17);
      writeConversation(w, q.conversation);
      if (q.from.kind === "Latest") {
        w.variant(0);
      } else {
        w.variant(q.from.kind === "Before" ? 1 : 2);
        w.u64(q.from.seq);
      }
      w.u16(q.limit);
      Order.write(w, q.order);
      w.option(q.thread, u64);
      break;
    }
    case "Mark":
      w.variant(18);
      writeConversation(w, req.conversation);
      Marker.write(w, req.marker);
      w.u64(req.seq);
      break;
    case "Presence":
      w.variant(19);
      w.vec(req.subscribe, u64);
      w.vec(req.unsubscribe, u64);
      break;
    case "Sync":
      w.variant(20);
      writeResume(w, req.resume);
      break;
    case "Edit": {
      const e = req.edit;
      w.variant(21);
      writeConversation(w, e.conversation);
      w.u64(e.op);
      w.u64(e.target);
      w.u16(e.contentType);
      w.byteString(e.body);
      break;
    }
    case "Delete":
      w.variant(22);
      writeConversation(w, req.delete.conversation);
      w.u64(req.delete.op);
      w.u64(req.delete.target);
      break;
    case "React": {
      const x = req.react;
      w.variant(23);
      writeConversation(w, x.conversation);
      w.u64(x.op);
      w.u64(x.target);
      w.string(x.reaction);
      w.bool(x.remove);
      break;
    }
  }
}

function readRequest(r: Reader): Request {
  const index = r.variant();
  switch (index) {
    case 0:
      return { kind: "Authenticate", auth: readAuth(r) };
    case 1:
      return { kind: "Register", name: r.string(), password: r.string() };
    case 2:
      return { kind: "Login", name: r.string(), password: r.string() };
    case 3:
      return { kind: "Ping" };
    case 4:
      return {
        kind: "LookupUsers",
        users: r.vec((r): UserRef => {
          const i = r.variant();
          if (i === 0) return { kind: "Id", user: r.u64() };
          if (i === 1) return { kind: "Name", name: r.string() };
          throw unknown("UserRef", i);
        }),
      };
    case 5:
      return { kind: "CreateRoom", name: r.string(), inviteOnly: r.bool() };
    case 6:
      return { kind: "FindRoom", name: r.string() };
    case 7:
      return { kind: "JoinRoom", room: r.u64() };
    case 8:
      return { kind: "LeaveRoom", room: r.u64() };
    case 9:
      return { kind: "Invite", room: r.u64(), user: r.u64() };
    case 10:
      return { kind: "Kick", room: r.u64(), user: r.u64() };
    case 11:
      return { kind: "Ban", room: r.u64(), user: r.u64() };
    case 12:
      return { kind: "Unban", room: r.u64(), user: r.u64() };
    case 13:
      return { kind: "SetRole", room: r.u64(), user: r.u64(), role: Role.read(r) };
    case 14:
      return { kind: "Members", room: r.u64(), after: r.option(readU64), limit: r.u16() };
    case 15:
      return { kind: "Conversations", after: r.option(readConversation), limit: r.u16() };
    case 16:
      return {
        kind: "Send",
        message: {
          conversation: readConversation(r),
          op: r.u64(),
          contentType: r.u16(),
          replyTo: r.option(readU64),
          body: r.byteString(),
          mentions: r.vec(readU64),
        },
      };
    case 17: {
      const conversation = readConversation(r);
      const f = r.variant();
      let from: HistoryFrom;
      if (f === 0) from = { kind: "Latest" };
      else if (f === 1) from = { kind: "Before", seq: r.u64() };
      else if (f === 2) from = { kind: "After", seq: r.u64() };
      else throw unknown("HistoryFrom", f);
      return {
        kind: "History",
        query: { conversation, from, limit: r.u16(), order: Order.read(r), thread: r.option(readU64) },
      };
    }
    case 18:
      return {
        kind: "Mark",
        conversation: readConversation(r),
        marker: Marker.read(r),
        seq: r.u64(),
      };
    case 19:
      return { kind: "Presence", subscribe: r.vec(readU64), unsubscribe: r.vec(readU64) };
    case 20:
      return { kind: "Sync", resume: readResume(r) };
    case 21:
      return {
        kind: "Edit",
        edit: {
          conversation: readConversation(r),
          op: r.u64(),
          target: r.u64(),
          contentType: r.u16(),
          body: r.byteString(),
        },
      };
    case 22:
      return {
        kind: "Delete",
        delete: { conversation: readConversation(r), op: r.u64(), target: r.u64() },
      };
    case 23:
      return {
        kind: "React",
        react: {
          conversation: readConversation(r),
          op: r.u64(),
          target: r.u64(),
          reaction: r.string(),
          remove: r.bool(),
        },
      };
    default:
      throw unknown("Request", index);
  }
}

export function writeClientFrame(w: Writer, frame: ClientFrame): void {
  switch (frame.kind) {
    case "Hello": {
      const h = frame.hello;
      w.variant(0);
      w.u8(h.versions.min);
      w.u8(h.versions.max);
      w.string(h.client);
      w.u64(h.device);
      w.option(h.auth, writeAuth);
      break;
    }
    case "Request":
      w.variant(1);
      w.u32(frame.id);
      writeRequest(w, frame.request);
      break;
    case "Typing":
      w.variant(2);
      writeConversation(w, frame.update.conversation);
      w.bool(frame.update.active);
      break;
  }
}

export function readClientFrame(r: Reader): ClientFrame {
  const index = r.variant();
  switch (index) {
    case 0:
      return {
        kind: "Hello",
        hello: {
          versions: { min: r.u8(), max: r.u8() },
          client: r.string(),
          device: r.u64(),
          auth: r.option(readAuth),
        },
      };
    case 1:
      return { kind: "Request", id: r.u32(), request: readRequest(r) };
    case 2:
      return { kind: "Typing", update: { conversation: readConversation(r), active: r.bool() } };
    default:
      throw unknown("ClientFrame", index);
  }
}

// --- server frames (section 6) -----------------------------------------------------------------

export interface Session {
  user: UserId;
  name: string;
  device: DeviceId;
  expiresAt: Timestamp;
}
export interface Limits {
  maxFrame: number;
  maxBody: number;
  maxPage: number;
  sendRate: number;
  sendBurst: number;
  maxInFlight: number;
  maxRoomsPerUser: number;
  maxRoomMembers: number;
  maxResumeGap: number;
  idleTimeoutMs: number;
  authTimeoutMs: number;
  typingTtlMs: number;
}
export interface HelloOk {
  version: number;
  server: string;
  session: Session | null;
  limits: Limits;
  serverTime: Timestamp;
}
export interface ErrorBody {
  code: ErrorCode;
  reason: string;
  retryAfterMs: number | null;
}
export interface Goodbye {
  code: GoodbyeCode;
  reason: string;
}
export interface TokenGrant {
  user: UserId;
  token: string;
  expiresAt: Timestamp;
}
export interface UserInfo {
  user: UserId;
  name: string;
}
export interface RoomInfo {
  room: RoomId;
  name: string;
  inviteOnly: boolean;
  owner: UserId;
  members: number;
}
export interface Member {
  user: UserId;
  name: string;
  role: Role;
}
export interface MemberPage {
  room: RoomId;
  members: Member[];
  next: UserId | null;
}
export interface ConversationSummary {
  conversation: ConversationId;
  title: string;
  role: Role | null;
  head: Seq;
  delivered: Seq;
  read: Seq;
}
export interface ConversationPage {
  conversations: ConversationSummary[];
  next: ConversationId | null;
}
/** An acknowledged entry's place in the hash chain. */
export interface Appended {
  link: Hash;
  digest: Hash;
}
export interface SendAck {
  conversation: ConversationId;
  op: OpId;
  seq: Seq;
  ts: Timestamp;
  duplicate: boolean;
  chain: Appended | null;
}
/** An entry's place in its conversation's hash chain (section 8.12). */
export interface Chain {
  link: Hash;
  /** The entry's digest, for a deleted message and an erased edit. */
  kept: Hash | null;
}
export interface Reactions {
  reaction: string;
  users: UserId[];
}
export interface Edited {
  versions: Seq[];
  ts: Timestamp;
  contentType: ContentType;
  body: Uint8Array;
}
export interface Deleted {
  seq: Seq;
  ts: Timestamp;
  by: UserId;
}
export interface Message {
  conversation: ConversationId;
  seq: Seq;
  ts: Timestamp;
  sender: UserId;
  op: OpId;
  contentType: ContentType;
  replyTo: Seq | null;
  body: Uint8Array;
  edited: Edited | null;
  deleted: Deleted | null;
  mentions: UserId[];
  reactions: Reactions[];
  chain: Chain;
}
export interface Edit {
  conversation: ConversationId;
  seq: Seq;
  ts: Timestamp;
  sender: UserId;
  op: OpId;
  target: Seq;
  contentType: ContentType;
  body: Uint8Array;
  chain: Chain;
}
export interface Deletion {
  conversation: ConversationId;
  seq: Seq;
  ts: Timestamp;
  actor: UserId;
  op: OpId;
  target: Seq;
  erased: Seq[];
  chain: Chain;
}
export interface Erased {
  conversation: ConversationId;
  seq: Seq;
  target: Seq;
  deletion: Seq;
  chain: Chain;
}
export interface Reaction {
  conversation: ConversationId;
  seq: Seq;
  ts: Timestamp;
  sender: UserId;
  op: OpId;
  target: Seq;
  reaction: string;
  removed: boolean;
  chain: Chain;
}
export type MembershipChange =
  | { kind: "Created"; name: string; inviteOnly: boolean }
  | { kind: "Joined" }
  | { kind: "Left" }
  | { kind: "Invited" }
  | { kind: "Kicked" }
  | { kind: "Banned" }
  | { kind: "Unbanned" }
  | { kind: "RoleChanged"; role: Role };
export interface MembershipEvent {
  conversation: ConversationId;
  seq: Seq;
  ts: Timestamp;
  actor: UserId;
  subject: UserId;
  change: MembershipChange;
  chain: Chain;
}
export type Entry =
  | ({ kind: "Message" } & Message)
  | ({ kind: "Membership" } & MembershipEvent)
  | ({ kind: "Edit" } & Edit)
  | ({ kind: "Deletion" } & Deletion)
  | ({ kind: "Erased" } & Erased)
  | ({ kind: "Reaction" } & Reaction);
export interface HistoryPage {
  conversation: ConversationId;
  entries: Entry[];
  head: Seq;
  more: boolean;
  prior: Hash | null;
}
export type PresenceStatus = "Offline" | "Online";
export const PresenceStatus = unitEnum<PresenceStatus>("PresenceStatus", ["Offline", "Online"]);
export interface PresenceInfo {
  user: UserId;
  status: PresenceStatus;
  lastSeen: Timestamp | null;
}
export interface Receipt {
  conversation: ConversationId;
  user: UserId;
  marker: Marker;
  seq: Seq;
}
export interface TypingEvent {
  conversation: ConversationId;
  user: UserId;
  active: boolean;
  expiresInMs: number;
}
export interface Gap {
  conversation: ConversationId;
  from: Seq;
  to: Seq;
}
export type Response =
  | { kind: "Ok" }
  | { kind: "Session"; session: Session }
  | { kind: "Token"; grant: TokenGrant }
  | { kind: "Pong"; serverTime: Timestamp }
  | { kind: "Users"; users: UserInfo[] }
  | { kind: "Room"; room: RoomInfo }
  | { kind: "Members"; page: MemberPage }
  | { kind: "Conversations"; page: ConversationPage }
  | { kind: "Sent"; ack: SendAck }
  | { kind: "History"; page: HistoryPage }
  | { kind: "Presence"; states: PresenceInfo[] };
/** The events that announce a log entry carry it as `entry`. */
export type Event =
  | { kind: "Entry"; entry: Entry }
  | { kind: "Receipt"; receipt: Receipt }
  | { kind: "Presence"; presence: PresenceInfo }
  | { kind: "Typing"; typing: TypingEvent }
  | { kind: "CaughtUp"; replayed: number }
  | { kind: "Gap"; gap: Gap }
  | { kind: "Lagged" };
export type ServerFrame =
  | { kind: "HelloOk"; hello: HelloOk }
  | { kind: "Response"; id: RequestId; response: Response }
  | { kind: "Error"; id: RequestId | null; error: ErrorBody }
  | { kind: "Event"; event: Event }
  | { kind: "Goodbye"; goodbye: Goodbye };

function writeChain(w: Writer, c: Chain): void {
  hash(w, c.link);
  w.option(c.kept, hash);
}
function readChain(r: Reader): Chain {
  return { link: readHash(r), kept: r.option(readHash) };
}

function writeMembershipChange(w: Writer, c: MembershipChange): void {
  const index = [
    "Created",
    "Joined",
    "Left",
    "Invited",
    "Kicked",
    "Banned",
    "Unbanned",
    "RoleChanged",
  ].indexOf(c.kind);
  w.variant(index);
  if (c.kind === "Created") {
    w.string(c.name);
    w.bool(c.inviteOnly);
  } else if (c.kind === "RoleChanged") {
    Role.write(w, c.role);
  }
}
function readMembershipChange(r: Reader): MembershipChange {
  const index = r.variant();
  switch (index) {
    case 0:
      return { kind: "Created", name: r.string(), inviteOnly: r.bool() };
    case 1:
      return { kind: "Joined" };
    case 2:
      return { kind: "Left" };
    case 3:
      return { kind: "Invited" };
    case 4:
      return { kind: "Kicked" };
    case 5:
      return { kind: "Banned" };
    case 6:
      return { kind: "Unbanned" };
    case 7:
      return { kind: "RoleChanged", role: Role.read(r) };
    default:
      throw unknown("MembershipChange", index);
  }
}

/** The entry's fields, without its variant index (an `Event` and an `Entry` number them
 *  differently). */
function writeEntryFields(w: Writer, e: Entry): void {
  writeConversation(w, e.conversation);
  w.u64(e.seq);
  switch (e.kind) {
    case "Message":
      w.u64(e.ts);
      w.u64(e.sender);
      w.u64(e.op);
      w.u16(e.contentType);
      w.option(e.replyTo, u64);
      w.byteString(e.body);
      w.option(e.edited, (w, ed) => {
        w.vec(ed.versions, u64);
        w.u64(ed.ts);
        w.u16(ed.contentType);
        w.byteString(ed.body);
      });
      w.option(e.deleted, (w, d) => {
        w.u64(d.seq);
        w.u64(d.ts);
        w.u64(d.by);
      });
      w.vec(e.mentions, u64);
      w.vec(e.reactions, (w, x) => {
        w.string(x.reaction);
        w.vec(x.users, u64);
      });
      break;
    case "Membership":
      w.u64(e.ts);
      w.u64(e.actor);
      w.u64(e.subject);
      writeMembershipChange(w, e.change);
      break;
    case "Edit":
      w.u64(e.ts);
      w.u64(e.sender);
      w.u64(e.op);
      w.u64(e.target);
      w.u16(e.contentType);
      w.byteString(e.body);
      break;
    case "Deletion":
      w.u64(e.ts);
      w.u64(e.actor);
      w.u64(e.op);
      w.u64(e.target);
      w.vec(e.erased, u64);
      break;
    case "Erased":
      w.u64(e.target);
      w.u64(e.deletion);
      break;
    case "Reaction":
      w.u64(e.ts);
      w.u64(e.sender);
      w.u64(e.op);
      w.u64(e.target);
      w.string(e.reaction);
      w.bool(e.removed);
      break;
  }
  writeChain(w, e.chain);
}

type EntryKind = Entry["kind"];

function readEntryFields(r: Reader, kind: EntryKind): Entry {
  const conversation = readConversation(r);
  const seq = r.u64();
  switch (kind) {
    case "Message":
      return {
        kind,
        conversation,
        seq,
        ts: r.u64(),
        sender: r.u64(),
        op: r.u64(),
        contentType: r.u16(),
        replyTo: r.option(readU64),
        body: r.byteString(),
        edited: r.option((r) => ({
          versions: r.vec(readU64),
          ts: r.u64(),
          contentType: r.u16(),
          body: r.byteString(),
        })),
        deleted: r.option((r) => ({ seq: r.u64(), ts: r.u64(), by: r.u64() })),
        mentions: r.vec(readU64),
        reactions: r.vec((r) => ({ reaction: r.string(), users: r.vec(readU64) })),
        chain: readChain(r),
      };
    case "Membership":
      return {
        kind,
        conversation,
        seq,
        ts: r.u64(),
        actor: r.u64(),
        subject: r.u64(),
        change: readMembershipChange(r),
        chain: readChain(r),
      };
    case "Edit":
      return {
        kind,
        conversation,
        seq,
        ts: r.u64(),
        sender: r.u64(),
        op: r.u64(),
        target: r.u64(),
        contentType: r.u16(),
        body: r.byteString(),
        chain: readChain(r),
      };
    case "Deletion":
      return {
        kind,
        conversation,
        seq,
        ts: r.u64(),
        actor: r.u64(),
        op: r.u64(),
        target: r.u64(),
        erased: r.vec(readU64),
        chain: readChain(r),
      };
    case "Erased":
      return { kind, conversation, seq, target: r.u64(), deletion: r.u64(), chain: readChain(r) };
    case "Reaction":
      return {
        kind,
        conversation,
        seq,
        ts: r.u64(),
        sender: r.u64(),
        op: r.u64(),
        target: r.u64(),
        reaction: r.string(),
        removed: r.bool(),
        chain: readChain(r),
      };
  }
}

/** `Entry`'s variant indices. */
const ENTRY_KINDS: readonly EntryKind[] = [
  "Message",
  "Membership",
  "Edit",
  "Deletion",
  "Erased",
  "Reaction",
];
/** `Event`'s variant index of each entry kind. */
const EVENT_INDEX: Record<EntryKind, number> = {
  Message: 0,
  Membership: 1,
  Edit: 8,
  Deletion: 9,
  Erased: 10,
  Reaction: 11,
};

export function writeEntry(w: Writer, e: Entry): void {
  w.variant(ENTRY_KINDS.indexOf(e.kind));
  writeEntryFields(w, e);
}

export function readEntry(r: Reader): Entry {
  const index = r.variant();
  const kind = ENTRY_KINDS[index];
  if (kind === undefined) throw unknown("Entry", index);
  return readEntryFields(r, kind);
}

function writeSession(w: Writer, s: Session): void {
  w.u64(s.user);
  w.string(s.name);
  w.u64(s.device);
  w.u64(s.expiresAt);
}
function readSession(r: Reader): Session {
  return { user: r.u64(), name: r.string(), device: r.u64(), expiresAt: r.u64() };
}
function writePresence(w: Writer, p: PresenceInfo): void {
  w.u64(p.user);
  PresenceStatus.write(w, p.status);
  w.option(p.lastSeen, u64);
}
function readPresence(r: Reader): PresenceInfo {
  return { user: r.u64(), status: PresenceStatus.read(r), lastSeen: r.option(readU64) };
}

const LIMIT_FIELDS = [
  "maxFrame",
  "maxBody",
  "maxPage",
  "sendRate",
  "sendBurst",
  "maxInFlight",
  "maxRoomsPerUser",
  "maxRoomMembers",
  "maxResumeGap",
  "idleTimeoutMs",
  "authTimeoutMs",
  "typingTtlMs",
] as const;

function writeResponse(w: Writer, resp: Response): void {
  switch (resp.kind) {
    case "Ok":
      w.variant(0);
      break;
    case "Session":
      w.variant(1);
      writeSession(w, resp.session);
      break;
    case "Token":
      w.variant(2);
      w.u64(resp.grant.user);
      w.string(resp.grant.token);
      w.u64(resp.grant.expiresAt);
      break;
    case "Pong":
      w.variant(3);
      w.u64(resp.serverTime);
      break;
    case "Users":
      w.variant(4);
      w.vec(resp.users, (w, u) => {
        w.u64(u.user);
        w.string(u.name);
      });
      break;
    case "Room":
      w.variant(5);
      w.u64(resp.room.room);
      w.string(resp.room.name);
      w.bool(resp.room.inviteOnly);
      w.u64(resp.room.owner);
      w.u32(resp.room.members);
      break;
    case "Members":
      w.variant(6);
      w.u64(resp.page.room);
      w.vec(resp.page.members, (w, m) => {
        w.u64(m.user);
        w.string(m.name);
        Role.write(w, m.role);
      });
      w.option(resp.page.next, u64);
      break;
    case "Conversations":
      w.variant(7);
      w.vec(resp.page.conversations, (w, c) => {
        writeConversation(w, c.conversation);
        w.string(c.title);
        w.option(c.role, Role.write);
        w.u64(c.head);
        w.u64(c.delivered);
        w.u64(c.read);
      });
      w.option(resp.page.next, writeConversation);
      break;
    case "Sent": {
      const a = resp.ack;
      w.variant(8);
      writeConversation(w, a.conversation);
      w.u64(a.op);
      w.u64(a.seq);
      w.u64(a.ts);
      w.bool(a.duplicate);
      w.option(a.chain, (w, c) => {
        hash(w, c.link);
        hash(w, c.digest);
      });
      break;
    }
    case "History": {
      const p = resp.page;
      w.variant(9);
      writeConversation(w, p.conversation);
      w.vec(p.entries, writeEntry);
      w.u64(p.head);
      w.bool(p.more);
      w.option(p.prior, hash);
      break;
    }
    case "Presence":
      w.variant(10);
      w.vec(resp.states, writePresence);
      break;
  }
}

function readResponse(r: Reader): Response {
  const index = r.variant();
  switch (index) {
    case 0:
      return { kind: "Ok" };
    case 1:
      return { kind: "Session", session: readSession(r) };
    case 2:
      return { kind: "Token", grant: { user: r.u64(), token: r.string(), expiresAt: r.u64() } };
    case 3:
      return { kind: "Pong", serverTime: r.u64() };
    case 4:
      return { kind: "Users", users: r.vec((r) => ({ user: r.u64(), name: r.string() })) };
    case 5:
      return {
        kind: "Room",
        room: {
          room: r.u64(),
          name: r.string(),
          inviteOnly: r.bool(),
          owner: r.u64(),
          members: r.u32(),
        },
      };
    case 6:
      return {
        kind: "Members",
        page: {
          room: r.u64(),
          members: r.vec((r) => ({ user: r.u64(), name: r.string(), role: Role.read(r) })),
          next: r.option(readU64),
        },
      };
    case 7:
      return {
        kind: "Conversations",
        page: {
          conversations: r.vec((r) => ({
            conversation: readConversation(r),
            title: r.string(),
            role: r.option(Role.read),
            head: r.u64(),
            delivered: r.u64(),
            read: r.u64(),
          })),
          next: r.option(readConversation),
        },
      };
    case 8:
      return {
        kind: "Sent",
        ack: {
          conversation: readConversation(r),
          op: r.u64(),
          seq: r.u64(),
          ts: r.u64(),
          duplicate: r.bool(),
          chain: r.option((r) => ({ link: readHash(r), digest: readHash(r) })),
        },
      };
    case 9:
      return {
        kind: "History",
        page: {
          conversation: readConversation(r),
          entries: r.vec(readEntry),
          head: r.u64(),
          more: r.bool(),
          prior: r.option(readHash),
        },
      };
    case 10:
      return { kind: "Presence", states: r.vec(readPresence) };
    default:
      throw unknown("Response", index);
  }
}

function writeEvent(w: Writer, e: Event): void {
  switch (e.kind) {
    case "Entry":
      w.variant(EVENT_INDEX[e.entry.kind]);
      writeEntryFields(w, e.entry);
      break;
    case "Receipt":
      w.variant(2);
      writeConversation(w, e.receipt.conversation);
      w.u64(e.receipt.user);
      Marker.write(w, e.receipt.marker);
      w.u64(e.receipt.seq);
      break;
    case "Presence":
      w.variant(3);
      writePresence(w, e.presence);
      break;
    case "Typing":
      w.variant(4);
      writeConversation(w, e.typing.conversation);
      w.u64(e.typing.user);
      w.bool(e.typing.active);
      w.u32(e.typing.expiresInMs);
      break;
    case "CaughtUp":
      w.variant(5);
      w.u32(e.replayed);
      break;
    case "Gap":
      w.variant(6);
      writeConversation(w, e.gap.conversation);
      w.u64(e.gap.from);
      w.u64(e.gap.to);
      break;
    case "Lagged":
      w.variant(7);
      break;
  }
}

function readEvent(r: Reader): Event {
  const index = r.variant();
  const entry = (Object.keys(EVENT_INDEX) as EntryKind[]).find((k) => EVENT_INDEX[k] === index);
  if (entry !== undefined) return { kind: "Entry", entry: readEntryFields(r, entry) };
  switch (index) {
    case 2:
      return {
        kind: "Receipt",
        receipt: {
          conversation: readConversation(r),
          user: r.u64(),
          marker: Marker.read(r),
          seq: r.u64(),
        },
      };
    case 3:
      return { kind: "Presence", presence: readPresence(r) };
    case 4:
      return {
        kind: "Typing",
        typing: {
          conversation: readConversation(r),
          user: r.u64(),
          active: r.bool(),
          expiresInMs: r.u32(),
        },
      };
    case 5:
      return { kind: "CaughtUp", replayed: r.u32() };
    case 6:
      return { kind: "Gap", gap: { conversation: readConversation(r), from: r.u64(), to: r.u64() } };
    case 7:
      return { kind: "Lagged" };
    default:
      throw unknown("Event", index);
  }
}

export function writeServerFrame(w: Writer, frame: ServerFrame): void {
  switch (frame.kind) {
    case "HelloOk": {
      const h = frame.hello;
      w.variant(0);
      w.u8(h.version);
      w.string(h.server);
      w.option(h.session, writeSession);
      for (const field of LIMIT_FIELDS) {
        if (field === "maxPage") w.u16(h.limits[field]);
        else w.u32(h.limits[field]);
      }
      w.u64(h.serverTime);
      break;
    }
    case "Response":
      w.variant(1);
      w.u32(frame.id);
      writeResponse(w, frame.response);
      break;
    case "Error":
      w.variant(2);
      w.option(frame.id, (w, id) => w.u32(id));
      w.u16(frame.error.code);
      w.string(frame.error.reason);
      w.option(frame.error.retryAfterMs, (w, ms) => w.u32(ms));
      break;
    case "Event":
      w.variant(3);
      writeEvent(w, frame.event);
      break;
    case "Goodbye":
      w.variant(4);
      w.u16(frame.goodbye.code);
      w.string(frame.goodbye.reason);
      break;
  }
}

export function readServerFrame(r: Reader): ServerFrame {
  const index = r.variant();
  switch (index) {
    case 0: {
      const version = r.u8();
      const server = r.string();
      const session = r.option(readSession);
      const limits = {} as Limits;
      for (const field of LIMIT_FIELDS) limits[field] = field === "maxPage" ? r.u16() : r.u32();
      return { kind: "HelloOk", hello: { version, server, session, limits, serverTime: r.u64() } };
    }
    case 1:
      return { kind: "Response", id: r.u32(), response: readResponse(r) };
    case 2:
      return {
        kind: "Error",
        id: r.option((r) => r.u32()),
        error: { code: r.u16(), reason: r.string(), retryAfterMs: r.option((r) => r.u32()) },
      };
    case 3:
      return { kind: "Event", event: readEvent(r) };
    case 4:
      return { kind: "Goodbye", goodbye: { code: r.u16(), reason: r.string() } };
    default:
      throw unknown("ServerFrame", index);
  }
}
