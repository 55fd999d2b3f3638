// Following the hash chain of every conversation a client receives entries of, as they come
// (docs/PROTOCOL.md 8.12), as the Rust crate's `chain::Tracker` does: pushed entries (live
// and replayed), the acks of the client's own entries (which it is never pushed), and history
// pages. No I/O; the session keeps one (`Client.chainReport()`).
//
// A conversation's chain is anchored at the first link the tracker learns of it (a saved tip,
// a page's prior link, the first entry seen): that link is taken on trust, except the chain's
// start, which the client computes (entry 1 is checked). From there every entry is checked
// against the link before it. Entries that arrive ahead of a hole wait (at most MAX_AHEAD per
// conversation) for the hole to fill; entries that precede the first one seen check it in
// turn, down to the chain's start if they reach it (which takes back the trust). A hole that
// cannot fill (a catch-up's `Gap`, or more than MAX_AHEAD waiting) anchors the chain again
// after it. A link that does not follow, or that differs from one held for the same entry,
// breaks the conversation's chain: it is reported and no longer followed.
//
// Hashing is asynchronous (WebCrypto): calls must not overlap; the session runs them one
// after the other.

import { ChainError, Verifier, digest, erased, genesis, link } from "./chain.js";
import type { Appended, ConversationId, Entry, Gap, Hash, HistoryPage } from "./types.js";
import { conversationName } from "./types.js";

/** Entries kept per conversation while they wait for a hole before them to fill. */
export const MAX_AHEAD = 1024;
/** Breaks kept in a report (the count goes on). */
export const MAX_BREAKS = 16;

/** Where and how a conversation's chain broke. */
export interface Break {
  conversation: ConversationId;
  seq: bigint;
  rule: ChainError["rule"];
}

/** What a tracker found so far. */
export interface Report {
  /** Entries checked against the link before them. */
  verified: number;
  /** Links taken on trust. */
  anchored: number;
  /** Conversations whose chain broke. */
  breaks: number;
  broken: Break[];
}

/** A conversation's last entry followed and its link. */
export interface Tip {
  conversation: ConversationId;
  seq: bigint;
  link: Hash;
}

interface Step {
  digest: Hash;
  link: Hash;
}

class Track {
  tip: { seq: bigint; link: Hash } | null = null;
  readonly ahead = new Map<bigint, Step>();
  anchor: { seq: bigint; step: Step } | null = null;
  behind = new Map<bigint, Step>();
  skipped: bigint | null = null;
  broken = false;

  constructor(readonly conversation: ConversationId) {}
}

function same(a: Hash, b: Hash): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function lowest<T>(map: Map<bigint, T>): bigint | null {
  let low: bigint | null = null;
  for (const key of map.keys()) if (low === null || key < low) low = key;
  return low;
}

/** The chains of a client's conversations. */
export class Tracker {
  private readonly tracks = new Map<string, Track>();
  readonly report: Report = { verified: 0, anchored: 0, breaks: 0, broken: [] };

  /** Starts from tips saved earlier. */
  constructor(tips: Tip[] = []) {
    for (const t of tips) this.track(t.conversation).tip = { seq: t.seq, link: t.link };
  }

  /** Each followed conversation's tip (broken chains left out). */
  tips(): Tip[] {
    return [...this.tracks.values()].flatMap((t) =>
      t.broken || !t.tip ? [] : [{ conversation: t.conversation, seq: t.tip.seq, link: t.tip.link }],
    );
  }

  /** One conversation's tip, to compare with another client's link of the same entry. */
  tip(conversation: ConversationId): { seq: bigint; link: Hash } | null {
    const t = this.tracks.get(conversationName(conversation));
    return t && !t.broken ? t.tip : null;
  }

  /** An entry pushed or paged; returns the break it caused, if any. */
  async entry(entry: Entry): Promise<Break | null> {
    const kept = entry.chain.kept;
    let d: Hash;
    if (erased(entry)) {
      if (kept === null) return this.broke(this.track(entry.conversation), entry.seq, "Digest");
      d = kept;
    } else {
      d = await digest(entry);
      if (kept !== null && !same(kept, d)) return this.broke(this.track(entry.conversation), entry.seq, "Digest");
    }
    return this.step(entry.conversation, entry.seq, d, entry.chain.link);
  }

  /** The ack of one of the client's own entries, with its place in the chain. */
  acked(conversation: ConversationId, seq: bigint, appended: Appended): Promise<Break | null> {
    return this.step(conversation, seq, appended.digest, appended.link);
  }

  /** A history page: checked on its own from its prior link, then followed (a thread page,
   *  which has no prior link, is not). */
  async page(page: HistoryPage): Promise<Break | null> {
    if (page.prior === null) return null;
    const entries = [...page.entries].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    const first = entries[0];
    if (!first) return null;
    const before = first.seq - 1n;
    const verifier = Verifier.after(before, page.prior);
    for (const entry of entries) {
      try {
        await verifier.check(entry);
      } catch (e) {
        if (e instanceof ChainError) return this.broke(this.track(page.conversation), entry.seq, e.rule);
        throw e;
      }
    }
    const known = await this.known(page.conversation, before, page.prior);
    if (known) return known;
    for (const entry of entries) {
      const broken = await this.entry(entry);
      if (broken) return broken;
    }
    return null;
  }

