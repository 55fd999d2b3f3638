// chatd's web app: log in or register, the conversations with their unread counts, rooms
// (create, join), direct messages, history with scroll-back, live messages, typing, presence
// and read receipts; the session reconnects and resumes by itself (@chatd/client), and the
// cursors it resumes from are kept in localStorage, so a reload misses nothing either.

import {
  ChatError,
  Client,
  type ConversationId,
  type ConversationSummary,
  type Cursor,
  type Entry,
  type Event,
  type Message,
  type Response,
  type Session,
  type Status,
  type Tip,
  chain,
  conversationName,
  direct,
  webTransport,
} from "../../clients/ts/src/index.js";
import { $, h, clear, hex, randomU64, fromText, toText, time } from "./dom.js";

const connect = webTransport("/webtransport.json");
const TYPING_EVERY_MS = 3_000;
const PAGE = 50;

interface Stored {
  name: string;
  token: string;
}

/** One conversation as the app shows it. */
interface Conversation {
  id: ConversationId;
  key: string;
  title: string;
  head: bigint;
  read: bigint;
  /** Messages and membership lines by seq, once the conversation was opened. */
  entries: Map<bigint, Entry> | null;
  /** The lowest seq loaded; 1 or less: the start is loaded. */
  lowest: bigint;
  typing: Map<bigint, number>;
  /** Other members' read markers (direct conversations: the other user's). */
  readBy: Map<bigint, bigint>;
  /** The other user of a direct conversation. */
  peer: bigint | null;
}

class App {
  private client: Client | null = null;
  private me: Session | null = null;
  private readonly conversations = new Map<string, Conversation>();
  private readonly names = new Map<bigint, string>();
  private readonly presence = new Map<bigint, string>();
  private open: Conversation | null = null;
  private lastTyping = 0;
  private loadingOlder = false;

  constructor(private readonly root: HTMLElement) {}

  start(): void {
    const stored = localStorage.getItem("chatd.login");
    if (stored) void this.enter(JSON.parse(stored) as Stored);
    else this.loginView("");
  }

  // --- log in -------------------------------------------------------------------------------

  private loginView(message: string): void {
    const name = h("input", { id: "name", placeholder: "name", autocomplete: "username" });
    const password = h("input", {
      id: "password",
      type: "password",
      placeholder: "password (8 or more characters)",
      autocomplete: "current-password",
    });
    const error = h("p", { class: "error", id: "login-error" }, message);
    const go = (kind: "Login" | "Register") => async (e: MouseEvent) => {
      e.preventDefault();
      error.textContent = "";
      try {
        const token = await this.anonymous(kind, name.value.trim(), password.value);
        const stored = { name: name.value.trim(), token };
        localStorage.setItem("chatd.login", JSON.stringify(stored));
        await this.enter(stored);
      } catch (err) {
        error.textContent = err instanceof ChatError ? err.reason || err.message : String(err);
      }
    };
    clear(this.root).append(
      h(
        "form",
        { class: "login", id: "login" },
        h("h1", {}, "chatd"),
        name,
        password,
        h("div", { class: "row" }, button("Log in", "login-button", go("Login")), button("Register", "register-button", go("Register"))),
        error,
      ),
    );
    name.focus();
  }

  /** Registers or logs in on an anonymous connection; returns the token. */
  private async anonymous(kind: "Login" | "Register", name: string, password: string): Promise<string> {
    const anon = new Client({ connect, token: () => null, device: randomU64(), reconnect: false });
    try {
      await anon.start();
      const response = await anon.request({ kind, name, password });
      if (response.kind !== "Token") throw new Error(`unexpected answer ${response.kind}`);
      return response.grant.token;
    } finally {
      anon.close();
    }
  }

  // --- the session --------------------------------------------------------------------------

