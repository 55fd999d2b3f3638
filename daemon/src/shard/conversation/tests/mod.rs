//! The conversation rules, driven by inputs alone: no socket, no store, no clock.

mod changes;
mod reactions;
mod rooms;

use std::collections::HashSet;

use chat_protocol::{ContentType, HistoryFrom, OpId, Order, Timestamp};

use super::*;
use crate::shard::ConnRef;
use crate::store::{MemberState, RoomRecord, outbox};

const ROOM: ConversationId = ConversationId::Room(RoomId(77));

/// A shard's conversations with a settable clock, configuration and set of online users.
struct World {
    conversations: Conversations,
    now: u64,
    max_room_members: u32,
    outbox: bool,
    online: HashSet<UserId>,
}

impl World {
    fn new() -> World {
        World {
            conversations: Conversations::default(),
            now: 1_000,
            max_room_members: 100,
            outbox: false,
            online: HashSet::new(),
        }
    }

    fn with_ctx(
        &mut self,
        f: impl FnOnce(&mut Conversations, &Ctx<'_>, &mut Vec<Effect>),
    ) -> Vec<Effect> {
        let online = &self.online;
        let online = |user| online.contains(&user);
        let ctx = Ctx {
            now: Timestamp(self.now),
            max_page: 100,
            max_room_members: self.max_room_members,
            dedupe_window: 4,
            dedupe_cache: 64,
            outbox: self.outbox,
            online: &online,
        };
        let mut out = Vec::new();
        f(&mut self.conversations, &ctx, &mut out);
        out
    }

    fn input(&mut self, id: ConversationId, input: Input) -> Vec<Effect> {
        self.with_ctx(|c, ctx, out| c.handle(id, input, ctx, out))
    }

    fn loaded(
        &mut self,
        id: ConversationId,
        snapshot: Option<ConversationSnapshot>,
    ) -> Vec<Effect> {
        self.with_ctx(|c, ctx, out| c.loaded(id, Ok(snapshot), ctx, out))
    }

    /// Gives a send, answering the read of its sender's window (empty) if one is asked for.
    fn send_warm(&mut self, id: ConversationId, input: Input) -> Vec<Effect> {
        let out = self.input(id, input);
        match out[..] {
            [
                Effect::ReadSenderOps {
                    sender, instance, ..
                },
            ] => self.input(
                id,
                Input::SenderOps {
                    instance,
                    sender,
                    result: Ok(Vec::new()),
                },
            ),
            _ => out,
        }
    }

    fn committed(&mut self, id: ConversationId) -> Vec<Effect> {
        self.input(id, Input::Committed(Ok(())))
    }

    /// Loads `id` as stored with `head` (and `room`), with no sender's window cold.
    fn ready(
        &mut self,
        id: ConversationId,
        head: u64,
        room: Option<(RoomRecord, Vec<(UserId, MemberState)>)>,
    ) {
        let probe = origin(u64::MAX, 0);
        let query = history_query(id, 1);
        assert!(matches!(
            self.input(
                id,
                Input::History {
                    origin: probe,
                    query
                }
            )[..],
            [Effect::Load(_)]
        ));
        let snapshot = ConversationSnapshot {
            head: Seq(head),
            room,
            marks: Vec::new(),
            tip: Default::default(),
        };
        self.loaded(id, Some(snapshot));
    }
}

fn origin(user: u64, request: u32) -> Origin {
    Origin::for_test(user, request)
}

fn send(user: u64, request: u32, id: ConversationId, op: u64) -> Input {
    Input::Send {
        origin: origin(user, request),
        message: SendMessage {
            conversation: id,
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: format!("op {op}").into_bytes(),
            mentions: Vec::new(),
        },
    }
}

fn history_query(id: ConversationId, limit: u16) -> HistoryQuery {
    HistoryQuery {
        conversation: id,
        from: HistoryFrom::Latest,
        limit,
        order: Order::OldestFirst,
        thread: None,
    }
}

fn room(
    name: &str,
    invite_only: bool,
    people: &[(u64, MemberState)],
) -> Option<(RoomRecord, Vec<(UserId, MemberState)>)> {
    let record = RoomRecord {
        id: RoomId(77),
        name: name.to_owned(),
        invite_only,
        created_at: Timestamp(1),
    };
    Some((
        record,
        people.iter().map(|(u, s)| (UserId(*u), *s)).collect(),
    ))
}

fn direct() -> ConversationId {
    ConversationId::direct(UserId(1), UserId(2))
}

/// The answers in `out`: (request, answer).
fn answers(out: &[Effect]) -> Vec<(u32, Answer)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Reply { to, answer } => Some((to.request.0, answer.clone())),
            _ => None,
        })
        .collect()
}

