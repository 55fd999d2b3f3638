//! Partitions: which store holds what (docs/SCALING.md, section 2).
//!
//! A single node has one store, partition 0 of 1, and nothing here changes what it does. A
//! cluster splits its data into `count` partitions, each a RocksDB of its own, so that a
//! partition can move between nodes as one directory. Everything a write touches lives in
//! one partition, so a write is still one `WriteBatch`:
//!
//! - a conversation, with everything keyed by it (its log, markers, sender ops, threads,
//!   links, a room's record and members) and **its rows of its members' conversation
//!   indexes** (`user_conversations`), lives in the conversation's partition;
//! - a user (the account, its name, its restriction) lives in the user's partition;
//! - ids carry their partition in their top byte ([`ID_BITS`]): a new user gets an id in the
//!   partition of its name's hash, a new room in the partition of its name's hash, so a
//!   unique name is claimed in the same batch as the record it names; a room's and a user's
//!   notes' conversations are their id's partition, a direct conversation the hash of its
//!   key.
//!
//! What spans partitions is a read: a user's conversations, rooms and contacts are the union
//! of each partition's rows ([`Stores::user_conversations`], [`Stores::room_count`],
//! [`Stores::presence_forbidden`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_protocol::{ConversationId, Entry, HistoryFrom, Order, RoomId, Seq, UserId};

use super::remote::{Asker, Part};
use super::{
    CatchUp, ConversationSnapshot, Error, MemberState, Read, Remote, ReplayItem, Restriction,
    RoomRecord, SenderOp, Store, UserRecord, keys,
};

/// The low bits of an id: its number within its partition. The top byte is the partition.
pub const ID_BITS: u32 = 56;

/// The most partitions a cluster can have: a partition is an id's top byte.
pub const MAX_PARTITIONS: usize = 256;

/// FNV-1a, 64 bits: how keys are spread over shards and partitions.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which partition holds what, among `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    count: usize,
}

impl PartitionMap {
    /// A single node's: one partition.
    pub const SINGLE: PartitionMap = PartitionMap { count: 1 };

    /// `count` partitions, 1 to [`MAX_PARTITIONS`] (clamped).
    #[must_use]
    pub fn new(count: usize) -> PartitionMap {
        PartitionMap {
            count: count.clamp(1, MAX_PARTITIONS),
        }
    }

    /// How many partitions there are.
    #[must_use]
    pub fn count(self) -> usize {
        self.count
    }

    /// The partition of a user or room id: its top byte.
    #[must_use]
    pub fn of_id(self, id: u64) -> usize {
        usize::try_from(id >> ID_BITS).unwrap_or(0) % self.count
    }

    /// The partition that claims `name` (a user or room name), and so holds what it names.
    #[must_use]
    pub fn of_name(self, name: &str) -> usize {
        self.spread(name.as_bytes())
    }

    /// The partition of a conversation.
    #[must_use]
    pub fn of_conversation(self, c: ConversationId) -> usize {
        match c {
            ConversationId::Room(room) => self.of_id(room.0),
            ConversationId::Notes(user) => self.of_id(user.0),
            ConversationId::Direct { .. } => self.spread(&keys::conversation(c)),
        }
    }

    /// The first id of partition `p`; its ids follow it.
    #[must_use]
    pub fn first_id(self, p: usize) -> u64 {
        u64::try_from(p % self.count).unwrap_or(0) << ID_BITS
    }

    /// A hash of `key` modulo the count. The hash is mixed (SplitMix64's finalizer) so that a
    /// node's partitions do not all land on the same shards: shards take FNV-1a modulo their
    /// count, and both counts are often powers of two.
    fn spread(self, key: &[u8]) -> usize {
        let mut h = fnv1a(key);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let count = u64::try_from(self.count).unwrap_or(1);
        usize::try_from(h % count).unwrap_or(0)
    }
}

/// A node's stores, one per partition it holds, and the reads that route by what they read.
/// Cheap to clone. A single node holds its one partition; a cluster's node installs and
/// removes partitions as their ownership moves ([`Stores::install`], [`Stores::remove`]). A
/// read of a partition it does not hold goes to the node that holds it when the node has
/// peers ([`Stores::reach`]; only the reads a client's node makes, [`Read`]), and fails with
/// [`Error::NotHere`] otherwise.
#[derive(Clone)]
pub struct Stores {
    map: PartitionMap,
    slots: Arc<[arc_swap::ArcSwapOption<Store>]>,
    remote: Arc<std::sync::OnceLock<std::sync::Weak<dyn Remote>>>,
}

