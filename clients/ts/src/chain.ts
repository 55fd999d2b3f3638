// The hash chain of a conversation's log, version 1 (docs/PROTOCOL.md section 8.12):
//   link(0) = SHA-256("chatd-chain-v1" ‖ conversation)
//   link(n) = SHA-256(link(n-1) ‖ digest(n))
//   digest(n) = SHA-256("chatd-entry-v1" ‖ the entry as appended, up to its chain)
// SHA-256 comes from WebCrypto (browsers and node), so these functions are async.

import { Writer } from "./codec.js";
import { type ConversationId, type Entry, type Hash, writeConversation, writeEntry } from "./types.js";

const utf8 = new TextEncoder();

/** WebCrypto: the global one (browsers, node 19 and newer), else node 18's module. */
async function subtle(): Promise<SubtleCrypto> {
  if (globalThis.crypto?.subtle) return globalThis.crypto.subtle;
  const name = "node:crypto"; // not a static import: bundlers for browsers leave it alone
  const { webcrypto } = await import(/* @vite-ignore */ name);
  return webcrypto.subtle as SubtleCrypto;
}

async function sha256(...parts: Uint8Array[]): Promise<Hash> {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    joined.set(part, at);
    at += part.length;
  }
  return new Uint8Array(await (await subtle()).digest("SHA-256", joined));
}

/** The link before a conversation's first entry. */
export async function genesis(conversation: ConversationId): Promise<Hash> {
  const w = new Writer();
  writeConversation(w, conversation);
  return sha256(utf8.encode("chatd-chain-v1"), w.bytes());
}

/** The link after `previous` for an entry with `digest`. */
export function link(previous: Hash, digest: Hash): Promise<Hash> {
  return sha256(previous, digest);
}

/** Whether the content the entry was appended with is gone (a deleted message, an erased
 *  edit): its digest cannot be computed, only taken from `chain.kept`. */
export function erased(entry: Entry): boolean {
  return entry.kind === "Erased" || (entry.kind === "Message" && entry.deleted !== null);
}

const NO_CHAIN = { link: new Uint8Array(32), kept: null };

/** The digest of `entry` as it was appended: a message without its edits, deletion and
 *  reactions, bodies replaced by their SHA-256, and the encoding cut before the chain. */
export async function digest(entry: Entry): Promise<Hash> {
  let appended: Entry;
  switch (entry.kind) {
    case "Message":
      appended = {
        ...entry,
        body: await sha256(entry.body),
        edited: null,
        deleted: null,
        reactions: [],
        chain: NO_CHAIN,
      };
      break;
    case "Edit":
      appended = { ...entry, body: await sha256(entry.body), chain: NO_CHAIN };
      break;
    default:
      appended = { ...entry, chain: NO_CHAIN };
  }
  const w = new Writer();
  writeEntry(w, appended);
  const encoded = w.bytes();
  // The chain without a kept digest is 33 bytes: the link and the option's tag.
  return sha256(utf8.encode("chatd-entry-v1"), encoded.subarray(0, encoded.length - 33));
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Why an entry does not continue its conversation's chain. */
export class ChainError extends Error {
  constructor(
    readonly rule: "OutOfOrder" | "Digest" | "Link",
    readonly seq: bigint,
    message: string,
  ) {
    super(message);
    this.name = "ChainError";
  }
}

/** Checks a conversation's entries one after the other from a known link. */
export class Verifier {
  private constructor(
    private seq: bigint,
    private tip: Hash,
  ) {}

  /** Before the conversation's first entry. */
  static async start(conversation: ConversationId): Promise<Verifier> {
    return new Verifier(0n, await genesis(conversation));
  }

  /** After entry `seq`, whose link is `link` (a page's `prior`, or one checked before). */
  static after(seq: bigint, link: Hash): Verifier {
    return new Verifier(seq, link);
  }

  /** The last entry checked and its link. */
  get head(): { seq: bigint; link: Hash } {
    return { seq: this.seq, link: this.tip };
  }

  /** Checks the next entry by the link (and, erased, the kept digest) it carries; on
   *  success the chain moves past it. */
  async check(entry: Entry): Promise<void> {
    if (entry.seq !== this.seq + 1n) {
      throw new ChainError(
        "OutOfOrder",
        entry.seq,
        `expected entry ${this.seq + 1n}, found ${entry.seq}`,
      );
    }
    let d: Hash;
    if (erased(entry)) {
      if (entry.chain.kept === null) {
        throw new ChainError("Digest", entry.seq, "an erased entry without its kept digest");
      }
      d = entry.chain.kept;
    } else {
      d = await digest(entry);
      if (entry.chain.kept !== null && !equal(entry.chain.kept, d)) {
        throw new ChainError("Digest", entry.seq, "the entry does not match its digest");
      }
    }
    const next = await link(this.tip, d);
    if (!equal(next, entry.chain.link)) {
      throw new ChainError("Link", entry.seq, "the link does not follow from the one before");
    }
    this.seq = entry.seq;
    this.tip = next;
  }
}
