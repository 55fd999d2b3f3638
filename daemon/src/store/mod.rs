//! Storage: RocksDB in the data directory, written by one storage thread that group-commits
//! ([`writer`]), read by a small pool of blocking threads ([`ReadPool`]). Shards never call
//! RocksDB on their event loops.
//!
//! [`Store`] wraps the database and knows the column families and key layouts ([`keys`]);
//! its read methods block and are meant for the read pool and for start-up.

pub mod keys;
pub mod outbox;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use chat_protocol::{
    ConversationId, Entry, Gap, HistoryFrom, OpId, Order, Role, RoomId, Seq, Timestamp, UserId,
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
}

impl Cf {
    const ALL: [Cf; 11] = [
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
}

/// `Cf::Meta` key of the store's format version (4 bytes, big-endian).
pub const FORMAT_KEY: &[u8] = b"store.format";

/// The store format this chatd writes. A store with a higher one is refused; a lower one is
/// upgraded at open by the steps in [`UPGRADES`], each logged.
///
/// - 0: written before the format was stamped (chatd up to the admin listener's arrival).
/// - 1: the same layout, stamped; `Cf::Meta` may hold account restrictions.
pub const FORMAT: u32 = 1;

/// The upgrade from each older format to the next: (from, what it changes, the step).
type Upgrade = (u32, &'static str, fn(&Store) -> Result<(), Error>);

/// Every upgrade step, in order.
const UPGRADES: &[Upgrade] = &[(0, "stamps the format (the layout is unchanged)", |_| Ok(()))];

/// An account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Its id.
    pub id: UserId,
    /// Its name.
    pub name: String,
    /// argon2id PHC string; `None` for accounts created by a backend-minted token.
    pub password_hash: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at: Timestamp,
}

/// `Cf::Meta` key prefix of account restrictions (followed by the user id, 8 bytes
/// big-endian); the value is a JSON [`Restriction`].
pub const RESTRICTION_PREFIX: &[u8] = b"restrict/";

/// The `Cf::Meta` key of a user's restriction.
#[must_use]
pub fn restriction_key(user: UserId) -> Vec<u8> {
    [RESTRICTION_PREFIX, &user.0.to_be_bytes()].concat()
}

/// What an operator set on an account (`chatd admin disable`, `enable`, `revoke`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// The account cannot log in or authenticate.
    pub disabled: bool,
    /// Tokens issued before this time (seconds since the epoch, `iat`) are refused, and so
    /// are tokens without `iat`; 0: none is.
    pub tokens_from: u64,
}

impl Restriction {
    /// Why a token issued at `issued_at` cannot authenticate this account, if it cannot.
    #[must_use]
    pub fn refuses(&self, issued_at: Option<u64>) -> Option<chat_protocol::ErrorCode> {
        if self.disabled {
            Some(chat_protocol::ErrorCode::ACCOUNT_DISABLED)
        } else if self.tokens_from > 0 && issued_at.is_none_or(|iat| iat < self.tokens_from) {
            Some(chat_protocol::ErrorCode::TOKEN_REVOKED)
        } else {
            None
        }
    }
}

/// A room's fixed facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Its id.
    pub id: RoomId,
    /// Its unique name.
    pub name: String,
    /// Whether joining needs an invitation.
    pub invite_only: bool,
    /// Creation time, ms since the epoch.
    pub created_at: Timestamp,
}

/// A user's standing in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// A member with a role.
    Member(Role),
    /// Invited, not yet joined.
    Invited,
    /// Banned: cannot join. With the role the user had when banned (`Member` for a user who
    /// was not a member): only someone who outranks it may unban.
    Banned(Role),
}

impl MemberState {
    /// One byte on disk.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            MemberState::Member(Role::Member) => 0,
            MemberState::Member(Role::Admin) => 1,
            MemberState::Member(Role::Owner) => 2,
            MemberState::Invited => 3,
            MemberState::Banned(Role::Member) => 4,
            MemberState::Banned(Role::Admin | Role::Owner) => 5,
        }
    }

    fn from_byte(b: &[u8]) -> Option<MemberState> {
        Some(match b {
            [0] => MemberState::Member(Role::Member),
            [1] => MemberState::Member(Role::Admin),
            [2] => MemberState::Member(Role::Owner),
            [3] => MemberState::Invited,
            [4] => MemberState::Banned(Role::Member),
            [5] => MemberState::Banned(Role::Admin),
            _ => return None,
        })
    }
}