/// The send acks in `out`: (request, seq, duplicate).
fn acks(out: &[Effect]) -> Vec<(u32, u64, bool)> {
    answers(out)
        .into_iter()
        .filter_map(|(request, answer)| match answer {
            Ok(Response::Sent(ack)) => Some((request, ack.seq.0, ack.duplicate)),
            _ => None,
        })
        .collect()
}

fn refusals(out: &[Effect]) -> Vec<(u32, ErrorCode)> {
    answers(out)
        .into_iter()
        .filter_map(|(request, answer)| answer.err().map(|r| (request, r.code)))
        .collect()
}

fn commits(out: &[Effect]) -> Vec<&Batch> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Commit { batch, .. } => Some(batch),
            _ => None,
        })
        .collect()
}

/// The entries a commit writes to the log, decoded.
fn logged(batch: &Batch) -> Vec<Entry> {
    batch
        .puts
        .iter()
        .filter(|put| put.cf == Cf::Log)
        .map(|put| Entry::decode_from(&put.value).expect("a log entry decodes"))
        .collect()
}

fn published(out: &[Effect]) -> Vec<(&Event, Vec<u64>, Option<ConnRef>)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Publish {
                event,
                audience,
                except,
            } => Some((event, audience.iter().map(|u| u.0).collect(), *except)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_send_loads_the_conversation_and_is_acked_and_published_only_once_committed() {
    let mut world = World::new();
    let id = direct();
    let out = world.input(id, send(1, 10, id, 7));
    assert!(matches!(out[..], [Effect::Load(c)] if c == id));
    // Stored with 5 entries: the sender's window is cold and read first.
    let snapshot = ConversationSnapshot {
        head: Seq(5),
        ..ConversationSnapshot::default()
    };
    let out = world.loaded(id, Some(snapshot));
    assert!(matches!(
        out[..],
        [Effect::ReadSenderOps {
            sender: UserId(1),
            rows: 4,
            ..
        }]
    ));
    let out = world.input(
        id,
        Input::SenderOps {
            instance: 1,
            sender: UserId(1),
            result: Ok(Vec::new()),
        },
    );
    assert!(
        answers(&out).is_empty(),
        "nothing is answered before the commit"
    );
    let batches = commits(&out);
    assert_eq!(batches.len(), 1);
    let entries = logged(batches[0]);
    assert_eq!(entries.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [6]);
    assert!(
        batches[0].puts.iter().any(|p| p.cf == Cf::SenderOps),
        "the op id is stored with the message"
    );

    let out = world.committed(id);
    assert_eq!(acks(&out), [(10, 6, false)]);
    let events = published(&out);
    assert_eq!(events.len(), 1);
    assert!(
        matches!(events[0].0, Event::Message(m) if m.seq == Seq(6) && m.ts == Timestamp(1_000))
    );
    assert_eq!(events[0].1, [1, 2]);
    assert_eq!(
        events[0].2,
        Some(origin(1, 10).at),
        "the sender has the ack instead"
    );
}

#[test]
fn sends_during_a_commit_go_together_in_the_next_with_contiguous_seqs() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    let out = world.input(id, send(1, 1, id, 1));
    assert_eq!(commits(&out).len(), 1);
    for (request, op) in [(2, 2), (3, 3)] {
        let out = world.input(id, send(2, request, id, op));
        assert!(
            out.is_empty(),
            "one commit per conversation in flight: {out:?}"
        );
    }
    let out = world.committed(id);
    assert_eq!(acks(&out), [(1, 1, false)]);
    let next = commits(&out);
    assert_eq!(next.len(), 1, "the queued sends go in one commit");
    let seqs: Vec<u64> = logged(next[0]).iter().map(|e| e.seq().0).collect();
    assert_eq!(seqs, [2, 3]);
    let out = world.committed(id);
    assert_eq!(acks(&out), [(2, 2, false), (3, 3, false)]);
    assert!(commits(&out).is_empty());
    assert!(world.conversations.idle());
}