  private async enter(stored: Stored): Promise<void> {
    const cursorsKey = `chatd.cursors.${stored.name}`;
    const tipsKey = `chatd.tips.${stored.name}`;
    const cursors = parseCursors(localStorage.getItem(cursorsKey));
    // One device per tab, kept across reloads of the tab.
    let device = sessionStorage.getItem("chatd.device");
    if (!device) {
      device = randomU64().toString();
      sessionStorage.setItem("chatd.device", device);
    }
    this.mainView(stored.name);
    const client = new Client({
      connect,
      token: () => stored.token,
      device: BigInt(device),
      client: "chatd web",
      cursors,
      tips: parseTips(localStorage.getItem(tipsKey)),
      onEvent: (event) => {
        this.event(event);
        localStorage.setItem(cursorsKey, formatCursors(client.cursors()));
        void client.chainTips().then((tips) => {
          localStorage.setItem(tipsKey, formatTips(tips));
          const r = client.chainReport();
          $("#status").title = `hash chains: ${r.verified} entries verified, ${r.anchored} taken on trust, ${r.breaks} broken`;
        });
      },
      onChainBreak: (broken) => {
        const c = this.conversations.get(conversationName(broken.conversation));
        this.notice(`the history of ${c?.title ?? conversationName(broken.conversation)} breaks its hash chain at #${broken.seq} (${broken.rule})`);
      },
      onStatus: (status) => this.status(status),
    });
    this.client = client;
    try {
      await client.start();
    } catch (err) {
      localStorage.removeItem("chatd.login");
      this.loginView(err instanceof ChatError ? `${err.reason || err.message}: log in again` : String(err));
    }
  }

  private status(status: Status): void {
    const line = $("#status");
    if (status.kind === "online") {
      this.me = status.session;
      if (this.me) this.names.set(this.me.user, this.me.name);
      line.textContent = "online";
      line.className = "status online";
      void this.loadConversations();
    } else if (status.kind === "connecting") {
      line.textContent = status.attempt > 1 ? `reconnecting (attempt ${status.attempt})` : "connecting";
      line.className = "status offline";
    } else {
      line.textContent = status.goodbye ? `closed: ${status.goodbye.reason}` : "closed";
      line.className = "status offline";
      if (status.error) {
        localStorage.removeItem("chatd.login");
        this.loginView(`${status.error.reason || status.error.message}: log in again`);
      }
    }
  }

  private request(request: Parameters<Client["request"]>[0]): Promise<Response> {
    if (!this.client) return Promise.reject(new Error("not connected"));
    return this.client.request(request);
  }