/// What a conversation's owner shard needs to take over a conversation.
#[derive(Debug, Default)]
pub struct ConversationSnapshot {
    /// The last stored sequence number.
    pub head: Seq,
    /// For rooms: the record and every member, invitation and ban.
    pub room: Option<(RoomRecord, Vec<(UserId, MemberState)>)>,
    /// Every member's (delivered, read) markers.
    pub marks: Vec<(UserId, Seq, Seq)>,
}

/// One item of a catch-up, in the order the client must see them.
#[derive(Debug)]
pub enum ReplayItem {
    /// Entries skipped because there were too many: page them through history.
    Gap(Gap),
    /// An entry the device missed.
    Entry(Entry),
}

/// Entries a catch-up page reads at a time: the most a page can exceed its byte target by.
pub const REPLAY_CHUNK: usize = 16;

/// Encoded size of an entry beyond its body, at most (ids, seq, times, op id, varint
/// lengths, the event frame's header): every fixed field of `Message` and
/// `MembershipEvent` is far below it.
pub const ENTRY_OVERHEAD: usize = 256;

/// Encoded size of a `Gap` event frame, at most.
const GAP_BOUND: usize = 64;

/// An upper bound of an entry's size as an event frame.
fn encoded_bound(entry: &Entry) -> usize {
    match entry {
        Entry::Message(m) => m.body.len() + ENTRY_OVERHEAD,
        Entry::Membership(_) => ENTRY_OVERHEAD,
    }
}

/// A catch-up in progress between its pages ([`Store::catch_up_page`]): the device's
/// cursors, what is left of the replay bound, and where the walk through the user's
/// conversations stands. Small: the cursors (at most 1 024) and one listing page of
/// conversation ids.
#[derive(Debug)]
pub struct CatchUp {
    user: UserId,
    cursors: std::collections::HashMap<ConversationId, Seq>,
    per_conversation: u64,
    /// Entries the replay may still hold.
    left: u64,
    /// Conversations listed and not visited yet.
    listing: std::collections::VecDeque<ConversationId>,
    /// The listing goes on after this conversation.
    listed_after: Option<ConversationId>,
    listed_all: bool,
    /// The conversation being replayed: the next seq to read and the last one.
    current: Option<(ConversationId, Seq, Seq)>,
}

impl CatchUp {
    /// A catch-up of `user` from `cursors`, at most `per_conversation` entries of each
    /// conversation and `total` in all.
    #[must_use]
    pub fn new(
        user: UserId,
        cursors: std::collections::HashMap<ConversationId, Seq>,
        per_conversation: u64,
        total: u64,
    ) -> CatchUp {
        CatchUp {
            user,
            cursors,
            per_conversation,
            left: total,
            listing: std::collections::VecDeque::new(),
            listed_after: None,
            listed_all: false,
            current: None,
        }
    }

    /// Whether every page has been read.
    #[must_use]
    pub fn done(&self) -> bool {
        self.current.is_none() && self.listing.is_empty() && self.listed_all
    }
}