  /** A catch-up skipped `gap.from..=gap.to`. */
  async gap(gap: Gap): Promise<void> {
    const t = this.track(gap.conversation);
    t.skipped = t.skipped !== null && t.skipped > gap.to ? t.skipped : gap.to;
    await this.drain(t);
  }

  private track(conversation: ConversationId): Track {
    const key = conversationName(conversation);
    let t = this.tracks.get(key);
    if (!t) {
      t = new Track(conversation);
      this.tracks.set(key, t);
    }
    return t;
  }

  private async known(conversation: ConversationId, seq: bigint, l: Hash): Promise<Break | null> {
    const t = this.track(conversation);
    if (seq === 0n && !same(l, await genesis(conversation))) return this.broke(t, 0n, "Link");
    if (t.broken) return null;
    if (t.tip === null) {
      t.tip = { seq, link: l };
      if (seq !== 0n) this.report.anchored += 1;
      return this.drain(t);
    }
    if (t.tip.seq === seq && !same(t.tip.link, l)) return this.broke(t, seq, "Link");
    return null;
  }

  private async step(conversation: ConversationId, seq: bigint, d: Hash, l: Hash): Promise<Break | null> {
    const t = this.track(conversation);
    if (t.broken) return null;
    const step = { digest: d, link: l };
    if (t.tip === null) {
      // The first entry follows from the chain's start; any other is taken on trust.
      if (seq === 1n) {
        t.tip = { seq: 0n, link: await genesis(conversation) };
        t.ahead.set(seq, step);
      } else {
        t.tip = { seq, link: l };
        t.anchor = { seq, step };
        this.report.anchored += 1;
      }
      return this.drain(t);
    }
    if (t.anchor && seq < t.anchor.seq) {
      if (t.behind.size < MAX_AHEAD) t.behind.set(seq, step);
      return this.extendDown(t);
    }
    if (seq <= t.tip.seq) {
      // Followed already (a replay); the one at the tip must carry the link held.
      return seq === t.tip.seq && !same(t.tip.link, l) ? this.broke(t, seq, "Link") : null;
    }
    if (t.ahead.size >= MAX_AHEAD && !t.ahead.has(seq)) {
      // The hole is not filling: take the chain up again after it.
      const first = lowest(t.ahead) as bigint;
      const waiting = t.ahead.get(first) as Step;
      t.ahead.delete(first);
      t.tip = { seq: first, link: waiting.link };
      t.anchor = null;
      t.behind = new Map();
      this.report.anchored += 1;
    }
    t.ahead.set(seq, step);
    return this.drain(t);
  }

  /** Follows the entries waiting right after the tip; past a skipped hole, anchors again. */
  private async drain(t: Track): Promise<Break | null> {
    for (;;) {
      const tip = t.tip;
      if (!tip) return null;
      for (const s of [...t.ahead.keys()]) if (s <= tip.seq) t.ahead.delete(s);
      const step = t.ahead.get(tip.seq + 1n);
      if (step) {
        t.ahead.delete(tip.seq + 1n);
        const next = await link(tip.link, step.digest);
        if (!same(next, step.link)) return this.broke(t, tip.seq + 1n, "Link");
        t.tip = { seq: tip.seq + 1n, link: next };
        this.report.verified += 1;
        continue;
      }
      const first = lowest(t.ahead);
      if (t.skipped !== null && t.skipped <= tip.seq) {
        t.skipped = null;
      } else if (t.skipped !== null && first !== null && first > t.skipped) {
        const waiting = t.ahead.get(first) as Step;
        t.ahead.delete(first);
        t.tip = { seq: first, link: waiting.link };
        t.skipped = null;
        t.anchor = null;
        t.behind = new Map();
        this.report.anchored += 1;
      } else {
        return null;
      }
    }
  }

  /** Checks the anchor against the entries before it, down to entry 1 if they reach it. */
  private async extendDown(t: Track): Promise<Break | null> {
    while (t.anchor) {
      const { seq: first, step } = t.anchor;
      let below: Step | undefined;
      if (first !== 1n) {
        below = t.behind.get(first - 1n);
        if (!below) return null;
        t.behind.delete(first - 1n);
      }
      const before = below ? below.link : await genesis(t.conversation);
      if (!same(await link(before, step.digest), step.link)) return this.broke(t, first, "Link");
      this.report.verified += 1;
      if (below) {
        t.anchor = { seq: first - 1n, step: below };
      } else {
        this.report.anchored -= 1;
        t.anchor = null;
        t.behind = new Map();
      }
    }
    return null;
  }

  private broke(t: Track, seq: bigint, rule: ChainError["rule"]): Break {
    t.broken = true;
    t.ahead.clear();
    const found = { conversation: t.conversation, seq, rule };
    this.report.breaks += 1;
    if (this.report.broken.length < MAX_BREAKS) this.report.broken.push(found);
    return found;
  }
}