  private mainView(name: string): void {
    const field = (id: string, placeholder: string, action: (value: string) => Promise<void>) => {
      const input = h("input", { id, placeholder });
      return h(
        "form",
        {
          class: "action",
          onsubmit: (e: SubmitEvent) => {
            e.preventDefault();
            const value = input.value.trim();
            if (!value) return;
            action(value).then(
              () => (input.value = ""),
              (err) => this.notice(err instanceof ChatError ? err.reason || err.message : String(err)),
            );
          },
        },
        input,
      );
    };
    const composer = h("textarea", { id: "composer", placeholder: "Write a message", rows: "2" });
    composer.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        void this.send(composer);
      }
    });
    composer.addEventListener("input", () => this.typing(composer.value.length > 0));
    const history = h("div", { id: "history", class: "history" });
    history.addEventListener("scroll", () => {
      if (history.scrollTop < 40) void this.older();
    });
    clear(this.root).append(
      h(
        "div",
        { class: "layout" },
        h(
          "aside",
          {},
          h(
            "header",
            {},
            h("strong", { id: "me" }, name),
            h("span", { id: "status", class: "status offline" }, "connecting"),
            button("Log out", "logout", () => this.logout()),
          ),
          field("new-room", "new room", (v) => this.createRoom(v)),
          field("join-room", "join room", (v) => this.joinRoom(v)),
          field("new-dm", "message a user", (v) => this.openDirect(v)),
          h("ul", { id: "conversations" }),
          h("p", { id: "notice", class: "notice" }),
        ),
        h(
          "section",
          { class: "chat" },
          h(
            "header",
            {},
            h("strong", { id: "title" }, "No conversation"),
            h("span", { id: "presence" }),
            h("span", { id: "verified", class: "verified" }),
            button("Verify", "verify", () => void this.verify()),
          ),
          history,
          h("div", { id: "typing", class: "typing" }),
          h(
            "form",
            {
              class: "composer",
              onsubmit: (e: SubmitEvent) => {
                e.preventDefault();
                void this.send(composer);
              },
            },
            composer,
            h("button", { id: "send", type: "submit" }, "Send"),
          ),
        ),
      ),
    );
  }

  private notice(text: string): void {
    $("#notice").textContent = text;
  }

  private logout(): void {
    this.client?.close();
    this.client = null;
    localStorage.removeItem("chatd.login");
    this.conversations.clear();
    this.open = null;
    this.loginView("");
  }

  // --- conversations ------------------------------------------------------------------------

  private async loadConversations(): Promise<void> {
    let after: ConversationId | null = null;
    for (;;) {
      const response = await this.request({ kind: "Conversations", after, limit: 100 });
      if (response.kind !== "Conversations") return;
      for (const summary of response.page.conversations) this.summary(summary);
      after = response.page.next;
      if (after === null) break;
    }
    this.renderList();
    if (this.open) await this.reload(this.open);
  }

  private summary(s: ConversationSummary): Conversation {
    const key = conversationName(s.conversation);
    let c = this.conversations.get(key);
    if (!c) {
      const peer = this.peerOf(s.conversation);
      c = { id: s.conversation, key, title: s.title, head: s.head, read: s.read, entries: null, lowest: 0n, typing: new Map(), readBy: new Map(), peer };
      this.conversations.set(key, c);
      if (peer !== null) void this.follow(peer);
    }
    c.title = s.title;
    if (s.head > c.head) c.head = s.head;
    if (s.read > c.read) c.read = s.read;
    return c;
  }

  private peerOf(id: ConversationId): bigint | null {
    if (id.kind !== "Direct" || !this.me) return null;
    return id.low === this.me.user ? id.high : id.low;
  }

  private async follow(user: bigint): Promise<void> {
    const response = await this.request({ kind: "Presence", subscribe: [user], unsubscribe: [] });
    if (response.kind === "Presence") for (const p of response.states) this.presence.set(p.user, p.status);
    this.renderList();
    this.renderHeader();
  }

  private renderList(): void {
    const list = $("#conversations");
    const sorted = [...this.conversations.values()].sort((a, b) => a.title.localeCompare(b.title));
    clear(list).append(
      ...sorted.map((c) => {
        const unread = c.head > c.read ? Number(c.head - c.read) : 0;
        const dot = c.peer !== null ? h("span", { class: `dot ${this.presence.get(c.peer) === "Online" ? "on" : ""}` }) : "";
        return h(
          "li",
          {
            class: c === this.open ? "selected" : "",
            "data-key": c.key,
            "data-title": c.title,
            onclick: () => void this.select(c),
          },
          dot,
          h("span", { class: "title" }, c.title),
          unread > 0 ? h("span", { class: "unread" }, String(unread)) : "",
        );
      }),
    );
  }

  private async createRoom(name: string): Promise<void> {
    const response = await this.request({ kind: "CreateRoom", name, inviteOnly: false });
    if (response.kind === "Room") await this.afterJoin(response.room.room);
  }

  private async joinRoom(name: string): Promise<void> {
    const found = await this.request({ kind: "FindRoom", name: name.replace(/^(room:|#)/, "") });
    if (found.kind !== "Room") return;
    try {
      await this.request({ kind: "JoinRoom", room: found.room.room });
    } catch (err) {
      if (!(err instanceof ChatError && err.reason.includes("already"))) throw err;
    }
    await this.afterJoin(found.room.room);
  }

  private async afterJoin(room: bigint): Promise<void> {
    await this.loadConversations();
    const c = this.conversations.get(conversationName({ kind: "Room", room }));
    if (c) await this.select(c);
  }

  private async openDirect(name: string): Promise<void> {
    const response = await this.request({ kind: "LookupUsers", users: [{ kind: "Name", name }] });
    const user = response.kind === "Users" ? response.users[0] : undefined;
    if (!user || !this.me) throw new Error(`no user ${name}`);
    this.names.set(user.user, user.name);
    const id = direct(this.me.user, user.user);
    const c = this.summary({ conversation: id, title: user.name, role: null, head: 0n, delivered: 0n, read: 0n });
    this.renderList();
    await this.select(c);
  }

  private async select(c: Conversation): Promise<void> {
    this.open = c;
    $("#verified").textContent = "";
    this.renderList();
    this.renderHeader();
    await this.reload(c);
    ($("#composer") as HTMLTextAreaElement).focus();
  }

  /** Loads the newest page of `c` (again). */
  private async reload(c: Conversation): Promise<void> {
    const response = await this.request({
      kind: "History",
      query: { conversation: c.id, from: { kind: "Latest" }, limit: PAGE, order: "OldestFirst", thread: null },
    }).catch(() => null);
    if (!response || response.kind !== "History") return;
    c.entries = new Map();
    for (const e of response.page.entries) c.entries.set(e.seq, e);
    c.lowest = response.page.entries[0]?.seq ?? response.page.head + 1n;
    if (!response.page.more) c.lowest = 1n;
    if (response.page.head > c.head) c.head = response.page.head;
    await this.names_of(response.page.entries);
    if (this.open === c) {
      this.renderHistory(true);
      this.markRead(c);
    }
  }

  /** Scroll-back: the page before the lowest entry loaded. */
  private async older(): Promise<void> {
    const c = this.open;
    if (!c || !c.entries || c.lowest <= 1n || this.loadingOlder) return;
    this.loadingOlder = true;
    try {
      const response = await this.request({
        kind: "History",
        query: { conversation: c.id, from: { kind: "Before", seq: c.lowest }, limit: PAGE, order: "OldestFirst", thread: null },
      });
      if (response.kind !== "History") return;
      for (const e of response.page.entries) c.entries.set(e.seq, e);
      c.lowest = response.page.more ? (response.page.entries[0]?.seq ?? 1n) : 1n;
      await this.names_of(response.page.entries);
      const history = $("#history");
      const before = history.scrollHeight;
      this.renderHistory(false);
      history.scrollTop += history.scrollHeight - before;
    } finally {
      this.loadingOlder = false;
    }
  }

  private async names_of(entries: Entry[]): Promise<void> {
    const unknown = new Set<bigint>();
    for (const e of entries) {
      const who = e.kind === "Message" || e.kind === "Edit" || e.kind === "Reaction" ? e.sender : e.kind === "Membership" ? e.subject : null;
      if (who !== null && who !== 0n && !this.names.has(who)) unknown.add(who);
    }
    if (unknown.size === 0) return;
    const response = await this.request({ kind: "LookupUsers", users: [...unknown].map((user) => ({ kind: "Id", user })) });
    if (response.kind === "Users") for (const u of response.users) this.names.set(u.user, u.name);
  }

  private name(user: bigint): string {
    return user === 0n ? "an operator" : (this.names.get(user) ?? `user${user}`);
  }

  private markRead(c: Conversation): void {
    if (c.head <= c.read || document.hidden) return;
    c.read = c.head;
    void this.request({ kind: "Mark", conversation: c.id, marker: "Read", seq: c.head }).catch(() => {});
    this.renderList();
  }

  /** Reads the open conversation's whole history and checks it against its hash chain
   *  (docs/PROTOCOL.md 8.12), as `chat verify` does: members shown the same link for the
   *  same entry were given the same history. */
  private async verify(): Promise<void> {
    const c = this.open;
    if (!c) return;
    const line = $("#verified");
    line.className = "verified";
    line.textContent = "verifying…";
    try {
      const verifier = await chain.Verifier.start(c.id);
      let entries = 0;
      for (;;) {
        const response = await this.request({
          kind: "History",
          query: { conversation: c.id, from: { kind: "After", seq: verifier.head.seq }, limit: 100, order: "OldestFirst", thread: null },
        });
        if (response.kind !== "History") return;
        for (const entry of response.page.entries) {
          await verifier.check(entry);
          entries += 1;
        }
        if (!response.page.more || response.page.entries.length === 0) break;
      }
      const { seq, link } = verifier.head;
      const full = hex(link);
      line.textContent = `${entries} entries follow the hash chain; #${seq} has link ${full.slice(0, 12)}…`;
      line.title = full;
    } catch (err) {
      line.className = "verified broken";
      line.textContent =
        err instanceof chain.ChainError ? `the history breaks its hash chain at #${err.seq}: ${err.message}` : String(err);
    }
  }

  // --- events -------------------------------------------------------------------------------

  private event(event: Event): void {
    switch (event.kind) {
      case "Entry":
        void this.entry(event.entry);
        break;
      case "Typing": {
        const c = this.conversations.get(conversationName(event.typing.conversation));
        if (!c || event.typing.user === this.me?.user) return;
        if (event.typing.active) c.typing.set(event.typing.user, Date.now() + event.typing.expiresInMs);
        else c.typing.delete(event.typing.user);
        this.renderTyping();
        setTimeout(() => this.renderTyping(), event.typing.expiresInMs + 50);
        break;
      }
      case "Presence":
        this.presence.set(event.presence.user, event.presence.status);
        this.renderList();
        this.renderHeader();
        break;
      case "Receipt": {
        const c = this.conversations.get(conversationName(event.receipt.conversation));
        if (!c || event.receipt.marker !== "Read") return;
        if (event.receipt.user === this.me?.user) {
          if (event.receipt.seq > c.read) c.read = event.receipt.seq;
          this.renderList();
        } else {
          c.readBy.set(event.receipt.user, event.receipt.seq);
          if (c === this.open) this.renderHistory(false);
        }
        break;
      }
      case "Gap": {
        // Entries beyond the replay limit: the open conversation's newest page is read again.
        const c = this.conversations.get(conversationName(event.gap.conversation));
        if (c && c === this.open) void this.reload(c);
        break;
      }
      case "CaughtUp":
      case "Lagged":
        break;
    }
  }

  private async entry(entry: Entry): Promise<void> {
    const key = conversationName(entry.conversation);
    let c = this.conversations.get(key);
    if (!c) {
      await this.loadConversations();
      c = this.conversations.get(key);
      if (!c) return;
    }
    if (entry.seq > c.head) c.head = entry.seq;
    if (entry.kind === "Message") c.typing.delete(entry.sender);
    if (c.entries) {
      await this.names_of([entry]);
      this.apply(c, entry);
    }
    if (c === this.open) {
      this.renderHistory(false);
      this.renderTyping();
      this.markRead(c);
    }
    this.renderList();
  }

  /** Adds `entry` to `c`, and applies an edit, a deletion or a reaction to its target. */
  private apply(c: Conversation, entry: Entry): void {
    const entries = c.entries;
    if (!entries) return;
    entries.set(entry.seq, entry);
    const target = "target" in entry ? entries.get(entry.target) : undefined;
    if (!target || target.kind !== "Message") return;
    if (entry.kind === "Edit") {
      target.edited = { versions: [], ts: entry.ts, contentType: entry.contentType, body: entry.body };
    } else if (entry.kind === "Deletion") {
      target.deleted = { seq: entry.seq, ts: entry.ts, by: entry.actor };
    } else if (entry.kind === "Reaction") {
      const r = target.reactions.find((x) => x.reaction === entry.reaction) ?? { reaction: entry.reaction, users: [] };
      if (!target.reactions.includes(r)) target.reactions.push(r);
      r.users = entry.removed ? r.users.filter((u) => u !== entry.sender) : [...r.users.filter((u) => u !== entry.sender), entry.sender];
      target.reactions = target.reactions.filter((x) => x.users.length > 0);
    }
  }

  // --- sending ------------------------------------------------------------------------------

  private async send(composer: HTMLTextAreaElement): Promise<void> {
    const c = this.open;
    const text = composer.value.trim();
    if (!c || !text || !this.me) return;
    composer.value = "";
    this.typing(false);
    const op = randomU64();
    try {
      const response = await this.request({
        kind: "Send",
        message: { conversation: c.id, op, contentType: 0, replyTo: null, body: fromText(text), mentions: [] },
      });
      if (response.kind !== "Sent") return;
      const ack = response.ack;
      const message: Message = {
        conversation: c.id,
        seq: ack.seq,
        ts: ack.ts,
        sender: this.me.user,
        op,
        contentType: 0,
        replyTo: null,
        body: fromText(text),
        edited: null,
        deleted: null,
        mentions: [],
        reactions: [],
        chain: { link: ack.chain?.link ?? new Uint8Array(32), kept: null },
      };
      if (ack.seq > c.head) c.head = ack.seq;
      if (ack.seq > c.read) c.read = ack.seq;
      this.apply(c, { kind: "Message", ...message });
      if (c === this.open) this.renderHistory(true);
      this.renderList();
    } catch (err) {
      composer.value = text;
      this.notice(err instanceof ChatError ? err.reason || err.message : String(err));
    }
  }

  private typing(active: boolean): void {
    const c = this.open;
    if (!c || !this.client) return;
    const now = Date.now();
    if (active && now - this.lastTyping < TYPING_EVERY_MS) return;
    this.lastTyping = active ? now : 0;
    this.client.typing(c.id, active);
  }

  // --- rendering ----------------------------------------------------------------------------

  private renderHeader(): void {
    const c = this.open;
    $("#title").textContent = c ? c.title : "No conversation";
    const presence = $("#presence");
    presence.textContent = c && c.peer !== null ? (this.presence.get(c.peer) === "Online" ? "online" : "offline") : "";
  }

  private renderTyping(): void {
    const c = this.open;
    const now = Date.now();
    const who = c ? [...c.typing].filter(([, until]) => until > now).map(([user]) => this.name(user)) : [];
    $("#typing").textContent = who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
  }

  private renderHistory(toBottom: boolean): void {
    const c = this.open;
    const history = $("#history");
    const atBottom = history.scrollHeight - history.scrollTop - history.clientHeight < 40;
    if (!c || !c.entries) return void clear(history);
    const seqs = [...c.entries.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const readers = new Map<bigint, string[]>();
    for (const [user, seq] of c.readBy) {
      const at = seqs.filter((s) => s <= seq).pop();
      if (at !== undefined) readers.set(at, [...(readers.get(at) ?? []), this.name(user)]);
    }
    clear(history).append(
      c.lowest <= 1n ? h("p", { class: "start" }, "the beginning of the conversation") : "",
      ...seqs.flatMap((seq) => {
        const e = c.entries?.get(seq) as Entry;
        const line = this.line(e);
        const seen = readers.get(seq);
        return line ? [line, ...(seen ? [h("p", { class: "seen" }, `✓ read by ${seen.join(", ")}`)] : [])] : [];
      }),
    );
    if (toBottom || atBottom) history.scrollTop = history.scrollHeight;
  }

  private line(e: Entry): HTMLElement | null {
    switch (e.kind) {
      case "Message": {
        const mine = e.sender === this.me?.user;
        const body = e.deleted ? h("em", {}, "message deleted") : toText(e.edited?.body ?? e.body);
        return h(
          "div",
          { class: `message ${mine ? "mine" : ""}`, "data-seq": String(e.seq) },
          h("span", { class: "sender" }, this.name(e.sender)),
          h("span", { class: "body" }, body),
          e.edited && !e.deleted ? h("span", { class: "meta" }, " (edited)") : "",
          h("time", { class: "meta" }, time(e.ts)),
          ...e.reactions.map((r) => h("span", { class: "reaction" }, `${r.reaction} ${r.users.length}`)),
        );
      }
      case "Membership": {
        const what: Record<string, string> = {
          Created: "created the room",
          Joined: "joined",
          Left: "left",
          Invited: "was invited",
          Kicked: "was removed",
          Banned: "was banned",
          Unbanned: "was unbanned",
          RoleChanged: "changed role",
        };
        return h(
          "p",
          { class: "system", "data-seq": String(e.seq) },
          `${this.name(e.subject)} ${what[e.change.kind] ?? e.change.kind}`,
        );
      }
      default:
        return null;
    }
  }
}

function button(label: string, id: string, onclick: (e: MouseEvent) => void): HTMLButtonElement {
  return h("button", { id, type: "button", onclick }, label);
}

function parseCursors(text: string | null): Cursor[] {
  if (!text) return [];
  try {
    return (JSON.parse(text) as { c: string; s: string }[]).flatMap(({ c, s }) => {
      const id = parseConversation(c);
      return id ? [{ conversation: id, seq: BigInt(s) }] : [];
    });
  } catch {
    return [];
  }
}

function formatCursors(cursors: Cursor[]): string {
  return JSON.stringify(cursors.map((c) => ({ c: conversationName(c.conversation), s: c.seq.toString() })));
}

function parseTips(text: string | null): Tip[] {
  if (!text) return [];
  try {
    return (JSON.parse(text) as { c: string; s: string; l: string }[]).flatMap(({ c, s, l }) => {
      const id = parseConversation(c);
      const link = new Uint8Array((l.match(/../g) ?? []).map((b) => parseInt(b, 16)));
      return id && link.length === 32 ? [{ conversation: id, seq: BigInt(s), link }] : [];
    });
  } catch {
    return [];
  }
}

function formatTips(tips: Tip[]): string {
  return JSON.stringify(tips.map((t) => ({ c: conversationName(t.conversation), s: t.seq.toString(), l: hex(t.link) })));
}

function parseConversation(name: string): ConversationId | null {
  const [kind, a, b] = name.split(":");
  if (kind === "direct" && a && b) return { kind: "Direct", low: BigInt(a), high: BigInt(b) };
  if (kind === "notes" && a) return { kind: "Notes", user: BigInt(a) };
  if (kind === "room" && a) return { kind: "Room", room: BigInt(a) };
  return null;
}

new App($("#app")).start();