/// The database. Cheap to clone; shared by the storage thread and the read pool.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (creating if needed) the database under `dir`.
    ///
    /// # Errors
    /// When RocksDB cannot open it (permissions, another process holds the lock, corruption).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
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
            drop(Store::open_read_only(dir)?);
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
        if let Some(found) = store.format()?
            && found > FORMAT
        {
            return Err(Error::NewerFormat {
                found,
                supported: FORMAT,
            });
        }
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
        Ok(Some(ConversationSnapshot {
            head: self.head(c)?,
            room,
            marks: self.conversation_marks(c)?,
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

    /// Every account restriction.
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn restrictions(&self) -> Result<Vec<(UserId, Restriction)>, Error> {
        let mut all = Vec::new();
        self.scan(
            Cf::Meta,
            RESTRICTION_PREFIX,
            RESTRICTION_PREFIX,
            |user, value| {
                let user = <[u8; 8]>::try_from(user).map(u64::from_be_bytes);
                match (user, serde_json::from_slice(value)) {
                    (Ok(user), Ok(restriction)) => all.push((UserId(user), restriction)),
                    _ => {
                        return Err(Error::Corrupt {
                            cf: Cf::Meta,
                            message: "bad account restriction".into(),
                        });
                    }
                }
                Ok(true)
            },
        )?;
        Ok(all)
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

    /// A page of a conversation's log, at most `limit` entries, none beyond `head`.
    /// Returns the entries in the requested order and whether more exist past the page.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn history(
        &self,
        c: ConversationId,
        from: HistoryFrom,
        limit: usize,
        order: Order,
        head: Seq,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let (start, forward) = match from {
            HistoryFrom::Latest => (head, false),
            HistoryFrom::Before(s) => (Seq(s.0.saturating_sub(1).min(head.0)), false),
            HistoryFrom::After(s) => (s.next(), true),
        };
        let mut entries = Vec::with_capacity(limit.min(128));
        let mut more = false;
        if start.0 >= 1 && start <= head {
            let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Log)?);
            if forward {
                iter.seek(keys::log(c, start));
            } else {
                iter.seek_for_prev(keys::log(c, start));
            }
            while iter.valid() {
                let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                    break;
                };
                let Some(seq) = keys::log_seq(c, key) else {
                    break;
                };
                if seq > head || seq == Seq(0) {
                    break;
                }
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(decode_entry(value)?);
                if forward { iter.next() } else { iter.prev() }
            }
            iter.status()?;
        }
        let ascending = forward;
        if (order == Order::OldestFirst) != ascending {
            entries.reverse();
        }
        Ok((entries, more))
    }

    /// A user's conversations after `after`, at most `limit`, and whether more exist.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn user_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: usize,
    ) -> Result<(Vec<ConversationId>, bool), Error> {
        let prefix = keys::id(user.0);
        let start = match after {
            Some(c) => {
                let mut k = keys::user_conversation(user, c).to_vec();
                k.push(0); // strictly after
                k
            }
            None => prefix.to_vec(),
        };
        let (mut out, mut more) = (Vec::new(), false);
        self.scan(Cf::UserConversations, &prefix, &start, |conversation, _| {
            if out.len() == limit {
                more = true;
                return Ok(false);
            }
            out.extend(keys::parse_conversation(conversation));
            Ok(true)
        })?;
        Ok((out, more))
    }

    /// How many rooms `user` is in, counting no further than `max`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn room_count(&self, user: UserId, max: u32) -> Result<u32, Error> {
        // Rooms sort after direct and notes conversations: start at the first room key.
        let prefix = keys::id(user.0);
        let start = keys::user_conversation(user, ConversationId::Room(RoomId(0)));
        let mut count = 0;
        self.scan(Cf::UserConversations, &prefix, &start, |_, _| {
            count += 1;
            Ok(count < max)
        })?;
        Ok(count)
    }

    /// The first of `others` whose presence `user` may not follow, if any. A user may follow
    /// themselves, anyone they have a direct conversation with, and the members of the rooms
    /// they are in (at most `max_rooms_per_user` rooms are looked at per user).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn presence_forbidden(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<Option<UserId>, Error> {
        let prefix = keys::id(user.0);
        let start = keys::user_conversation(user, ConversationId::Room(RoomId(0)));
        let mut rooms = Vec::new();
        self.scan(Cf::UserConversations, &prefix, &start, |suffix, _| {
            if let Some(ConversationId::Room(room)) = keys::parse_conversation(suffix) {
                rooms.push(room);
            }
            Ok(true)
        })?;
        'others: for &other in others {
            if other == user {
                continue;
            }
            let direct = keys::user_conversation(user, ConversationId::direct(user, other));
            if self.get(Cf::UserConversations, &direct)?.is_some() {
                continue;
            }
            for &room in &rooms {
                if let Some(MemberState::Member(_)) = self.member_state(room, other)? {
                    continue 'others;
                }
            }
            return Ok(Some(other));
        }
        Ok(None)
    }

    /// The last stored sequence number of a conversation.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn head(&self, c: ConversationId) -> Result<Seq, Error> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Log)?);
        iter.seek_for_prev(keys::log(c, Seq(u64::MAX)));
        iter.status()?;
        Ok(iter
            .key()
            .and_then(|k| keys::log_seq(c, k))
            .unwrap_or(Seq(0)))
    }

    /// The state of `user` in `room`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn member_state(&self, room: RoomId, user: UserId) -> Result<Option<MemberState>, Error> {
        Ok(self
            .get(Cf::Members, &keys::member(room, user))?
            .and_then(|v| MemberState::from_byte(&v)))
    }

    /// The next page of a catch-up: what a device missed, for every conversation of the
    /// user, the entries after its cursor (else the user's delivered marker), oldest first,
    /// at most `per_conversation` entries of one conversation and `total` in all (the older
    /// entries beyond that are announced as a [`ReplayItem::Gap`] before the entries that
    /// follow them). A page ends once its entries' encoded size reaches `max_bytes` (it may
    /// exceed it by up to [`REPLAY_CHUNK`] entries); [`CatchUp::done`] says whether more
    /// pages follow. A conversation's newest entry is read when the catch-up reaches it.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn catch_up_page(
        &self,
        catch_up: &mut CatchUp,
        max_bytes: usize,
    ) -> Result<Vec<ReplayItem>, Error> {
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while bytes < max_bytes {
            if let Some((c, next, last)) = catch_up.current {
                let chunk = usize::try_from(last.0 - next.0 + 1)
                    .unwrap_or(usize::MAX)
                    .min(REPLAY_CHUNK);
                let (entries, _) = self.history(
                    c,
                    HistoryFrom::After(Seq(next.0 - 1)),
                    chunk,
                    Order::OldestFirst,
                    last,
                )?;
                catch_up.current = match entries.last().map(Entry::seq) {
                    Some(seq) if seq < last => Some((c, seq.next(), last)),
                    _ => None,
                };
                bytes += entries.iter().map(encoded_bound).sum::<usize>();
                items.extend(entries.into_iter().map(ReplayItem::Entry));
                continue;
            }
            let Some(c) = catch_up.listing.pop_front() else {
                if catch_up.listed_all {
                    break;
                }
                let (conversations, more) =
                    self.user_conversations(catch_up.user, catch_up.listed_after, 1024)?;
                catch_up.listed_all = !more || conversations.is_empty();
                catch_up.listed_after = conversations.last().copied();
                catch_up.listing.extend(conversations);
                continue;
            };
            let from = match catch_up.cursors.get(&c) {
                Some(seq) => *seq,
                None => self.marks(c, catch_up.user)?.0,
            };
            let head = self.head(c)?;
            if head <= from {
                continue;
            }
            let missing = head.0 - from.0;
            let n = missing.min(catch_up.per_conversation).min(catch_up.left);
            if n < missing {
                items.push(ReplayItem::Gap(Gap {
                    conversation: c,
                    from: from.next(),
                    to: Seq(head.0 - n),
                }));
                bytes += GAP_BOUND;
            }
            if n > 0 {
                catch_up.current = Some((c, Seq(head.0 - n + 1), head));
                catch_up.left -= n;
            }
        }
        Ok(items)
    }

    /// Every member's (delivered, read) markers in a conversation.
    fn conversation_marks(&self, c: ConversationId) -> Result<Vec<(UserId, Seq, Seq)>, Error> {
        let prefix = keys::conversation(c);
        let mut marks = Vec::new();
        self.scan(Cf::Markers, &prefix, &prefix, |user, value| {
            match (keys::parse_id(user), parse_marks(value)) {
                (Some(user), Some((delivered, read))) => {
                    marks.push((UserId(user), delivered, read))
                }
                _ => {
                    return Err(Error::Corrupt {
                        cf: Cf::Markers,
                        message: "bad marker entry".into(),
                    });
                }
            }
            Ok(true)
        })?;
        Ok(marks)
    }

    /// A user's (delivered, read) markers in a conversation; zeros when never set.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt entry.
    pub fn marks(&self, c: ConversationId, user: UserId) -> Result<(Seq, Seq), Error> {
        match self.get(Cf::Markers, &keys::marker(c, user))? {
            None => Ok((Seq(0), Seq(0))),
            Some(value) => parse_marks(&value).ok_or_else(|| Error::Corrupt {
                cf: Cf::Markers,
                message: "bad marker entry".into(),
            }),
        }
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

    /// Flushes the WAL to disk (at shutdown).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn sync(&self) -> Result<(), Error> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// The stored form of a user's markers: delivered then read, big-endian.
#[must_use]
pub fn encode_marks(delivered: Seq, read: Seq) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&delivered.0.to_be_bytes());
    value[8..].copy_from_slice(&read.0.to_be_bytes());
    value
}

