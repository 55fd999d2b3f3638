//! Reactions, mentions and threads: a reaction's rules against the message as stored, the
//! row it rewrites and the limits; a send's mentions checked against the members; the
//! thread index a reply writes.

use chat_protocol::limits::{MAX_REACTION_KINDS, MAX_REACTIONS};
use chat_protocol::{Message, ReactMessage, Reactions};

use super::*;

fn react(user: u64, request: u32, op: u64, target: u64, reaction: &str, remove: bool) -> Input {
    Input::Change {
        origin: origin(user, request),
        change: Change::React(ReactMessage {
            conversation: direct(),
            op: OpId(op),
            target: Seq(target),
            reaction: reaction.to_owned(),
            remove,
        }),
    }
}

fn message(seq: u64, reactions: Vec<Reactions>) -> Entry {
    Entry::Message(Message {
        conversation: direct(),
        seq: Seq(seq),
        ts: Timestamp(5),
        sender: UserId(1),
        op: OpId(seq),
        content_type: ContentType::TEXT,
        reply_to: None,
        body: b"as sent".to_vec(),
        edited: None,
        deleted: None,
        mentions: Vec::new(),
        reactions,
        chain: chat_protocol::Chain::default(),
    })
}

fn read_answer(world: &mut World, entry: Entry) -> Vec<Effect> {
    let seq = entry.seq();
    let result = Ok(Some(entry));
    world.input(
        direct(),
        Input::EntryRead {
            instance: 1,
            seq,
            result,
        },
    )
}

fn reactions(users: &[(&str, &[u64])]) -> Vec<Reactions> {
    users
        .iter()
        .map(|(reaction, users)| Reactions {
            reaction: (*reaction).to_owned(),
            users: users.iter().map(|u| UserId(*u)).collect(),
        })
        .collect()
}

#[test]
fn reactions_are_added_and_taken_back_once_per_user_and_rewrite_the_message() {
    let mut world = World::new();
    world.outbox = true;
    let id = direct();
    world.ready(id, 2, None);
    let out = world.send_warm(id, react(2, 1, 10, 2, "👍", false));
    assert!(
        matches!(out[..], [Effect::ReadEntry { seq: Seq(2), .. }]),
        "{out:?}"
    );
    // While the message is read, more reactions wait for it, in order.
    for input in [
        react(1, 2, 11, 2, "👍", false),
        react(2, 3, 12, 2, "👍", false),
        react(1, 4, 13, 2, "🎉", true),
        react(2, 5, 14, 2, "🎉", false),
        react(2, 6, 15, 2, "👍", true),
    ] {
        let out = world.send_warm(id, input);
        assert!(out.is_empty(), "{out:?}");
    }
    let out = read_answer(&mut world, message(2, Vec::new()));
    assert_eq!(
        refusals(&out),
        [(3, ErrorCode::ALREADY_REACTED), (4, ErrorCode::NOT_REACTED)]
    );
    let batches = commits(&out);
    let written = logged(batches[0]);
    // The message's row, written once with the four accepted reactions, and their
    // entries.
    let messages: Vec<&Message> = written
        .iter()
        .filter_map(|e| match e {
            Entry::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].reactions,
        reactions(&[("👍", &[1]), ("🎉", &[2])])
    );
    let entries: Vec<(u64, u64, &str, bool)> = written
        .iter()
        .filter_map(|e| match e {
            Entry::Reaction(r) => Some((r.seq.0, r.sender.0, r.reaction.as_str(), r.removed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        entries,
        [
            (3, 2, "👍", false),
            (4, 1, "👍", false),
            (5, 2, "🎉", false),
            (6, 2, "👍", true)
        ]
    );
    assert!(
        batches[0]
            .events
            .iter()
            .all(|e| matches!(e, outbox::Event::MessageReacted { target: Seq(2), .. }))
    );
    assert_eq!(batches[0].events.len(), 4);
    let out = world.committed(id);
    assert_eq!(
        acks(&out),
        [(1, 3, false), (2, 4, false), (5, 5, false), (6, 6, false)]
    );
    assert!(matches!(published(&out)[0].0, Event::Reaction(r) if r.seq == Seq(3)));
    // A retry of an acked reaction gets its ack again and changes nothing.
    let out = world.input(id, react(2, 7, 10, 2, "👍", false));
    assert_eq!(acks(&out), [(7, 3, true)]);
}

#[test]
fn reactions_are_refused_beyond_the_limits_on_deleted_messages_and_to_outsiders() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 3, None);
    // Every kind taken: a new kind is refused, a taken one is not.
    let kinds: Vec<String> = (0..MAX_REACTION_KINDS).map(|k| format!("r{k}")).collect();
    let full: Vec<Reactions> = kinds
        .iter()
        .map(|k| Reactions {
            reaction: k.clone(),
            users: vec![UserId(1)],
        })
        .collect();
    let out = world.send_warm(id, react(2, 1, 10, 2, "new", false));
    assert!(matches!(out[..], [Effect::ReadEntry { .. }]));
    world.send_warm(id, react(2, 2, 11, 2, "r0", false));
    let out = read_answer(&mut world, message(2, full));
    assert_eq!(refusals(&out), [(1, ErrorCode::TOO_MANY_REACTIONS)]);
    assert_eq!(acks(&world.committed(id)), [(2, 4, false)]);
    // Every reaction taken: no user may add one, a user may take theirs back.
    let many = vec![Reactions {
        reaction: "👍".into(),
        users: (100..100 + MAX_REACTIONS as u64).map(UserId).collect(),
    }];
    world.send_warm(id, react(2, 3, 12, 3, "👍", false));
    world.send_warm(id, react(2, 4, 13, 3, "👍", true));
    let out = read_answer(&mut world, message(3, many));
    assert_eq!(
        refusals(&out),
        [
            (3, ErrorCode::TOO_MANY_REACTIONS),
            (4, ErrorCode::NOT_REACTED)
        ]
    );
    // A deleted message takes no reaction; an outsider none at all.
    let Entry::Message(mut deleted) = message(1, Vec::new()) else {
        unreachable!()
    };
    deleted.deleted = Some(chat_protocol::Deleted {
        seq: Seq(4),
        ts: Timestamp(6),
        by: UserId(1),
    });
    world.send_warm(id, react(2, 5, 14, 1, "👍", false));
    let out = read_answer(&mut world, Entry::Message(deleted));
    assert_eq!(refusals(&out), [(5, ErrorCode::MESSAGE_DELETED)]);
    let out = world.send_warm(id, react(3, 6, 15, 2, "👍", false));
    let out = if out.is_empty() {
        read_answer(&mut world, message(2, Vec::new()))
    } else {
        out
    };
    assert_eq!(refusals(&out), [(6, ErrorCode::NOT_MEMBER)]);
}

#[test]
fn a_delete_takes_the_reactions_with_the_body() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 2, None);
    let delete = Input::Change {
        origin: origin(1, 1),
        change: Change::Delete(chat_protocol::DeleteMessage {
            conversation: id,
            op: OpId(9),
            target: Seq(2),
        }),
    };
    world.send_warm(id, delete);
    let out = read_answer(&mut world, message(2, reactions(&[("👍", &[1, 2])])));
    let written = logged(commits(&out)[0]);
    assert!(
        matches!(&written[0], Entry::Message(m) if m.reactions.is_empty() && m.body.is_empty()),
        "{written:?}"
    );
}

