//! Storage: RocksDB in the data directory, written by one storage thread that group-commits
//! ([`writer`]), read by a small pool of blocking threads ([`ReadPool`]). Shards never call
//! RocksDB on their event loops.
//!
//! [`Store`] wraps the database and knows the column families and key layouts ([`keys`]);
//! its read methods block and are meant for the read pool and for start-up. [`Stores`] holds a
//! node's partitions (one store on a single node) and routes each read to the store that holds
//! what it reads.

mod catch_up;
mod chains;
pub mod keys;
pub mod layout;
pub mod outbox;
mod partitions;
mod reads;
mod records;
mod remote;
mod upgrade;
mod wal;
pub mod writer;

pub use catch_up::{CatchUp, ENTRY_OVERHEAD, MAX_ENTRY_CHARGE, REPLAY_CHUNK, ReplayItem};
pub use chains::ChainReport;
#[cfg(test)]
pub(crate) use chains::carries;
pub use partitions::{ID_BITS, MAX_PARTITIONS, NextIds, PartitionMap, Stores, fnv1a};
pub use reads::PAGE_BYTES;
pub(crate) use records::decode_sender_op;
pub use records::{
    ConversationSnapshot, MemberState, RESTRICTION_PREFIX, Restriction, RoomRecord, SenderOp,
    UserRecord, encode_link, encode_marks, parse_link, restriction_key, to_json,
};
use records::{decode_entry, parse_marks};
pub use remote::{Read, Remote};
use upgrade::UPGRADES;
pub use wal::WalOptions;

use std::path::Path;
use std::sync::Arc;

use chat_protocol::{
    ConversationId, Entry, Gap, HistoryFrom, OpId, Order, Role, RoomId, Seq, Timestamp, UserId,
    chain,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use serde::{Deserialize, Serialize};

/// The column families, in creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    /// user id -> [`UserRecord`]
    Users,
    /// user name -> user id
    UserNames,
    /// room id -> [`RoomRecord`]
    Rooms,
    /// room name -> room id
    RoomNames,
    /// room id · user id -> [`MemberState`]
    Members,
    /// user id · conversation -> ()
    UserConversations,
    /// conversation · seq -> entry
    Log,
    /// conversation · user id -> delivered seq (8) · read seq (8)
    Markers,
    /// event seq (8) -> [`outbox::Record`] JSON: every committed event, for the bridge
    Outbox,
    /// name -> value: the bridge's confirmed cursor, account restrictions
    /// ([`RESTRICTION_PREFIX`])
    Meta,
    /// conversation · sender · seq -> op id (8) · ts (8): each sender's most recent sends
    /// of a conversation (at most `storage.dedupe_window`), for deduplication
    SenderOps,
    /// conversation · root seq · seq -> (): the replies to each entry, for threads
    Threads,
    /// conversation · seq -> link (32) · digest (32): each entry's place in its
    /// conversation's hash chain (`chat_protocol::chain`), written when it is appended
    Links,
}

impl Cf {
    const ALL: [Cf; 13] = [
        Cf::Users,
        Cf::UserNames,
        Cf::Rooms,
        Cf::RoomNames,
        Cf::Members,
        Cf::UserConversations,
        Cf::Log,
        Cf::Markers,
        Cf::Outbox,
        Cf::Meta,
        Cf::SenderOps,
        Cf::Threads,
        Cf::Links,
    ];

