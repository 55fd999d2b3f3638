//! The steps that upgrade a store written by an older chatd, one format at a time
//! ([`super::FORMAT`]). Each step may be interrupted (a crash, a full disk) and run again:
//! it leaves alone what it already upgraded.

use super::*;
use chat_protocol::Message;

/// The upgrade from each older format to the next: (from, what it changes, the step).
pub(super) type Upgrade = (u32, &'static str, fn(&Store) -> Result<(), Error>);

/// Every upgrade step, in order.
pub(super) const UPGRADES: &[Upgrade] = &[
    (0, "stamps the format (the layout is unchanged)", |_| Ok(())),
    (
        1,
        "rewrites stored messages in protocol version 2's encoding",
        messages_in_version_2,
    ),
    (
        2,
        "rewrites stored messages with mentions and reactions, and indexes threads",
        messages_with_reactions,
    ),
    (
        3,
        "chains every conversation's entries (the links column family)",
        chain_every_log,
    ),
    (
        4,
        "rewrites every entry with its place in the chain",
        links_in_entries,
    ),
];

/// The encoding of a `Chain` not set yet (zero link, no kept digest): what the steps before
/// format 5 append to a row to read it as today's `Entry`, whose last field is its chain.
const NO_CHAIN: [u8; 33] = [0; 33];

/// Rows written in one batch while upgrading.
const BATCH_ROWS: usize = 4096;

/// Format 1 to 2: protocol version 2 appended two optional fields to `Message` (`edited`
/// and `deleted`), so a message stored by version 1 gets their encoding of `None`, two zero
/// bytes.
fn messages_in_version_2(store: &Store) -> Result<(), Error> {
    // Read through today's `Message`, which the later steps extend by two empty lists and a
    // chain.
    let later = [&[0, 0][..], &NO_CHAIN].concat();
    extend_messages(store, &[0, 0], &later, |_, _| {})?;
    tracing::info!("stored messages rewritten in protocol version 2's encoding");
    Ok(())
}

/// Format 2 to 3: `Message` gained two lists (`mentions`, `reactions`), so a message stored
/// by format 2 gets their encoding when empty, two zero bytes; and every reply gets its row
/// in the `threads` index (rewriting one that exists is harmless).
fn messages_with_reactions(store: &Store) -> Result<(), Error> {
    let threads = store.cf(Cf::Threads)?;
    extend_messages(store, &[0, 0], &NO_CHAIN, |batch, message| {
        if let Some(root) = message.reply_to {
            let key = keys::thread(message.conversation, root, message.seq);
            batch.put_cf(threads, key, []);
        }
    })?;
    tracing::info!("stored messages rewritten with mentions and reactions; threads indexed");
    Ok(())
}

/// Format 3 to 4: every stored entry gets its link (`chat_protocol::chain`), conversation by
/// conversation in log order. An entry whose content was erased before (a deleted message,
/// an erased edit) is chained as it is stored now: its appended form is gone. The links
/// are recomputed whole, so a rerun after an interruption writes the same rows.
fn chain_every_log(store: &Store) -> Result<(), Error> {
    let links = store.cf(Cf::Links)?;
    let mut current: Option<(ConversationId, chain::Hash)> = None;
    let mut row = Vec::new();
    let chained = each_log_row(store, |batch, key, value| {
        // A row of format 5 already (a store stamped back by hand, or a test) reads as it is.
        let entry = match Entry::decode_from(value) {
            Ok(entry) => entry,
            Err(_) => {
                row.clear();
                row.extend_from_slice(value);
                row.extend_from_slice(&NO_CHAIN);
                decode_entry(&row)?
            }
        };
        let c = entry.conversation();
        let tip = match current {
            Some((at, tip)) if at == c => tip,
            _ => chain::genesis(c),
        };
        let digest = chain::digest(&entry);
        let link = chain::link(&tip, &digest);
        batch.put_cf(links, key, encode_link(&link, &digest));
        current = Some((c, link));
        Ok(())
    })?;
    tracing::info!(chained, "every conversation's entries chained");
    Ok(())
}

/// Format 4 to 5: every entry's encoding ends with its `Chain` (its link, and the digest of
/// an entry whose content was erased), taken from the `links` row written by the step
/// before. A row that decodes as it is was rewritten by an interrupted run.
fn links_in_entries(store: &Store) -> Result<(), Error> {
    let (cf, links) = (store.cf(Cf::Log)?, store.cf(Cf::Links)?);
    let mut row = Vec::new();
    let rewritten = each_log_row(store, |batch, key, value| {
        if Entry::decode_from(value).is_ok() {
            return Ok(());
        }
        row.clear();
        row.extend_from_slice(value);
        row.extend_from_slice(&NO_CHAIN);
        let entry = decode_entry(&row)?;
        let stored = store.db.get_pinned_cf(links, key)?;
        let Some((link, digest)) = stored.as_deref().and_then(parse_link) else {
            return Err(Error::Corrupt {
                cf: Cf::Links,
                message: format!("no link for {:?} {:?}", entry.conversation(), entry.seq()),
            });
        };
        let chain = chat_protocol::Chain {
            link,
            kept: chain::erased(&entry).then_some(digest),
        };
        row.truncate(value.len());
        chain.encode_to(&mut row);
        batch.put_cf(cf, key, &row);
        Ok(())
    })?;
    tracing::info!(rewritten, "every entry rewritten with its link");
    Ok(())
}

/// Hands every row of the log, in key order, to `each` with a batch for its writes, written
/// every [`BATCH_ROWS`] rows and at the end; returns how many rows there were.
fn each_log_row(
    store: &Store,
    mut each: impl FnMut(&mut rocksdb::WriteBatch, &[u8], &[u8]) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut iter = store.db.raw_iterator_cf(store.cf(Cf::Log)?);
    iter.seek_to_first();
    let (mut batch, mut rows, mut all) = (rocksdb::WriteBatch::default(), 0, 0u64);
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        each(&mut batch, key, value)?;
        all += 1;
        rows += 1;
        if rows == BATCH_ROWS {
            store.db.write(std::mem::take(&mut batch))?;
            rows = 0;
        }
        iter.next();
    }
    iter.status()?;
    store.db.write(batch)?;
    Ok(all)
}

