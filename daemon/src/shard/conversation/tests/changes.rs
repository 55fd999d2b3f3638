//! Edits and deletes: the read of the message they change, the rights, the rows a commit
//! rewrites, changes that wait for a commit, and retries.

use chat_protocol::{DeleteMessage, Deletion, EditMessage, Erased, Message};

use super::*;

fn edit(user: u64, request: u32, id: ConversationId, op: u64, target: u64, text: &str) -> Input {
    Input::Change {
        origin: origin(user, request),
        change: Change::Edit(EditMessage {
            conversation: id,
            op: OpId(op),
            target: Seq(target),
            content_type: ContentType::TEXT,
            body: text.as_bytes().to_vec(),
        }),
    }
}

fn delete(user: u64, request: u32, id: ConversationId, op: u64, target: u64) -> Input {
    Input::Change {
        origin: origin(user, request),
        change: Change::Delete(DeleteMessage {
            conversation: id,
            op: OpId(op),
            target: Seq(target),
        }),
    }
}

fn stored_message(id: ConversationId, seq: u64, sender: u64) -> Entry {
    Entry::Message(Message {
        conversation: id,
        seq: Seq(seq),
        ts: Timestamp(5),
        sender: UserId(sender),
        op: OpId(seq),
        content_type: ContentType::TEXT,
        reply_to: None,
        body: b"as sent".to_vec(),
        edited: None,
        deleted: None,
        mentions: Vec::new(),
        reactions: Vec::new(),
        chain: chat_protocol::Chain::default(),
    })
}

/// The entry reads in `out`.
fn entry_reads(out: &[Effect]) -> Vec<u64> {
    out.iter()
        .filter_map(|e| match e {
            Effect::ReadEntry { seq, .. } => Some(seq.0),
            _ => None,
        })
        .collect()
}

fn read_answer(world: &mut World, id: ConversationId, entry: Entry) -> Vec<Effect> {
    let seq = entry.seq();
    let result = Ok(Some(entry));
    let instance = 1;
    world.input(
        id,
        Input::EntryRead {
            instance,
            seq,
            result,
        },
    )
}

/// The (key seq, entry) of every log row a commit writes, by seq.
fn rows(batch: &Batch, id: ConversationId) -> Vec<(u64, Entry)> {
    let mut rows: Vec<(u64, Entry)> = batch
        .puts
        .iter()
        .filter(|put| put.cf == Cf::Log)
        .map(|put| {
            let seq = keys::log_seq(id, &put.key).expect("a log key").0;
            (seq, Entry::decode_from(&put.value).expect("a log entry"))
        })
        .collect();
    rows.sort_by_key(|(seq, _)| *seq);
    rows
}

#[test]
fn an_edit_reads_its_message_once_then_rewrites_it_with_the_new_entry() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 3, None);
    // A window read for the sender's op ids first, then the message's read.
    let out = world.send_warm(id, edit(1, 1, id, 100, 2, "fixed"));
    assert_eq!(entry_reads(&out), [2]);
    // A second edit of the same message waits for the same read.
    let out = world.input(id, edit(1, 2, id, 101, 2, "fixed again"));
    assert!(out.is_empty(), "{out:?}");
    let out = read_answer(&mut world, id, stored_message(id, 2, 1));
    let batches = commits(&out);
    assert_eq!(batches.len(), 1);
    let written = rows(batches[0], id);
    // The message's row (written once, after both edits) and the two edits' entries.
    let seqs: Vec<u64> = written.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2, 4, 5]);
    let Entry::Message(m) = &written[0].1 else {
        panic!("{written:?}");
    };
    let edited = m.edited.as_ref().expect("edited");
    assert_eq!(m.body, b"as sent");
    assert_eq!(
        (edited.versions.as_slice(), edited.body.as_slice()),
        (&[Seq(4), Seq(5)][..], &b"fixed again"[..])
    );
    assert!(matches!(&written[1].1, Entry::Edit(e) if e.target == Seq(2) && e.body == b"fixed"));
    let out = world.committed(id);
    assert_eq!(acks(&out), [(1, 4, false), (2, 5, false)]);
    let events = published(&out);
    assert!(matches!(events[0].0, Event::Edit(e) if e.seq == Seq(4)));
    assert_eq!(events[0].2, Some(origin(1, 1).at), "the editor has the ack");
    // Committed: the message is as stored now, and the next change reads it again.
    assert!(world.conversations.idle());
    let out = world.input(id, edit(1, 3, id, 102, 2, "third"));
    assert_eq!(entry_reads(&out), [2]);
}