impl Stores {
    /// A single node's one store.
    #[must_use]
    pub fn single(store: Store) -> Stores {
        Stores::partitioned(vec![store])
    }

    /// The stores of every partition, in partition order, all held.
    #[must_use]
    pub fn partitioned(stores: Vec<Store>) -> Stores {
        let held = Stores::none(PartitionMap::new(stores.len()));
        for (p, store) in stores.into_iter().enumerate() {
            held.install(p, store);
        }
        held
    }

    /// `map`'s partitions, none held yet.
    #[must_use]
    pub fn none(map: PartitionMap) -> Stores {
        Stores {
            map,
            slots: (0..map.count())
                .map(|_| arc_swap::ArcSwapOption::empty())
                .collect(),
            remote: Arc::default(),
        }
    }

    /// From now on, reads of partitions not held here ask `remote` (set once: the node's
    /// peers, which hold these stores: a weak reference, so neither keeps the other).
    pub fn reach(&self, remote: std::sync::Weak<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// Whether this node holds partition `p`.
    #[must_use]
    pub fn holds(&self, p: usize) -> bool {
        self.slots.get(p).is_some_and(|slot| slot.load().is_some())
    }

    /// Where a read of partition `p` goes: its store here, or the node that holds it.
    fn part(&self, p: usize) -> Result<Part, Error> {
        match (
            self.partition(p),
            self.remote.get().and_then(std::sync::Weak::upgrade),
        ) {
            (Ok(store), _) => Ok(Part::Here(store)),
            (Err(Error::NotHere(_)), Some(remote)) if p < self.slots.len() => {
                Ok(Part::There(Asker {
                    partition: p,
                    remote,
                }))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Every partition, here or elsewhere, in partition order: what a read that spans
    /// partitions needs.
    fn parts(&self) -> Result<Vec<Part>, Error> {
        (0..self.slots.len()).map(|p| self.part(p)).collect()
    }

    /// Holds partition `p` in `store` from now on.
    pub fn install(&self, p: usize, store: Store) {
        if let Some(slot) = self.slots.get(p) {
            slot.store(Some(Arc::new(store)));
        }
    }

    /// Stops holding partition `p`: reads of it fail from now on. Returns its store (which
    /// closes once the reads that hold a clone of it end).
    pub fn remove(&self, p: usize) -> Option<Store> {
        let slot = self.slots.get(p)?.swap(None)?;
        Some(Arc::unwrap_or_clone(slot))
    }

    /// Where what lives.
    #[must_use]
    pub fn map(&self) -> PartitionMap {
        self.map
    }

    /// The partitions held, in partition order.
    #[must_use]
    pub fn holding(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&p| self.holds(p)).collect()
    }

    /// The partitions held and their stores, in partition order.
    #[must_use]
    pub fn held(&self) -> Vec<(usize, Store)> {
        (self.slots.iter().enumerate())
            .filter_map(|(p, slot)| Some((p, Store::clone(slot.load().as_deref()?))))
            .collect()
    }

    /// Every partition's store, in partition order: what a read that spans partitions needs.
    ///
    /// # Errors
    /// [`Error::NotHere`] with the first partition not held.
    pub fn all(&self) -> Result<Vec<Store>, Error> {
        (0..self.slots.len()).map(|p| self.partition(p)).collect()
    }

    /// Partition `p`'s store.
    ///
    /// # Errors
    /// [`Error::NotHere`] when this node does not hold it.
    pub fn partition(&self, p: usize) -> Result<Store, Error> {
        let slot = self.slots.get(p).ok_or(Error::NotHere(p))?;
        slot.load().as_deref().cloned().ok_or(Error::NotHere(p))
    }

    /// The store of a conversation.
    ///
    /// # Errors
    /// [`Error::NotHere`] when this node does not hold its partition.
    pub fn of_conversation(&self, c: ConversationId) -> Result<Store, Error> {
        self.partition(self.map.of_conversation(c))
    }

    /// The store of a user or room id.
    ///
    /// # Errors
    /// [`Error::NotHere`] when this node does not hold its partition.
    pub fn of_id(&self, id: u64) -> Result<Store, Error> {
        self.partition(self.map.of_id(id))
    }

    /// The store that claims a name.
    ///
    /// # Errors
    /// [`Error::NotHere`] when this node does not hold its partition.
    pub fn of_name(&self, name: &str) -> Result<Store, Error> {
        self.partition(self.map.of_name(name))
    }

    /// See [`Store::user`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn user(&self, id: UserId) -> Result<Option<UserRecord>, Error> {
        match self.part(self.map.of_id(id.0))? {
            Part::Here(store) => store.user(id),
            Part::There(node) => node.ask(Read::User(id)),
        }
    }

    /// See [`Store::restriction`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn restriction(&self, user: UserId) -> Result<Restriction, Error> {
        match self.part(self.map.of_id(user.0))? {
            Part::Here(store) => store.restriction(user),
            Part::There(node) => node.ask(Read::Restriction(user)),
        }
    }

    /// See [`Store::user_by_name`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, Error> {
        match self.part(self.map.of_name(name))? {
            Part::Here(store) => store.user_by_name(name),
            Part::There(node) => node.ask(Read::UserByName(name.to_owned())),
        }
    }