#[test]
fn a_retried_op_gets_the_original_seq_while_pending_and_after() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    assert_eq!(commits(&world.input(id, send(1, 1, id, 42))).len(), 1);
    // The retry arrives while the first is with the storage thread: it waits for its ack.
    assert!(world.input(id, send(1, 2, id, 42)).is_empty());
    let out = world.committed(id);
    assert_eq!(acks(&out), [(1, 1, false), (2, 1, true)]);
    assert_eq!(published(&out).len(), 1, "published once");
    // And after the commit: answered at once, nothing stored.
    let out = world.input(id, send(1, 3, id, 42));
    assert_eq!(acks(&out), [(3, 1, true)]);
    assert!(commits(&out).is_empty());
    // The same op id from the other member is a different send.
    let out = world.input(id, send(2, 4, id, 42));
    assert_eq!(logged(commits(&out)[0])[0].seq(), Seq(2));
}

#[test]
fn a_send_that_left_the_window_deletes_its_stored_op_in_the_same_batch() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    for op in 1..=4u32 {
        world.input(id, send(1, op, id, u64::from(op)));
        world.committed(id);
    }
    // The window holds 4: the fifth send pushes the first out and deletes its row.
    let out = world.input(id, send(1, 5, id, 5));
    let batch = commits(&out)[0];
    let key = keys::sender_op(id, UserId(1), Seq(1)).to_vec();
    assert!(
        batch
            .deletes
            .iter()
            .any(|d| d.cf == Cf::SenderOps && d.key == key)
    );
    world.committed(id);
    // Beyond the window an op id is new again (documented: the window bounds retries).
    let out = world.input(id, send(1, 6, id, 1));
    assert_eq!(logged(commits(&out)[0])[0].seq(), Seq(6));
}

#[test]
fn a_failed_commit_answers_every_waiting_request_and_leaves_no_hole() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 3, None);
    let out = world.send_warm(id, send(1, 1, id, 1));
    assert_eq!(logged(commits(&out)[0])[0].seq(), Seq(4));
    assert!(world.input(id, send(1, 2, id, 2)).is_empty());
    assert!(
        world.input(id, send(1, 3, id, 1)).is_empty(),
        "a retry waits too"
    );
    let out = world.input(
        id,
        Input::Committed(Err(WriteError::Storage("disk".into()))),
    );
    assert_eq!(
        refusals(&out),
        [
            (1, ErrorCode::UNAVAILABLE),
            (3, ErrorCode::UNAVAILABLE),
            (2, ErrorCode::UNAVAILABLE)
        ]
    );
    assert!(published(&out).is_empty(), "nothing failed is visible");
    assert_eq!(world.conversations.len(), 0, "forgotten, to be reloaded");
    // Reloaded from what is stored (still 3): the next send takes 4 again.
    let out = world.input(id, send(1, 4, id, 9));
    assert!(matches!(out[..], [Effect::Load(_)]));
    let snapshot = ConversationSnapshot {
        head: Seq(3),
        ..ConversationSnapshot::default()
    };
    world.loaded(id, Some(snapshot));
    let out = world.input(
        id,
        Input::SenderOps {
            instance: 2,
            sender: UserId(1),
            result: Ok(Vec::new()),
        },
    );
    assert_eq!(logged(commits(&out)[0])[0].seq(), Seq(4));
}