#[test]
fn a_retry_that_waits_beside_its_first_attempt_is_applied_once() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 2, None);
    let out = world.send_warm(id, edit(1, 1, id, 100, 2, "once"));
    assert_eq!(entry_reads(&out), [2]);
    // The retry (same op id) arrives while the first attempt waits for the read.
    assert!(world.input(id, edit(1, 2, id, 100, 2, "once")).is_empty());
    let out = read_answer(&mut world, id, stored_message(id, 2, 1));
    let seqs: Vec<u64> = rows(commits(&out)[0], id).iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2, 3], "one rewrite, one edit");
    assert_eq!(acks(&world.committed(id)), [(1, 3, false), (2, 3, true)]);
}

#[test]
fn changes_are_checked_against_the_message() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 3, None);
    for (request, input) in [
        (1, edit(2, 1, id, 1, 2, "not mine")),
        (2, delete(2, 2, id, 2, 2)),
    ] {
        let out = world.send_warm(id, input);
        let out = if entry_reads(&out).is_empty() {
            out
        } else {
            read_answer(&mut world, id, stored_message(id, 2, 1))
        };
        assert_eq!(refusals(&out), [(request, ErrorCode::NOT_AUTHOR)]);
    }
    // Beyond the head, seq 0, an entry that is not a message.
    let out = world.send_warm(id, edit(1, 3, id, 3, 4, "x"));
    assert_eq!(refusals(&out), [(3, ErrorCode::UNKNOWN_MESSAGE)]);
    let out = world.input(id, edit(1, 4, id, 4, 0, "x"));
    assert_eq!(refusals(&out), [(4, ErrorCode::UNKNOWN_MESSAGE)]);
    let out = world.input(id, edit(1, 5, id, 5, 1, "x"));
    assert_eq!(entry_reads(&out), [1]);
    let erased = Entry::Erased(Erased {
        conversation: id,
        seq: Seq(1),
        target: Seq(3),
        deletion: Seq(3),
        chain: chat_protocol::Chain::default(),
    });
    let out = read_answer(&mut world, id, erased);
    assert_eq!(refusals(&out), [(5, ErrorCode::UNKNOWN_MESSAGE)]);
    // A read that fails answers every change that waited for it.
    let out = world.input(id, delete(1, 6, id, 6, 3));
    assert_eq!(entry_reads(&out), [3]);
    let result = Err(ReadError::Busy);
    let out = world.input(
        id,
        Input::EntryRead {
            instance: 1,
            seq: Seq(3),
            result,
        },
    );
    assert_eq!(refusals(&out), [(6, ErrorCode::OVERLOADED)]);
    assert!(world.conversations.idle());
}

#[test]
fn a_delete_erases_the_message_and_its_edits_in_one_commit() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 1, None);
    let out = world.send_warm(id, edit(1, 1, id, 10, 1, "v1"));
    assert_eq!(entry_reads(&out), [1]);
    assert_eq!(
        commits(&read_answer(&mut world, id, stored_message(id, 1, 1))).len(),
        1
    );
    assert_eq!(acks(&world.committed(id)), [(1, 2, false)]);
    // The delete of a message whose edit is committed: one read, one commit.
    let out = world.input(id, delete(1, 2, id, 11, 1));
    assert_eq!(entry_reads(&out), [1]);
    let mut stored = stored_message(id, 1, 1);
    if let Entry::Message(m) = &mut stored {
        m.edited = Some(chat_protocol::Edited {
            versions: vec![Seq(2)],
            ts: Timestamp(6),
            content_type: ContentType::TEXT,
            body: b"v1".to_vec(),
        });
    }
    let out = read_answer(&mut world, id, stored);
    let written = rows(commits(&out)[0], id);
    let Entry::Message(m) = &written[0].1 else {
        panic!("{written:?}");
    };
    assert!(m.body.is_empty() && m.edited.is_none());
    assert_eq!(m.deleted.map(|d| d.seq), Some(Seq(3)));
    assert_eq!(
        written[1],
        (
            2,
            Entry::Erased(Erased {
                conversation: id,
                seq: Seq(2),
                target: Seq(1),
                deletion: Seq(3),
                chain: chat_protocol::Chain::default(),
            })
        )
    );
    assert!(matches!(
        &written[2].1,
        Entry::Deletion(Deletion { seq: Seq(3), erased, .. }) if erased == &[Seq(2)]
    ));
    let out = world.committed(id);
    assert_eq!(acks(&out), [(2, 3, false)]);
    // A retry is the first delete's ack; a new delete finds it deleted.
    let out = world.input(id, delete(1, 3, id, 11, 1));
    assert_eq!(acks(&out), [(3, 3, true)]);
    let out = world.input(id, delete(1, 4, id, 12, 1));
    assert_eq!(entry_reads(&out), [1]);
    let out = read_answer(&mut world, id, Entry::Message(m.clone()));
    assert_eq!(refusals(&out), [(4, ErrorCode::MESSAGE_DELETED)]);
}