/// One stored send of a sender ([`Cf::SenderOps`]): its op id, and where and when it was
/// stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderOp {
    /// The client's op id.
    pub op: OpId,
    /// Its sequence number.
    pub seq: Seq,
    /// Its server timestamp.
    pub ts: Timestamp,
}

impl SenderOp {
    /// The stored value (the seq is in the key): op id then timestamp, big-endian.
    #[must_use]
    pub fn value(&self) -> [u8; 16] {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&self.op.0.to_be_bytes());
        value[8..].copy_from_slice(&self.ts.0.to_be_bytes());
        value
    }
}

pub(crate) fn decode_sender_op(seq: Seq, value: &[u8]) -> Option<SenderOp> {
    let value: &[u8; 16] = value.try_into().ok()?;
    Some(SenderOp {
        op: OpId(keys::parse_id(&value[..8])?),
        seq,
        ts: Timestamp(keys::parse_id(&value[8..])?),
    })
}

fn parse_marks(value: &[u8]) -> Option<(Seq, Seq)> {
    let value: &[u8; 16] = value.try_into().ok()?;
    Some((
        Seq(keys::parse_id(&value[..8])?),
        Seq(keys::parse_id(&value[8..])?),
    ))
}

/// Decodes a stored log entry.
fn decode_entry(bytes: &[u8]) -> Result<Entry, Error> {
    Entry::decode_from(bytes).map_err(|e| Error::Corrupt {
        cf: Cf::Log,
        message: e.to_string(),
    })
}