    /// See [`Store::room`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room(&self, id: RoomId) -> Result<Option<RoomRecord>, Error> {
        match self.part(self.map.of_id(id.0))? {
            Part::Here(store) => store.room(id),
            Part::There(node) => node.ask(Read::Room(id)),
        }
    }

    /// See [`Store::room_by_name`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room_by_name(&self, name: &str) -> Result<Option<RoomRecord>, Error> {
        match self.part(self.map.of_name(name))? {
            Part::Here(store) => store.room_by_name(name),
            Part::There(node) => node.ask(Read::RoomByName(name.to_owned())),
        }
    }

    /// See [`Store::load_conversation`].
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn load_conversation(
        &self,
        c: ConversationId,
    ) -> Result<Option<ConversationSnapshot>, Error> {
        self.of_conversation(c)?.load_conversation(c)
    }

    /// See [`Store::sender_ops`].
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn sender_ops(
        &self,
        c: ConversationId,
        sender: UserId,
        limit: usize,
    ) -> Result<Vec<SenderOp>, Error> {
        self.of_conversation(c)?.sender_ops(c, sender, limit)
    }

    /// See [`Store::history`].
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
        match self.part(self.map.of_conversation(c))? {
            Part::Here(store) => store.history(c, from, limit, order, head),
            Part::There(node) => node.ask(Read::History {
                conversation: c,
                from,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                order,
                head,
            }),
        }
    }

    /// See [`Store::thread`].
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn thread(
        &self,
        c: ConversationId,
        root: Seq,
        from: HistoryFrom,
        limit: usize,
        order: Order,
        head: Seq,
    ) -> Result<(Vec<Entry>, bool), Error> {
        self.of_conversation(c)?
            .thread(c, root, from, limit, order, head)
    }

    /// See [`Store::prior`].
    ///
    /// # Errors
    /// As [`Store::link`].
    pub fn prior(
        &self,
        c: ConversationId,
        first: Seq,
    ) -> Result<chat_protocol::chain::Hash, Error> {
        self.of_conversation(c)?.prior(c, first)
    }

    /// See [`Store::entry`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt entry.
    pub fn entry(&self, c: ConversationId, seq: Seq) -> Result<Option<Entry>, Error> {
        self.of_conversation(c)?.entry(c, seq)
    }

    /// See [`Store::head`].
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn head(&self, c: ConversationId) -> Result<Seq, Error> {
        match self.part(self.map.of_conversation(c))? {
            Part::Here(store) => store.head(c),
            Part::There(node) => node.ask(Read::Head(c)),
        }
    }

    /// See [`Store::marks`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt marker.
    pub fn marks(&self, c: ConversationId, user: UserId) -> Result<(Seq, Seq), Error> {
        match self.part(self.map.of_conversation(c))? {
            Part::Here(store) => store.marks(c, user),
            Part::There(node) => node.ask(Read::Marks(c, user)),
        }
    }

    /// See [`Store::messages_of`].
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn messages_of(&self, c: ConversationId, user: UserId) -> Result<Vec<Seq>, Error> {
        self.of_conversation(c)?.messages_of(c, user)
    }

    /// See [`Store::member_state`].
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn member_state(&self, room: RoomId, user: UserId) -> Result<Option<MemberState>, Error> {
        match self.part(self.map.of_id(room.0))? {
            Part::Here(store) => store.member_state(room, user),
            Part::There(node) => node.ask(Read::MemberState(room, user)),
        }
    }

    /// Every conversation `user` sent in, over every partition ([`Store::conversations_of`]),
    /// in key order.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>, Error> {
        let mut all = Vec::new();
        for part in self.parts()? {
            all.extend(match part {
                Part::Here(store) => store.conversations_of(user)?,
                Part::There(node) => {
                    node.ask::<Vec<ConversationId>>(Read::ConversationsOf(user))?
                }
            });
        }
        all.sort_by_key(|c| keys::conversation(*c));
        Ok(all)
    }

    /// A user's conversations after `after`, at most `limit`, and whether more exist: each
    /// partition's rows, merged in key order (as one store lists them).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn user_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: usize,
    ) -> Result<(Vec<ConversationId>, bool), Error> {
        let parts = self.parts()?;
        if let [Part::Here(store)] = parts.as_slice() {
            return store.user_conversations(user, after, limit);
        }
        let mut all = Vec::new();
        let mut more = false;
        for part in &parts {
            let (found, left) = match part {
                Part::Here(store) => store.user_conversations(user, after, limit)?,
                Part::There(node) => {
                    node.ask::<(Vec<ConversationId>, bool)>(Read::UserConversations {
                        user,
                        after,
                        limit: u32::try_from(limit).unwrap_or(u32::MAX),
                    })?
                }
            };
            all.extend(found);
            more |= left;
        }
        all.sort_by_key(|c| keys::conversation(*c));
        if all.len() > limit {
            all.truncate(limit);
            more = true;
        }
        Ok((all, more))
    }

    /// How many rooms `user` is in, over every partition, counting no further than `max`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn room_count(&self, user: UserId, max: u32) -> Result<u32, Error> {
        let mut count = 0;
        for part in self.parts()? {
            if count >= max {
                break;
            }
            count += match part {
                Part::Here(store) => store.room_count(user, max - count)?,
                Part::There(node) => node.ask::<u32>(Read::RoomCount(user, max - count))?,
            };
        }
        Ok(count)
    }

    /// The first of `others` whose presence `user` may not follow, if any. A user may follow
    /// themselves, anyone they have a direct conversation with, and the members of the rooms
    /// they are in (at most `max_rooms_per_user` rooms are looked at per user), taken from
    /// every partition.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn presence_forbidden(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<Option<UserId>, Error> {
        let mut rooms = Vec::new();
        for part in self.parts()? {
            rooms.extend(match part {
                Part::Here(store) => store.rooms_of(user)?,
                Part::There(node) => node.ask::<Vec<RoomId>>(Read::RoomsOf(user))?,
            });
        }
        'others: for &other in others {
            if other == user {
                continue;
            }
            let direct = ConversationId::direct(user, other);
            let is_in = match self.part(self.map.of_conversation(direct))? {
                Part::Here(store) => store.is_in(user, direct)?,
                Part::There(node) => node.ask::<bool>(Read::IsIn(user, direct))?,
            };
            if is_in {
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

    /// See [`CatchUp`]: the next page of a catch-up, over the user's conversations in every
    /// partition.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn catch_up_page(
        &self,
        catch_up: &mut CatchUp,
        max_bytes: usize,
    ) -> Result<Vec<ReplayItem>, Error> {
        catch_up.page(self, max_bytes)
    }
}