/// Appends `missing` to every stored message that lacks it: a row that decodes once the
/// later steps' `later` bytes are appended is already upgraded (as are membership entries,
/// and messages an interrupted run rewrote); one that decodes with `missing` before them is
/// rewritten, and `each` sees it; a row that decodes in neither form stops the upgrade.
fn extend_messages(
    store: &Store,
    missing: &[u8],
    later: &[u8],
    mut each: impl FnMut(&mut rocksdb::WriteBatch, &Message),
) -> Result<(), Error> {
    let cf = store.cf(Cf::Log)?;
    let mut row = Vec::new();
    let mut rewritten = 0u64;
    each_log_row(store, |batch, key, value| {
        // A row in today's encoding needs nothing (the later steps' rows, when a store is
        // stamped back by hand, or a test); a shorter one cannot read as today's.
        if let Ok(entry) = Entry::decode_from(value) {
            if let Entry::Message(message) = &entry {
                each(batch, message);
            }
            return Ok(());
        }
        row.clear();
        row.extend_from_slice(value);
        row.extend_from_slice(later);
        match decode_entry(&row) {
            // Upgraded by an interrupted run: its index rows may still be missing.
            Ok(Entry::Message(message)) => each(batch, &message),
            Ok(_) => {}
            Err(_) => {
                row.truncate(value.len());
                row.extend_from_slice(missing);
                row.extend_from_slice(later);
                let message = match decode_entry(&row)? {
                    Entry::Message(message) => message,
                    other => {
                        return Err(Error::Corrupt {
                            cf: Cf::Log,
                            message: format!("not a message of the older format: {other:?}"),
                        });
                    }
                };
                each(batch, &message);
                row.truncate(value.len() + missing.len());
                batch.put_cf(cf, key, &row);
                rewritten += 1;
            }
        }
        Ok(())
    })?;
    tracing::debug!(rewritten, "messages extended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use chat_protocol::{ContentType, ConversationId, OpId, RoomId, Seq, Timestamp, UserId};

    use super::*;

    fn message(seq: u64) -> Message {
        Message {
            conversation: ConversationId::Room(RoomId(5)),
            seq: Seq(seq),
            ts: Timestamp(1_795_000_000_000),
            sender: UserId(1),
            op: OpId(77 + seq),
            content_type: ContentType::TEXT,
            reply_to: (seq > 1).then_some(Seq(1)),
            body: format!("message {seq}").into_bytes(),
            edited: None,
            deleted: None,
            mentions: Vec::new(),
            reactions: Vec::new(),
            chain: chat_protocol::Chain::default(),
        }
    }

    /// Message `seq` as it reads after the upgrade: with its link.
    fn chained(seq: u64) -> Entry {
        let c = ConversationId::Room(RoomId(5));
        let mut link = chat_protocol::chain::genesis(c);
        for at in 1..=seq {
            let digest = chat_protocol::chain::digest(&Entry::Message(message(at)));
            link = chat_protocol::chain::link(&link, &digest);
        }
        let mut entry = Entry::Message(message(seq));
        entry.chain_mut().link = link;
        entry
    }

    /// Message `seq` in the encoding of format `format` (1: without the last four fields,
    /// each `None` or empty, and its chain; 2: without the last two and its chain; 3 and 4:
    /// without its chain; 5: as it reads after the upgrade).
    fn stored(seq: u64, format: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        chained(seq).encode_to(&mut bytes);
        let cut = match format {
            1 => 4 + NO_CHAIN.len(),
            2 => 2 + NO_CHAIN.len(),
            3 | 4 => NO_CHAIN.len(),
            _ => 0,
        };
        bytes.truncate(bytes.len() - cut);
        bytes
    }

    fn reopened_at(path: &std::path::Path, format: u32, rows: &[(u64, u32)]) -> Store {
        let store = Store::open(path).unwrap();
        let c = ConversationId::Room(RoomId(5));
        let cf = store.cf(Cf::Log).unwrap();
        for (seq, written) in rows {
            let row = stored(*seq, *written);
            store.db.put_cf(cf, keys::log(c, Seq(*seq)), row).unwrap();
        }
        store.stamp(format).unwrap();
        drop(store);
        Store::open(path).unwrap()
    }

    fn thread_of_1(store: &Store) -> Vec<Seq> {
        let c = ConversationId::Room(RoomId(5));
        let (entries, _) = store
            .thread(
                c,
                Seq(1),
                HistoryFrom::After(Seq(0)),
                10,
                Order::OldestFirst,
                Seq(9),
            )
            .unwrap();
        entries.iter().map(Entry::seq).collect()
    }

    #[test]
    fn older_messages_are_rewritten_once_read_back_whole_and_threaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = ConversationId::Room(RoomId(5));
        // Format 1, seq 3 as an interrupted upgrade to format 2 left it.
        let store = reopened_at(&path, 1, &[(1, 1), (2, 1), (3, 2)]);
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        for seq in 1..=3 {
            let entry = store.entry(c, Seq(seq)).unwrap();
            assert_eq!(entry, Some(chained(seq)));
        }
        assert_eq!(thread_of_1(&store), [Seq(2), Seq(3)]);
        drop(store);
        // Format 2, seq 5 as an interrupted upgrade to format 3 left it (without its index
        // row, which the rerun writes).
        let store = reopened_at(&path, 2, &[(4, 2), (5, 3)]);
        for seq in 1..=5 {
            let entry = store.entry(c, Seq(seq)).unwrap();
            assert_eq!(entry, Some(chained(seq)));
        }
        assert_eq!(thread_of_1(&store), [Seq(2), Seq(3), Seq(4), Seq(5)]);
        drop(store);
        // Format 4 (entries without their chain; links written by the step to format 4,
        // which this store ran already), seq 7 as an interrupted upgrade to format 5 left it.
        let store = Store::open(&path).unwrap();
        let (log, links) = (store.cf(Cf::Log).unwrap(), store.cf(Cf::Links).unwrap());
        for (seq, written) in [(6, 4), (7, 5)] {
            let key = keys::log(c, Seq(seq));
            store.db.put_cf(log, key, stored(seq, written)).unwrap();
            let digest = chat_protocol::chain::digest(&chained(seq));
            let link = encode_link(&chained(seq).chain().link, &digest);
            store.db.put_cf(links, key, link).unwrap();
        }
        store.stamp(4).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        for seq in 1..=7 {
            let entry = store.entry(c, Seq(seq)).unwrap();
            assert_eq!(entry, Some(chained(seq)));
        }
        // Every entry is chained, and the chain holds.
        let report = store.verify_chains(None).unwrap();
        assert_eq!((report.conversations, report.entries), (1, 7));
        assert_eq!(report.broken, []);
        assert_eq!(store.chain_tip(c, Seq(0)).unwrap(), None);
        assert_eq!(
            store.chain_tip(c, Seq(7)).unwrap(),
            Some(chained(7).chain().link)
        );
        // A row that is no entry in any encoding stops the upgrade.
        store
            .db
            .put_cf(store.cf(Cf::Log).unwrap(), keys::log(c, Seq(8)), [9, 9])
            .unwrap();
        store.stamp(1).unwrap();
        drop(store);
        assert!(matches!(Store::open(&path), Err(Error::Corrupt { .. })));
    }
}