#[test]
fn a_commit_the_storage_queue_refuses_answers_overloaded() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    world.input(id, send(1, 1, id, 1));
    world.input(id, send(2, 2, id, 1));
    let out = world.input(id, Input::Refused { moved: false });
    assert_eq!(
        refusals(&out),
        [(1, ErrorCode::OVERLOADED), (2, ErrorCode::OVERLOADED)]
    );
    assert_eq!(world.conversations.len(), 0);
}

#[test]
fn a_commit_refused_because_the_partition_moved_answers_unavailable() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    world.input(id, send(1, 1, id, 1));
    let out = world.input(id, Input::Refused { moved: true });
    assert_eq!(refusals(&out), [(1, ErrorCode::UNAVAILABLE)]);
    assert_eq!(world.conversations.len(), 0);
}

#[test]
fn a_cold_sender_waits_for_its_window_once_and_finds_a_stored_op() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 9, None);
    let out = world.input(id, send(1, 1, id, 5));
    assert_eq!(out.len(), 1, "one read of the window: {out:?}");
    assert!(
        world.input(id, send(1, 2, id, 6)).is_empty(),
        "parked behind the read"
    );
    assert!(!world.conversations.idle(), "a read is outstanding");
    let stored = SenderOp {
        op: OpId(5),
        seq: Seq(8),
        ts: Timestamp(500),
    };
    let out = world.input(
        id,
        Input::SenderOps {
            instance: 1,
            sender: UserId(1),
            result: Ok(vec![stored]),
        },
    );
    assert_eq!(
        acks(&out),
        [(1, 8, true)],
        "the stored send, acked as it was"
    );
    assert_eq!(logged(commits(&out)[0])[0].seq(), Seq(10));
}

#[test]
fn a_window_that_cannot_be_read_answers_the_parked_sends() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 9, None);
    world.input(id, send(1, 1, id, 5));
    let out = world.input(
        id,
        Input::SenderOps {
            instance: 1,
            sender: UserId(1),
            result: Err(ReadError::Busy),
        },
    );
    assert_eq!(refusals(&out), [(1, ErrorCode::OVERLOADED)]);
    // The next send asks again.
    let out = world.input(id, send(1, 2, id, 6));
    assert!(matches!(out[..], [Effect::ReadSenderOps { .. }]));
}

#[test]
fn outsiders_are_refused_and_nothing_is_stored_or_published() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    let stranger = origin(3, 1);
    let out = world.input(id, send(3, 1, id, 1));
    assert_eq!(refusals(&out), [(1, ErrorCode::NOT_MEMBER)]);
    let query = history_query(id, 10);
    let out = world.input(
        id,
        Input::History {
            origin: stranger,
            query,
        },
    );
    assert_eq!(refusals(&out), [(1, ErrorCode::NOT_MEMBER)]);
    let mark = Input::Mark {
        origin: stranger,
        marker: Marker::Read,
        seq: Seq(0),
    };
    assert_eq!(
        refusals(&world.input(id, mark)),
        [(1, ErrorCode::NOT_MEMBER)]
    );
    let typing = Input::Typing {
        origin: stranger,
        active: true,
    };
    assert!(world.input(id, typing).is_empty());
}

#[test]
fn history_reads_up_to_the_committed_head_and_checks_the_page_size() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    world.input(id, send(1, 1, id, 1));
    let me = origin(2, 2);
    let out = world.input(
        id,
        Input::History {
            origin: me,
            query: history_query(id, 100),
        },
    );
    assert!(
        matches!(out[..], [Effect::ReadHistory { head: Seq(0), .. }]),
        "a pending send is not readable: {out:?}"
    );
    for limit in [0, 101] {
        let out = world.input(
            id,
            Input::History {
                origin: me,
                query: history_query(id, limit),
            },
        );
        assert_eq!(refusals(&out), [(2, ErrorCode::INVALID_REQUEST)]);
    }
    world.committed(id);
    let out = world.input(
        id,
        Input::History {
            origin: me,
            query: history_query(id, 1),
        },
    );
    assert!(matches!(
        out[..],
        [Effect::ReadHistory { head: Seq(1), .. }]
    ));
}