#[test]
fn a_change_of_an_entry_in_the_commit_in_flight_waits_for_it() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    assert_eq!(commits(&world.input(id, send(1, 1, id, 1))).len(), 1);
    // Seq 1 is being committed: its edit waits, with no read.
    assert!(world.input(id, edit(1, 2, id, 2, 1, "edited")).is_empty());
    let out = world.committed(id);
    assert_eq!(acks(&out), [(1, 1, false)]);
    assert_eq!(entry_reads(&out), [1], "then reads the committed message");
    let out = read_answer(&mut world, id, stored_message(id, 1, 1));
    assert_eq!(rows(commits(&out)[0], id).len(), 2);
    // A delete while that edit is in flight waits for it too: it must erase its row after,
    // and reads the message as that commit left it.
    assert!(world.input(id, delete(1, 3, id, 3, 1)).is_empty());
    let out = world.committed(id);
    assert_eq!(acks(&out), [(2, 2, false)]);
    assert_eq!(entry_reads(&out), [1]);
    let mut stored = stored_message(id, 1, 1);
    if let Entry::Message(m) = &mut stored {
        m.edited = Some(chat_protocol::Edited {
            versions: vec![Seq(2)],
            ts: Timestamp(1_000),
            content_type: ContentType::TEXT,
            body: b"edited".to_vec(),
        });
    }
    let out = read_answer(&mut world, id, stored);
    let written = rows(commits(&out)[0], id);
    let seqs: Vec<u64> = written.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "the message, its erased edit, the deletion"
    );
    assert_eq!(acks(&world.committed(id)), [(3, 3, false)]);
    assert!(world.conversations.idle());
}

#[test]
fn in_a_room_admins_delete_anyones_message_members_their_own() {
    let mut world = World::new();
    let people = [
        (1, MemberState::Member(Role::Owner)),
        (2, MemberState::Member(Role::Admin)),
        (3, MemberState::Member(Role::Member)),
        (4, MemberState::Member(Role::Member)),
    ];
    world.ready(ROOM, 9, room("r", false, &people));
    let out = world.send_warm(ROOM, delete(4, 1, ROOM, 1, 5));
    let out = if entry_reads(&out).is_empty() {
        out
    } else {
        read_answer(&mut world, ROOM, stored_message(ROOM, 5, 3))
    };
    assert_eq!(refusals(&out), [(1, ErrorCode::NOT_AUTHOR)]);
    let out = world.send_warm(ROOM, delete(2, 2, ROOM, 2, 5));
    let out = if entry_reads(&out).is_empty() {
        out
    } else {
        read_answer(&mut world, ROOM, stored_message(ROOM, 5, 3))
    };
    assert_eq!(commits(&out).len(), 1, "{out:?}");
    assert_eq!(acks(&world.committed(ROOM)), [(2, 10, false)]);
}

#[test]
fn a_read_asked_for_before_the_conversation_was_forgotten_is_not_taken_for_a_new_one() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 2, None);
    let out = world.send_warm(id, edit(1, 1, id, 10, 2, "first"));
    assert_eq!(entry_reads(&out), [2]);
    // A send of the other member fails to commit: the conversation is forgotten, and the
    // edit that waited for its read is answered.
    assert_eq!(commits(&world.send_warm(id, send(2, 2, id, 20))).len(), 1);
    let failed = Input::Committed(Err(WriteError::Storage("disk".into())));
    assert_eq!(refusals(&world.input(id, failed)).len(), 2);
    // Loaded again, the next edit asks for the message again.
    assert!(matches!(
        world.input(id, edit(1, 3, id, 11, 2, "second"))[..],
        [Effect::Load(_)]
    ));
    let snapshot = ConversationSnapshot {
        head: Seq(2),
        ..ConversationSnapshot::default()
    };
    let out = world.loaded(id, Some(snapshot));
    let [Effect::ReadSenderOps { instance, .. }] = out[..] else {
        panic!("{out:?}");
    };
    assert_ne!(instance, 1, "a new load, a new instance");
    let result = Ok(Vec::new());
    let sender = UserId(1);
    let out = world.input(
        id,
        Input::SenderOps {
            instance,
            sender,
            result,
        },
    );
    assert_eq!(entry_reads(&out), [2]);
    // The first load's read arrives now: it is not the answer this load waits for.
    let stale = Input::EntryRead {
        instance: 1,
        seq: Seq(2),
        result: Ok(Some(stored_message(id, 2, 1))),
    };
    assert!(world.input(id, stale).is_empty());
    let fresh = Input::EntryRead {
        instance,
        seq: Seq(2),
        result: Ok(Some(stored_message(id, 2, 1))),
    };
    assert_eq!(commits(&world.input(id, fresh)).len(), 1);
}
