//! The steps that upgrade a store written by an older chatd, one format at a time
//! ([`super::FORMAT`]). Each step may be interrupted (a crash, a full disk) and run again:
//! it leaves alone what it already upgraded.

use super::*;

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
];

/// Rows written in one batch while upgrading.
const BATCH_ROWS: usize = 4096;

/// Format 1 to 2: protocol version 2 appended two optional fields to `Message` (`edited`
/// and `deleted`), so a message stored by version 1 gets their encoding of `None`, two zero
/// bytes. Rows that already decode (membership entries, messages upgraded by an interrupted
/// run) are left as they are; a row that decodes in neither form stops the upgrade.
fn messages_in_version_2(store: &Store) -> Result<(), Error> {
    let cf = store.cf(Cf::Log)?;
    let mut iter = store.db.raw_iterator_cf(cf);
    iter.seek_to_first();
    let (mut batch, mut rows, mut rewritten) = (rocksdb::WriteBatch::default(), 0, 0u64);
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        if decode_entry(value).is_err() {
            let mut upgraded = Vec::with_capacity(value.len() + 2);
            upgraded.extend_from_slice(value);
            upgraded.extend_from_slice(&[0, 0]);
            match decode_entry(&upgraded)? {
                Entry::Message(_) => {}
                other => {
                    return Err(Error::Corrupt {
                        cf: Cf::Log,
                        message: format!("not a version 1 message: {other:?}"),
                    });
                }
            }
            batch.put_cf(cf, key, upgraded);
            rows += 1;
            rewritten += 1;
            if rows == BATCH_ROWS {
                store.db.write(std::mem::take(&mut batch))?;
                rows = 0;
            }
        }
        iter.next();
    }
    iter.status()?;
    store.db.write(batch)?;
    tracing::info!(
        rewritten,
        "stored messages rewritten in protocol version 2's encoding"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use chat_protocol::{
        ContentType, ConversationId, Message, OpId, RoomId, Seq, Timestamp, UserId,
    };

    use super::*;

    fn message(seq: u64) -> Message {
        Message {
            conversation: ConversationId::Room(RoomId(5)),
            seq: Seq(seq),
            ts: Timestamp(1_795_000_000_000),
            sender: UserId(1),
            op: OpId(77 + seq),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: format!("message {seq}").into_bytes(),
            edited: None,
            deleted: None,
        }
    }

    #[test]
    fn version_1_messages_are_rewritten_once_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let cf = store.cf(Cf::Log).unwrap();
        let c = ConversationId::Room(RoomId(5));
        for seq in 1..=3 {
            let mut bytes = Vec::new();
            Entry::Message(message(seq)).encode_to(&mut bytes);
            // Version 1's encoding: without the two trailing `None`s.
            let v1 = &bytes[..bytes.len() - 2];
            // Seq 3 as an interrupted upgrade left it: already rewritten.
            let row = if seq == 3 { &bytes[..] } else { v1 };
            store.db.put_cf(cf, keys::log(c, Seq(seq)), row).unwrap();
        }
        store.stamp(1).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        for seq in 1..=3 {
            assert_eq!(
                store.entry(c, Seq(seq)).unwrap(),
                Some(Entry::Message(message(seq)))
            );
        }
        // A row that is no entry in either encoding stops the upgrade.
        store
            .db
            .put_cf(store.cf(Cf::Log).unwrap(), keys::log(c, Seq(4)), [9, 9])
            .unwrap();
        store.stamp(1).unwrap();
        drop(store);
        assert!(matches!(Store::open(&path), Err(Error::Corrupt { .. })));
    }
}