/// Serializes a record for storage.
#[must_use]
pub fn to_json<T: Serialize>(record: &T) -> Vec<u8> {
    // Plain structs of strings and integers always serialize.
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_meta(store: &Store, key: &[u8], value: Option<&[u8]>) {
        let cf = store.cf(Cf::Meta).unwrap();
        match value {
            Some(v) => store.db.put_cf(cf, key, v).unwrap(),
            None => store.db.delete_cf(cf, key).unwrap(),
        }
    }

    #[test]
    fn a_new_store_is_stamped_an_old_one_upgraded_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        // As written before the stamp existed.
        put_meta(&store, FORMAT_KEY, None);
        put_meta(&store, b"kept", Some(b"yes"));
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        assert_eq!(
            store.get(Cf::Meta, b"kept").unwrap().as_deref(),
            Some(&b"yes"[..])
        );
        // As written by a newer chatd.
        put_meta(&store, FORMAT_KEY, Some(&(FORMAT + 1).to_be_bytes()));
        drop(store);
        for refused in [Store::open(&path).err(), Store::open_read_only(&path).err()] {
            match refused {
                Some(Error::NewerFormat { found, supported }) => {
                    assert_eq!((found, supported), (FORMAT + 1, FORMAT));
                }
                other => panic!("{:?}", other.map(|e| e.to_string())),
            }
        }
    }

    #[test]
    fn a_checkpoint_holds_every_write_before_it_and_opens_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for i in 0u64..100 {
            put_meta(&store, &i.to_be_bytes(), Some(b"v"));
        }
        let copy = dir.path().join("copy");
        store.checkpoint(&copy).unwrap();
        put_meta(&store, b"after", Some(b"v"));
        drop(store);
        let copy = Store::open_read_only(&copy).unwrap();
        for i in 0u64..100 {
            assert!(copy.get(Cf::Meta, &i.to_be_bytes()).unwrap().is_some());
        }
        assert!(copy.get(Cf::Meta, b"after").unwrap().is_none());
        assert_eq!(copy.format().unwrap(), Some(FORMAT));
    }
}