#[test]
fn reply_to_must_name_an_existing_entry() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    for reply_to in [0, 1] {
        let Input::Send {
            origin,
            mut message,
        } = send(1, 1, id, reply_to + 10)
        else {
            unreachable!()
        };
        message.reply_to = Some(Seq(reply_to));
        let out = world.input(id, Input::Send { origin, message });
        assert_eq!(refusals(&out), [(1, ErrorCode::UNKNOWN_MESSAGE)]);
    }
}

#[test]
fn markers_only_move_forward_and_are_published_once_committed() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 4, None);
    let mark = |marker, seq| Input::Mark {
        origin: origin(2, 1),
        marker,
        seq: Seq(seq),
    };
    assert_eq!(
        refusals(&world.input(id, mark(Marker::Read, 5))),
        [(1, ErrorCode::INVALID_REQUEST)]
    );
    let out = world.input(id, mark(Marker::Read, 3));
    assert!(answers(&out).is_empty());
    assert_eq!(commits(&out)[0].puts.len(), 1, "the marker row");
    let out = world.committed(id);
    assert_eq!(answers(&out), [(1, Ok(Response::Ok))]);
    assert!(matches!(
        published(&out)[..],
        [(
            Event::Receipt(Receipt {
                marker: Marker::Read,
                seq: Seq(3),
                ..
            }),
            _,
            Some(_)
        )]
    ));
    // Reading implied delivery: delivered up to 2 changes nothing.
    let out = world.input(id, mark(Marker::Delivered, 2));
    assert_eq!(answers(&out), [(1, Ok(Response::Ok))]);
    assert!(commits(&out).is_empty());
}

#[test]
fn typing_is_published_at_once_to_the_others_and_never_stored() {
    let mut world = World::new();
    let id = direct();
    world.ready(id, 0, None);
    let out = world.input(
        id,
        Input::Typing {
            origin: origin(1, 0),
            active: true,
        },
    );
    assert!(commits(&out).is_empty() && answers(&out).is_empty());
    assert!(
        matches!(published(&out)[..], [(Event::Typing(_), _, Some(at))] if at == origin(1, 0).at)
    );
}

#[test]
fn the_outbox_event_names_the_recipients_with_no_device_online() {
    use MemberState::Member;
    let mut world = World::new();
    world.outbox = true;
    world.online.insert(UserId(2));
    let people = [
        (1, Member(Role::Owner)),
        (2, Member(Role::Member)),
        (3, Member(Role::Member)),
    ];
    world.ready(ROOM, 1, room("r", false, &people));
    let out = world.send_warm(ROOM, send(1, 1, ROOM, 1));
    let events = &commits(&out)[0].events;
    assert!(matches!(
        &events[..],
        [outbox::Event::MessageCreated { offline_recipients, .. }] if offline_recipients[..] == [UserId(3)]
    ));
}

#[test]
fn eviction_keeps_conversations_with_work_in_flight() {
    let mut world = World::new();
    let busy = direct();
    let quiet = ConversationId::direct(UserId(1), UserId(3));
    world.ready(busy, 0, None);
    world.ready(quiet, 0, None);
    world.input(busy, send(1, 1, busy, 1));
    world.conversations.evict_idle(0);
    assert_eq!(world.conversations.len(), 1, "only the idle one goes");
    assert!(!world.conversations.idle());
    world.committed(busy);
    world.conversations.evict_idle(0);
    assert_eq!(world.conversations.len(), 0);
}
