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

use super::{
    CatchUp, ConversationSnapshot, Error, MemberState, ReplayItem, RoomRecord, SenderOp, Store,
    UserRecord, keys,
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
/// removes partitions as their ownership moves ([`Stores::install`], [`Stores::remove`]), and
/// a read of a partition it does not hold fails with [`Error::NotHere`].
#[derive(Clone)]
pub struct Stores {
    map: PartitionMap,
    slots: Arc<[arc_swap::ArcSwapOption<Store>]>,
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
        }
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
        self.of_id(id.0)?.user(id)
    }

    /// See [`Store::user_by_name`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, Error> {
        self.of_name(name)?.user_by_name(name)
    }

    /// See [`Store::room`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room(&self, id: RoomId) -> Result<Option<RoomRecord>, Error> {
        self.of_id(id.0)?.room(id)
    }

    /// See [`Store::room_by_name`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn room_by_name(&self, name: &str) -> Result<Option<RoomRecord>, Error> {
        self.of_name(name)?.room_by_name(name)
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
        self.of_conversation(c)?
            .history(c, from, limit, order, head)
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
        self.of_conversation(c)?.head(c)
    }

    /// See [`Store::marks`].
    ///
    /// # Errors
    /// RocksDB errors or a corrupt marker.
    pub fn marks(&self, c: ConversationId, user: UserId) -> Result<(Seq, Seq), Error> {
        self.of_conversation(c)?.marks(c, user)
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
        self.of_id(room.0)?.member_state(room, user)
    }

    /// Every conversation `user` sent in, over every partition ([`Store::conversations_of`]),
    /// in key order.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>, Error> {
        let mut all = Vec::new();
        for store in self.all()? {
            all.extend(store.conversations_of(user)?);
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
        let stores = self.all()?;
        if let [store] = stores.as_slice() {
            return store.user_conversations(user, after, limit);
        }
        let mut all = Vec::new();
        let mut more = false;
        for store in &stores {
            let (found, left) = store.user_conversations(user, after, limit)?;
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
        for store in self.all()? {
            if count >= max {
                break;
            }
            count += store.room_count(user, max - count)?;
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
        for store in self.all()? {
            rooms.extend(store.rooms_of(user)?);
        }
        'others: for &other in others {
            if other == user {
                continue;
            }
            let direct = ConversationId::direct(user, other);
            if self.of_conversation(direct)?.is_in(user, direct)? {
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
mod tests {
    use chat_protocol::Role;

    use super::*;
    use crate::store::Cf;

    fn open(count: usize) -> (tempfile::TempDir, Stores) {
        let dir = tempfile::tempdir().unwrap();
        let stores = (0..count)
            .map(|p| Store::open(&dir.path().join(format!("{p:03}"))).unwrap())
            .collect();
        (dir, Stores::partitioned(stores))
    }

    fn put(store: &Store, cf: Cf, key: &[u8], value: &[u8]) {
        store
            .db()
            .put_cf(store.cf(cf).unwrap(), key, value)
            .unwrap();
    }

    /// What a join or a first message writes for `user`: a row of the user's conversation
    /// index, in the conversation's partition.
    fn index(stores: &Stores, user: UserId, c: ConversationId) {
        let key = keys::user_conversation(user, c);
        put(
            &stores.of_conversation(c).unwrap(),
            Cf::UserConversations,
            &key,
            b"",
        );
    }

    fn user_in(map: PartitionMap, p: usize, n: u64) -> UserId {
        UserId(map.first_id(p) + n)
    }

    #[test]
    fn a_single_node_keeps_everything_in_partition_zero() {
        let map = PartitionMap::SINGLE;
        for c in [
            ConversationId::direct(UserId(1), UserId(2)),
            ConversationId::Notes(UserId(5)),
            ConversationId::Room(RoomId(7)),
        ] {
            assert_eq!(map.of_conversation(c), 0);
        }
        assert_eq!((map.of_name("alice"), map.first_id(0)), (0, 0));
    }

    #[test]
    fn ids_names_and_conversations_find_their_partition() {
        let map = PartitionMap::new(16);
        let first = map.first_id(5);
        assert_eq!(first, 5 << ID_BITS);
        assert_eq!(map.of_id(first + 1), 5);
        assert_eq!(
            map.of_conversation(ConversationId::Room(RoomId(first + 9))),
            5
        );
        assert_eq!(
            map.of_conversation(ConversationId::Notes(UserId(first + 3))),
            5
        );
        // Direct conversations reach every partition, and one partition's conversations
        // reach both shards of a two-shard node (shards take FNV-1a modulo 2).
        let mut seen = [[0u32; 2]; 16];
        for a in 1..300u64 {
            for b in a + 1..a + 4 {
                let c = ConversationId::direct(UserId(a), UserId(b));
                let shard = usize::from(fnv1a(&keys::conversation(c)) % 2 == 1);
                seen[map.of_conversation(c)][shard] += 1;
            }
        }
        for (p, shards) in seen.iter().enumerate() {
            assert!(shards[0] > 0 && shards[1] > 0, "partition {p}: {shards:?}");
        }
        let names: std::collections::HashSet<_> =
            (0..200).map(|i| map.of_name(&format!("user{i}"))).collect();
        assert_eq!(names.len(), 16);
    }

    #[test]
    fn a_users_conversations_are_listed_across_partitions_in_key_order() {
        let (_dir, stores) = open(3);
        let map = stores.map();
        let alice = user_in(map, 0, 1);
        let mut expected = vec![ConversationId::Notes(alice)];
        for p in 0..3 {
            expected.push(ConversationId::Room(RoomId(map.first_id(p) + 1)));
            expected.push(ConversationId::Room(RoomId(map.first_id(p) + 2)));
            for n in 2..5 {
                expected.push(ConversationId::direct(alice, user_in(map, p, n)));
            }
        }
        for c in &expected {
            index(&stores, alice, *c);
        }
        // Someone else's rows are not alice's.
        index(
            &stores,
            user_in(map, 1, 9),
            ConversationId::Notes(user_in(map, 1, 9)),
        );
        let spread: std::collections::HashSet<_> =
            expected.iter().map(|c| map.of_conversation(*c)).collect();
        assert_eq!(
            spread.len(),
            3,
            "the test's conversations sit in every partition"
        );
        expected.sort_by_key(|c| keys::conversation(*c));
        let (mut listed, mut after) = (Vec::new(), None);
        loop {
            let (page, more) = stores.user_conversations(alice, after, 4).unwrap();
            assert!(page.len() <= 4);
            listed.extend(page.iter().copied());
            after = page.last().copied();
            if !more {
                break;
            }
        }
        assert_eq!(listed, expected);
        assert_eq!(stores.room_count(alice, 100).unwrap(), 6);
        assert_eq!(stores.room_count(alice, 4).unwrap(), 4);
    }

    #[test]
    fn presence_follows_rooms_and_direct_conversations_in_other_partitions() {
        let (_dir, stores) = open(3);
        let map = stores.map();
        let [alice, bob, carol, dave] =
            [(0, 7), (1, 7), (2, 7), (1, 8)].map(|(p, n)| user_in(map, p, n));
        let room = RoomId(map.first_id(2) + 1);
        index(&stores, alice, ConversationId::Room(room));
        let member = [MemberState::Member(Role::Member).to_byte()];
        put(
            &stores.of_id(room.0).unwrap(),
            Cf::Members,
            &keys::member(room, carol),
            &member,
        );
        index(&stores, alice, ConversationId::direct(alice, bob));
        assert_eq!(
            stores
                .presence_forbidden(alice, &[alice, bob, carol])
                .unwrap(),
            None
        );
        assert_eq!(
            stores.presence_forbidden(alice, &[bob, dave]).unwrap(),
            Some(dave)
        );
    }

    #[test]
    fn new_ids_carry_their_names_partition_and_follow_the_highest_stored() {
        let (_dir, stores) = open(3);
        let map = stores.map();
        let highest = user_in(map, 1, 41);
        put(
            &stores.partition(1).unwrap(),
            Cf::Users,
            &keys::id(highest.0),
            b"{}",
        );
        let ids = NextIds::after(&stores).unwrap();
        let name_in = |p: usize| {
            (0..)
                .map(|i| format!("name{i}"))
                .find(|name| map.of_name(name) == p)
                .unwrap()
        };
        assert_eq!(ids.user(&name_in(1)), UserId(highest.0 + 1));
        assert_eq!(ids.user(&name_in(0)), user_in(map, 0, 1));
        assert_eq!(ids.user(&name_in(0)), user_in(map, 0, 2));
        assert_eq!(ids.room(&name_in(2)), RoomId(map.first_id(2) + 1));
        // A single node's ids are 1, 2, 3, ... as before partitions.
        let (_dir, single) = open(1);
        let ids = NextIds::after(&Stores::single(single.partition(0).unwrap())).unwrap();
        assert_eq!((ids.user("a"), ids.user("b")), (UserId(1), UserId(2)));
    }
}