fn send_with(user: u64, request: u32, op: u64, reply_to: Option<u64>, mentions: &[u64]) -> Input {
    let Input::Send {
        origin,
        mut message,
    } = send(user, request, direct(), op)
    else {
        unreachable!()
    };
    message.reply_to = reply_to.map(Seq);
    message.mentions = mentions.iter().map(|u| UserId(*u)).collect();
    Input::Send { origin, message }
}

#[test]
fn mentions_name_members_and_reach_the_outbox() {
    let mut world = World::new();
    world.outbox = true;
    let id = direct();
    world.ready(id, 1, None);
    let out = world.send_warm(id, send_with(1, 1, 10, None, &[2, 3]));
    assert_eq!(refusals(&out), [(1, ErrorCode::INVALID_MENTION)]);
    let out = world.send_warm(id, send_with(1, 2, 11, None, &[2]));
    let batch = commits(&out)[0];
    assert!(matches!(&logged(batch)[..], [Entry::Message(m)] if m.mentions == [UserId(2)]));
    assert!(matches!(
        &batch.events[..],
        [outbox::Event::MessageCreated { mentions, .. }] if mentions[..] == [UserId(2)]
    ));
}

#[test]
fn a_reply_is_indexed_in_its_roots_thread_in_its_own_commit() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 3, None);
    let out = world.send_warm(id, send_with(2, 1, 10, Some(2), &[]));
    let threads: Vec<&[u8]> = commits(&out)[0]
        .puts
        .iter()
        .filter(|put| put.cf == Cf::Threads)
        .map(|put| &put.key[..])
        .collect();
    assert_eq!(threads, [&keys::thread(id, Seq(2), Seq(4))[..]]);
    // A thread's root must be committed; `None` pages the whole log.
    for (root, refused) in [(0, true), (4, true), (3, false)] {
        let mut query = history_query(id, 10);
        query.thread = Some(Seq(root));
        let history = Input::History {
            origin: origin(1, 2),
            query,
        };
        let out = world.input(id, history);
        if refused {
            assert_eq!(refusals(&out), [(2, ErrorCode::UNKNOWN_MESSAGE)], "{root}");
        } else {
            assert!(matches!(out[..], [Effect::ReadHistory { .. }]), "{out:?}");
        }
    }
}