    fn name(self) -> &'static str {
        match self {
            Cf::Users => "users",
            Cf::UserNames => "user_names",
            Cf::Rooms => "rooms",
            Cf::RoomNames => "room_names",
            Cf::Members => "members",
            Cf::UserConversations => "user_conversations",
            Cf::Log => "log",
            Cf::Markers => "markers",
            Cf::Outbox => "outbox",
            Cf::Meta => "meta",
            Cf::SenderOps => "sender_ops",
            Cf::Threads => "threads",
            Cf::Links => "links",
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value does not parse: the database is damaged or from an unknown version.
    #[error("corrupt record in {cf:?}: {message}")]
    Corrupt {
        /// Where.
        cf: Cf,
        /// What.
        message: String,
    },
    /// A column family is missing (cannot happen after a successful open).
    #[error("column family {0:?} missing")]
    MissingCf(Cf),
    /// The store was written by a newer chatd, whose layout this one does not know.
    #[error(
        "the store has format {found}, newer than the {supported} this chatd reads: run the \
         chatd that wrote it, or restore a backup taken before it ran"
    )]
    NewerFormat {
        /// The stored format.
        found: u32,
        /// What this chatd reads and writes.
        supported: u32,
    },
    /// A backup could not be taken or restored.
    #[error("{0}")]
    Backup(String),
    /// The data directory holds another layout of stores than the configuration says
    /// ([`layout`]).
    #[error("{0}")]
    Layout(String),
    /// This node does not hold the partition (its owner is another node, or it is moving).
    #[error("partition {0} is not held by this node")]
    NotHere(usize),
    /// The node that holds the partition did not answer a read ([`Remote`]).
    #[error("partition {partition}'s node: {message}")]
    Remote {
        /// Which partition.
        partition: usize,
        /// What went wrong.
        message: String,
    },
}

/// `Cf::Meta` key of the store's format version (4 bytes, big-endian).
pub const FORMAT_KEY: &[u8] = b"store.format";

/// The store format this chatd writes. A store with a higher one is refused; a lower one is
/// upgraded at open by the steps in [`UPGRADES`], each logged.
///
/// - 0: written before the format was stamped (chatd up to the admin listener's arrival).
/// - 1: the same layout, stamped; `Cf::Meta` may hold account restrictions.
/// - 2: log entries in protocol version 2's encoding (messages carry their edits and
///   deletion; the log may hold edits, deletions and erased edits).
/// - 3: messages carry their mentions and reactions (the log may hold reactions); the
///   `threads` index lists the replies to each entry.
/// - 4: the `links` column family holds every entry's link and digest (its conversation's
///   hash chain).
/// - 5: every entry's encoding ends with its place in the chain (`Chain`), as clients get
///   it; an erased edit's row holds none (reads take it from `links`).
pub const FORMAT: u32 = 5;

/// RocksDB's flush threads in the process, for every store together: as many as the
/// partitions a cluster's node gives up at once (`server::member`'s `AT_ONCE`, 4).
pub const FLUSH_THREADS: i32 = 4;