/// The next user and room ids of each partition. An id is its partition's
/// [`PartitionMap::first_id`] plus a counter, so the partition of an id is its top byte and a
/// single node's ids are 1, 2, 3, ... as they always were.
pub struct NextIds {
    map: PartitionMap,
    users: Vec<AtomicU64>,
    rooms: Vec<AtomicU64>,
}

impl NextIds {
    /// The ids after the highest each partition of `stores` holds.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn after(stores: &Stores) -> Result<NextIds, Error> {
        let map = stores.map();
        let zero = || (0..map.count()).map(|_| AtomicU64::new(0)).collect();
        let ids = NextIds {
            map,
            users: zero(),
            rooms: zero(),
        };
        for (p, store) in stores.held() {
            ids.load(p, &store)?;
        }
        Ok(ids)
    }

    /// Continues partition `p`'s ids after the highest `store` holds (when the node takes
    /// the partition: another node may have handed out ids meanwhile).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn load(&self, p: usize, store: &Store) -> Result<(), Error> {
        let next = |highest: u64| highest.max(self.map.first_id(p)) + 1;
        self.users[p].store(next(store.max_user_id()?), Ordering::Release);
        self.rooms[p].store(next(store.max_room_id()?), Ordering::Release);
        Ok(())
    }

    /// A new user id, in the partition that claims `name`.
    pub fn user(&self, name: &str) -> UserId {
        UserId(Self::take(&self.users, self.map.of_name(name)))
    }

    /// A new room id, in the partition that claims `name`.
    pub fn room(&self, name: &str) -> RoomId {
        RoomId(Self::take(&self.rooms, self.map.of_name(name)))
    }

    fn take(next: &[AtomicU64], p: usize) -> u64 {
        next[p].fetch_add(1, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests;
