//! Partition routing, merged reads across partitions, and ids that carry their partition.

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