/// The database. Cheap to clone; shared by the storage thread and the read pool.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (creating if needed) the database under `dir`, with the default WAL options.
    ///
    /// # Errors
    /// When RocksDB cannot open it (permissions, another process holds the lock, corruption).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        Store::open_with(dir, WalOptions::default())
    }

    /// Opens (creating if needed) the database under `dir`, keeping its WAL as `wal` says.
    ///
    /// # Errors
    /// When RocksDB cannot open it (permissions, another process holds the lock, corruption).
    pub fn open_with(dir: &Path, wal: WalOptions) -> Result<Store, Error> {
        let mut options = Options::default();
        wal.apply(&mut options);
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        // The flush threads are the process's (RocksDB's default environment), shared by
        // every store: as many as the partitions a node flushes at once when it hands them
        // over, each store still flushing one memtable at a time.
        let mut env = rocksdb::Env::new()?;
        env.set_high_priority_background_threads(FLUSH_THREADS);
        options.set_env(&env);
        options.set_bytes_per_sync(1 << 20);
        // The storage thread is the only writer: no need for RocksDB's writer queue.
        options.set_unordered_write(false);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(cf.name(), cf_options)
        });
        // A directory without RocksDB's CURRENT file is a new store. An existing one is
        // checked read-only first: a store of a newer format is refused before this chatd
        // writes anything into it (or trips over a column family it does not know).
        let existed = dir.join("CURRENT").exists();
        if existed {
            Store::check_format(dir)?;
        }
        let db = DB::open_cf_descriptors(&options, dir, cfs)?;
        let store = Store { db: Arc::new(db) };
        let found = match store.format()? {
            Some(found) => found,
            None if existed => 0,
            None => FORMAT,
        };
        if found > FORMAT {
            return Err(Error::NewerFormat {
                found,
                supported: FORMAT,
            });
        }
        for (from, what, step) in UPGRADES.iter().filter(|(from, _, _)| *from >= found) {
            step(&store)?;
            store.stamp(from + 1)?;
            tracing::warn!(
                from,
                to = from + 1,
                "upgraded the store format: {what}; a chatd older than this one cannot open it"
            );
        }
        if !existed {
            store.stamp(FORMAT)?;
        }
        Ok(store)
    }

    /// The stored format version (`None`: not stamped).
    ///
    /// # Errors
    /// RocksDB errors, or a stamp that is not 4 bytes.
    pub fn format(&self) -> Result<Option<u32>, Error> {
        match self.get(Cf::Meta, FORMAT_KEY)? {
            None => Ok(None),
            Some(v) => <[u8; 4]>::try_from(v.as_slice())
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| Error::Corrupt {
                    cf: Cf::Meta,
                    message: "the format stamp is not 4 bytes".into(),
                }),
        }
    }

    /// Writes the time into `Cf::Meta` `store.probe` with `options`: whether the disk takes
    /// writes again (the storage thread, while commits fail and nobody writes).
    ///
    /// # Errors
    /// When the write fails.
    pub(crate) fn probe(&self, options: &rocksdb::WriteOptions) -> Result<(), Error> {
        let mut batch = rocksdb::WriteBatch::default();
        let now = crate::shard::now_ms().0;
        batch.put_cf(self.cf(Cf::Meta)?, b"store.probe", now.to_be_bytes());
        self.db.write_opt(batch, options)?;
        Ok(())
    }

    /// Writes the format stamp (synced).
    fn stamp(&self, format: u32) -> Result<(), Error> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(Cf::Meta)?, FORMAT_KEY, format.to_be_bytes());
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Writes a consistent snapshot of the whole database into `dir` (which must not
    /// exist): a RocksDB checkpoint, with the SST files hard-linked when `dir` is on the same
    /// filesystem. Every write acknowledged before the call is in it. Works while the
    /// storage thread writes.
    ///
    /// # Errors
    /// When RocksDB cannot write the checkpoint.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), Error> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Refuses the existing database under `dir` when its format is newer than this chatd's,
    /// before anything writes to it. Opens read-only only the column family that holds the
    /// stamp: RocksDB then replays the WAL's records of that family alone (the rest it reads
    /// and skips), where a read-only open of every family would rebuild all their memtables
    /// for nothing (the open that follows replays the WAL again).
    ///
    /// # Errors
    /// [`Error::NewerFormat`]; when RocksDB cannot open it.
    pub fn check_format(dir: &Path) -> Result<(), Error> {
        let names = [Cf::Meta.name()];
        let db = DB::open_cf_for_read_only(&Options::default(), dir, names, false)?;
        Store { db: Arc::new(db) }.refuse_newer()
    }

    /// [`Error::NewerFormat`] when the stored format is newer than this chatd's.
    fn refuse_newer(&self) -> Result<(), Error> {
        match self.format()? {
            Some(found) if found > FORMAT => Err(Error::NewerFormat {
                found,
                supported: FORMAT,
            }),
            _ => Ok(()),
        }
    }

    /// Writes every column family's memtable to its tables and waits for it: the WAL then
    /// holds nothing the next open (this node's or another's) has to replay. What a node
    /// does before it closes a partition it hands over.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn flush(&self) -> Result<(), Error> {
        let cfs = (Cf::ALL.iter())
            .map(|cf| self.cf(*cf))
            .collect::<Result<Vec<_>, _>>()?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Opens an existing database read-only, beside a daemon that may be running on it (it
    /// sees what was written when it opened).
    ///
    /// # Errors
    /// When RocksDB cannot open it.
    pub fn open_read_only(dir: &Path) -> Result<Store, Error> {
        let options = Options::default();
        let names = Cf::ALL.iter().map(|cf| cf.name());
        let db = DB::open_cf_for_read_only(&options, dir, names, false)?;
        let store = Store { db: Arc::new(db) };
        store.refuse_newer()?;
        Ok(store)
    }

    pub(crate) fn cf(&self, cf: Cf) -> Result<&ColumnFamily, Error> {
        self.db.cf_handle(cf.name()).ok_or(Error::MissingCf(cf))
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    fn json<T: for<'de> Deserialize<'de>>(cf: Cf, bytes: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            cf,
            message: e.to_string(),
        })
    }

    /// The highest id stored in `cf` (keys are big-endian ids), 0 when empty.
    fn max_id(&self, cf: Cf) -> Result<u64, Error> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        iter.seek_to_last();
        iter.status()?;
        Ok(iter.key().and_then(keys::parse_id).unwrap_or(0))
    }

    /// The highest user id in use.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn max_user_id(&self) -> Result<u64, Error> {
        self.max_id(Cf::Users)
    }

    /// The highest room id in use.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn max_room_id(&self) -> Result<u64, Error> {
        self.max_id(Cf::Rooms)
    }

    /// The account with this name.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, Error> {
        match self.get(Cf::UserNames, name.as_bytes())? {
            Some(id) => self.user(UserId(keys::parse_id(&id).unwrap_or(0))),
            None => Ok(None),
        }
    }

    /// The account with this id.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn user(&self, id: UserId) -> Result<Option<UserRecord>, Error> {
        self.get(Cf::Users, &keys::id(id.0))?
            .map(|v| Self::json(Cf::Users, &v))
            .transpose()
    }

    /// The room with this id.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room(&self, id: RoomId) -> Result<Option<RoomRecord>, Error> {
        self.get(Cf::Rooms, &keys::id(id.0))?
            .map(|v| Self::json(Cf::Rooms, &v))
            .transpose()
    }

    /// The room with this name.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room_by_name(&self, name: &str) -> Result<Option<RoomRecord>, Error> {
        match self.get(Cf::RoomNames, name.as_bytes())? {
            Some(id) => self.room(RoomId(keys::parse_id(&id).unwrap_or(0))),
            None => Ok(None),
        }
    }

    /// Everything a conversation's owner needs: head, room state, markers. `None` for a
    /// room that does not exist.
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn load_conversation(
        &self,
        c: ConversationId,
    ) -> Result<Option<ConversationSnapshot>, Error> {
        let room = match c {
            ConversationId::Room(id) => match self.room(id)? {
                Some(record) => Some((record, self.room_members(id)?)),
                None => return Ok(None),
            },
            _ => None,
        };
        let head = self.head(c)?;
        Ok(Some(ConversationSnapshot {
            head,
            room,
            marks: self.conversation_marks(c)?,
            tip: self.chain_tip(c, head)?,
        }))
    }

    /// The most recent sends of `sender` in `c` (at most `limit`), oldest first: what the
    /// owner needs to recognise a retried op id.
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn sender_ops(
        &self,
        c: ConversationId,
        sender: UserId,
        limit: usize,
    ) -> Result<Vec<SenderOp>, Error> {
        let prefix = keys::sender_ops(c, sender);
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::SenderOps)?);
        iter.seek_for_prev(keys::sender_op(c, sender, Seq(u64::MAX)));
        let mut ops = Vec::new();
        while ops.len() < limit && iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let Some(seq) = key.strip_prefix(&prefix[..]).and_then(keys::parse_id) else {
                break;
            };
            let op = decode_sender_op(Seq(seq), value).ok_or_else(|| Error::Corrupt {
                cf: Cf::SenderOps,
                message: "bad sender op".into(),
            })?;
            ops.push(op);
            iter.prev();
        }
        iter.status()?;
        ops.reverse();
        Ok(ops)
    }

    /// Calls `each` with the key suffix (after `prefix`) and value of every entry of `cf` from
    /// `start` on whose key starts with `prefix`, until `each` returns `Ok(false)`.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        for item in self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(start, Direction::Forward))
        {
            let (key, value) = item?;
            let Some(suffix) = key.strip_prefix(prefix) else {
                break;
            };
            if !each(suffix, &value)? {
                break;
            }
        }
        Ok(())
    }

    /// Compacts every column family completely (`chatd admin compact`): deleted and
    /// overwritten values leave the files. Blocks until done; writes go on meanwhile.
    ///
    /// # Errors
    /// A column family is missing.
    pub fn compact(&self) -> Result<(), Error> {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.cf(cf)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn room_members(&self, room: RoomId) -> Result<Vec<(UserId, MemberState)>, Error> {
        let prefix = keys::id(room.0);
        let mut members = Vec::new();
        self.scan(Cf::Members, &prefix, &prefix, |user, state| {
            match (keys::parse_id(user), MemberState::from_byte(state)) {
                (Some(user), Some(state)) => members.push((UserId(user), state)),
                _ => {
                    return Err(Error::Corrupt {
                        cf: Cf::Members,
                        message: "bad member entry".into(),
                    });
                }
            }
            Ok(true)
        })?;
        Ok(members)
    }

    /// The last event seq the outbox ever numbered: the larger of its newest entry and the
    /// bridge's cursor (entries behind the cursor may have been pruned).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn outbox_last(&self) -> Result<u64, Error> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Outbox)?);
        iter.seek_to_last();
        let last = iter.key().and_then(outbox::parse_key).unwrap_or(0);
        iter.status()?;
        Ok(last.max(self.bridge_cursor()?))
    }

    /// The last event seq the broker confirmed (0: none).
    ///
    /// # Errors
    /// RocksDB errors, or a cursor that is not 8 bytes.
    pub fn bridge_cursor(&self) -> Result<u64, Error> {
        match self.get(Cf::Meta, outbox::CURSOR_KEY)? {
            None => Ok(0),
            Some(v) => outbox::parse_key(&v).ok_or(Error::Corrupt {
                cf: Cf::Meta,
                message: "bridge cursor is not 8 bytes".into(),
            }),
        }
    }

    /// Moves the bridge's cursor. The bridge thread writes it directly (not through the
    /// storage thread): it is the only writer of this key, and losing the latest value in a
    /// crash only republishes events, which consumers deduplicate.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn set_bridge_cursor(&self, seq: u64) -> Result<(), Error> {
        self.db
            .put_cf(self.cf(Cf::Meta)?, outbox::CURSOR_KEY, outbox::key(seq))?;
        Ok(())
    }

    /// Up to `limit` outbox entries after `after`, oldest first: (seq, stored JSON).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        let start = outbox::key(after.saturating_add(1));
        self.scan(Cf::Outbox, &[], &start, |key, value| {
            if let Some(seq) = outbox::parse_key(key) {
                out.push((seq, value.to_vec()));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Deletes the outbox entries up to and including `seq`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn prune_outbox(&self, seq: u64) -> Result<(), Error> {
        self.db.delete_range_cf(
            self.cf(Cf::Outbox)?,
            outbox::key(0),
            outbox::key(seq.saturating_add(1)),
        )?;
        Ok(())
    }

    /// Closes the database once nobody else holds it (the reads that hold a clone end),
    /// waiting at most `within`; gives the store back when others still hold it then.
    ///
    /// # Errors
    /// The store itself, still open, after `within`.
    pub fn close(self, within: std::time::Duration) -> Result<(), Store> {
        let deadline = std::time::Instant::now() + within;
        while Arc::strong_count(&self.db) > 1 {
            if std::time::Instant::now() >= deadline {
                return Err(self);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    /// Flushes the WAL to disk (at shutdown).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn sync(&self) -> Result<(), Error> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
