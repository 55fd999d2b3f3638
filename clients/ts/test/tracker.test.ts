// The tracker (src/tracker.ts), with the cases of the Rust crate's `chain::Tracker` tests.

import assert from "node:assert/strict";
import { test } from "node:test";

import { digest, genesis, link } from "../src/chain.js";
import { MAX_AHEAD, Tracker } from "../src/tracker.js";
import type { ConversationId, Entry, Hash, HistoryPage } from "../src/types.js";

const ROOM: ConversationId = { kind: "Room", room: 3n };

/** Entries 1..=n of a chain, with their links. */
async function chain(n: number): Promise<Entry[]> {
  let tip = await genesis(ROOM);
  const log: Entry[] = [];
  for (let seq = 1n; seq <= BigInt(n); seq++) {
    const entry: Entry = {
      kind: "Reaction",
      conversation: ROOM,
      seq,
      ts: seq,
      sender: 1n,
      op: seq,
      target: 1n,
      reaction: "x",
      removed: false,
      chain: { link: new Uint8Array(32), kept: null },
    };
    tip = await link(tip, await digest(entry));
    entry.chain = { link: tip, kept: null };
    log.push(entry);
  }
  return log;
}

const at = (log: Entry[], i: number) => log[i] as Entry;
const tipOf = (log: Entry[], i: number) => ({ seq: at(log, i).seq, link: at(log, i).chain.link });
const appended = async (e: Entry) => ({ link: e.chain.link, digest: await digest(e) });
const counts = (t: Tracker) => [t.report.verified, t.report.anchored, t.report.breaks];

test("pushes and acks in any order are followed", async () => {
  const log = await chain(6);
  const tracker = new Tracker([{ conversation: ROOM, ...tipOf(log, 0) }]);
  // Entry 3 (pushed) overtakes the ack of own entry 2; 5 overtakes 4.
  assert.equal(await tracker.entry(at(log, 2)), null);
  assert.deepEqual(tracker.tip(ROOM), tipOf(log, 0));
  assert.equal(await tracker.acked(ROOM, 2n, await appended(at(log, 1))), null);
  assert.deepEqual(tracker.tip(ROOM), tipOf(log, 2));
  for (const i of [4, 3, 5, 2, 5]) assert.equal(await tracker.entry(at(log, i)), null);
  assert.deepEqual(counts(tracker), [5, 0, 0]);
  assert.deepEqual(tracker.tips(), [{ conversation: ROOM, ...tipOf(log, 5) }]);
});

test("an altered or forked entry breaks the chain once", async () => {
  const log = await chain(4);
  const tracker = new Tracker();
  assert.equal(await tracker.entry(at(log, 0)), null);
  assert.deepEqual(counts(tracker).slice(0, 2), [1, 0], "from the start");
  const trusting = new Tracker();
  assert.equal(await trusting.entry(at(log, 2)), null);
  assert.equal(trusting.report.anchored, 1, "a later first link is taken on trust");
  // The entries before it check it in turn, down to the start.
  assert.equal(await trusting.entry(at(log, 1)), null);
  assert.equal(trusting.report.verified, 1);
  assert.equal(await trusting.entry(at(log, 0)), null);
  assert.deepEqual(counts(trusting).slice(0, 2), [3, 0]);
  assert.equal(await trusting.entry(at(log, 3)), null);
  assert.deepEqual(trusting.tip(ROOM), tipOf(log, 3));

  const altered = { ...at(log, 1), reaction: "y" } as Entry;
  assert.deepEqual(await tracker.entry(altered), { conversation: ROOM, seq: 2n, rule: "Link" });
  // Not followed any more: nothing else is reported, no tip is saved.
  assert.equal(await tracker.entry(at(log, 1)), null);
  assert.equal(await tracker.entry(at(log, 2)), null);
  assert.equal(tracker.report.breaks, 1);
  assert.deepEqual(tracker.tips(), []);
  // Another client's link for the entry it holds as its tip must be the same.
  const other = new Tracker([{ conversation: ROOM, seq: 2n, link: new Uint8Array(32) }]);
  assert.equal((await other.entry(at(log, 1)))?.rule, "Link");
  // An erased entry without its kept digest cannot be followed; with it, it can.
  const start = { conversation: ROOM, seq: 0n, link: await genesis(ROOM) };
  const erasedEntry = (kept: Hash | null): Entry => ({
    kind: "Erased",
    conversation: ROOM,
    seq: 1n,
    target: 1n,
    deletion: 2n,
    chain: { link: at(log, 0).chain.link, kept },
  });
  assert.equal((await new Tracker([start]).entry(erasedEntry(null)))?.rule, "Digest");
  const kept = new Tracker([start]);
  assert.equal(await kept.entry(erasedEntry(await digest(at(log, 0)))), null);
  assert.equal(kept.report.verified, 1);
});

test("pages are checked from their prior link and fill holes", async () => {
  const log = await chain(8);
  const tracker = new Tracker([{ conversation: ROOM, ...tipOf(log, 1) }]);
  // Live entry 7 arrives; 3..=6 were missed and come in a page, newest first.
  assert.equal(await tracker.entry(at(log, 6)), null);
  const page: HistoryPage = {
    conversation: ROOM,
    entries: log.slice(2, 6).reverse(),
    head: 8n,
    more: true,
    prior: at(log, 1).chain.link,
  };
  assert.equal(await tracker.page(page), null);
  assert.deepEqual(tracker.tip(ROOM), tipOf(log, 6));
  assert.equal(tracker.report.verified, 5);
  // A page whose prior link is not the one held for that entry is a fork.
  const other = new Tracker([{ conversation: ROOM, ...tipOf(log, 1) }]);
  assert.equal((await other.page({ ...page, prior: new Uint8Array(32).fill(1) }))?.rule, "Link");
  // A page whose entries do not follow from its own prior link is broken on its own.
  const gapped = { ...page, entries: page.entries.filter((_, i) => i !== 1) };
  assert.equal((await new Tracker().page(gapped))?.rule, "OutOfOrder");
  // A thread page is not followed.
  const untouched = new Tracker();
  assert.equal(await untouched.page({ ...page, prior: null }), null);
  assert.deepEqual(untouched.tips(), []);
});

test("holes that cannot fill anchor again after them", async () => {
  const log = await chain(5);
  const tracker = new Tracker([{ conversation: ROOM, ...tipOf(log, 0) }]);
  // A catch-up skipped 2..=3, then replays 4 and 5.
  await tracker.gap({ conversation: ROOM, from: 2n, to: 3n });
  assert.equal(await tracker.entry(at(log, 3)), null);
  assert.equal(await tracker.entry(at(log, 4)), null);
  assert.deepEqual(tracker.tip(ROOM), tipOf(log, 4));
  assert.deepEqual(counts(tracker).slice(0, 2), [1, 1]);
  // Without a gap, a hole that stays open keeps MAX_AHEAD entries waiting, then is given up.
  const long = await chain(MAX_AHEAD + 3);
  const waiting = new Tracker([{ conversation: ROOM, ...tipOf(long, 0) }]);
  for (const entry of long.slice(2)) assert.equal(await waiting.entry(entry), null);
  assert.deepEqual(waiting.tip(ROOM), tipOf(long, long.length - 1));
  assert.deepEqual(counts(waiting).slice(0, 2), [MAX_AHEAD, 1]);
});
