//! The simulated clients: what they send, retry and resend, and what they check in the
//! answers (their connections are [`super::sessions`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chat_protocol::{
    ContentType, ConversationId, DeleteMessage, EditMessage, Entry, ErrorCode, OpId, ReactMessage,
    RequestId, Response, SendMessage, Seq, UserId,
};

use super::{Message, Node, WINDOW, World, sessions};
use crate::budget::UserBudget;
use crate::shard::conversation::{Change, Input};
use crate::shard::{ConnRef, Origin};

/// The reactions simulated clients use.
const REACTIONS: [&str; 2] = ["👍", "🎉"];

/// A client's send, edit, delete or reaction: where, which op, and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Send {
    pub(super) conversation: ConversationId,
    pub(super) op: OpId,
    pub(super) kind: Kind,
}

/// What a [`Send`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Post,
    /// Edit the client's own message at this seq.
    Edit(Seq),
    /// Delete it.
    Delete(Seq),
    /// Add (or take back) reaction `REACTIONS[kind]` to the client's own message at this seq.
    React {
        target: Seq,
        kind: usize,
        remove: bool,
    },
}

pub(super) struct Client {
    /// Requests sent and not answered: request id -> send.
    pub(super) waiting: HashMap<u32, Send>,
    /// Sends not acked yet (to be retried or resent after a crash).
    pub(super) unacked: Vec<Send>,
    /// The seq each acked send got.
    pub(super) acked: HashMap<Send, Seq>,
    /// Per conversation, the entries it has (events, replays, its own acks).
    pub(super) got: HashMap<ConversationId, BTreeSet<Seq>>,
    /// Its connection, and how many it had.
    pub(super) conn: Option<sessions::Conn>,
    pub(super) generation: u64,
    /// The budget its connections share.
    pub(super) budget: Arc<UserBudget>,
    pub(super) next_request: u32,
    pub(super) next_op: u64,
}

impl Client {
    pub(super) fn new() -> Client {
        Client {
            waiting: HashMap::new(),
            unacked: Vec::new(),
            acked: HashMap::new(),
            got: HashMap::new(),
            conn: None,
            generation: 0,
            budget: sessions::user_budget(),
            next_request: 0,
            next_op: 0,
        }
    }
}

impl World {
    /// A client sends (or resends) `send` as a new request.
    pub(super) fn client_sends(&mut self, user: u64, send: Send) {
        let client = self.clients.get_mut(&user).expect("a client");
        client.next_request += 1;
        let request = client.next_request;
        client.waiting.insert(request, send);
        let generation = client.generation;
        let owner = self.owner_of(send.conversation);
        let origin = Origin {
            at: ConnRef {
                link: crate::shard::Link::HERE,
                shard: 0,
                conn: sessions::conn_id(user, generation),
            },
            request: RequestId(request),
            user: UserId(user),
        };
        let body = format!("{user}/{}", send.op.0).into_bytes();
        let (conversation, op) = (send.conversation, send.op);
        let input = match send.kind {
            Kind::Post => Input::Send {
                origin,
                message: SendMessage {
                    conversation,
                    op,
                    content_type: ContentType::TEXT,
                    reply_to: None,
                    body,
                    mentions: Vec::new(),
                },
            },
            Kind::Edit(target) => Input::Change {
                origin,
                change: Change::Edit(EditMessage {
                    conversation,
                    op,
                    target,
                    content_type: ContentType::TEXT,
                    body,
                }),
            },
            Kind::Delete(target) => Input::Change {
                origin,
                change: Change::Delete(DeleteMessage {
                    conversation,
                    op,
                    target,
                }),
            },
            Kind::React {
                target,
                kind,
                remove,
            } => Input::Change {
                origin,
                change: Change::React(ReactMessage {
                    conversation,
                    op,
                    target,
                    reaction: REACTIONS[kind].to_owned(),
                    remove,
                }),
            },
        };
        self.send(
            Node::Client(user),
            Node::Shard(owner),
            Message::Input {
                conversation: send.conversation,
                input,
            },
        );
    }

    /// A new send from a random client to a random conversation of theirs (a direct one or
    /// their notes).
    pub(super) fn new_send(&mut self) {
        let user = 1 + self.rng.below(usize::try_from(self.users).unwrap_or(1)) as u64;
        let peer = 1 + self.rng.below(usize::try_from(self.users).unwrap_or(1)) as u64;
        let conversation = ConversationId::direct(UserId(user), UserId(peer));
        let client = self.clients.get_mut(&user).expect("a client");
        // Clients keep at most half a window unacked per conversation, so any retry is
        // within the daemon's deduplication window.
        let unacked = client
            .unacked
            .iter()
            .filter(|s| s.conversation == conversation)
            .count();
        if unacked >= WINDOW / 2 {
            return;
        }
        // One in five is a change of one of the client's own acked messages there: an edit,
        // a reaction added or taken back (one in four each), or a delete (one in four).
        let own: Vec<Seq> = client
            .acked
            .iter()
            .filter(|(s, _)| s.conversation == conversation && s.kind == Kind::Post)
            .map(|(_, seq)| *seq)
            .collect();
        let kind = if !own.is_empty() && self.rng.chance(20) {
            let mut own = own;
            own.sort_unstable();
            let target = own[self.rng.below(own.len())];
            match self.rng.below(4) {
                0 => Kind::Delete(target),
                1 => Kind::Edit(target),
                n => Kind::React {
                    target,
                    kind: self.rng.below(REACTIONS.len()),
                    remove: n == 3,
                },
            }
        } else {
            Kind::Post
        };
        let client = self.clients.get_mut(&user).expect("a client");
        client.next_op += 1;
        let send = Send {
            conversation,
            op: OpId(client.next_op),
            kind,
        };
        client.unacked.push(send);
        self.client_sends(user, send);
    }

    /// A client resends one of its unacked sends (a retry after an error or a reconnect).
    pub(super) fn resend(&mut self) {
        let user = 1 + self.rng.below(usize::try_from(self.users).unwrap_or(1)) as u64;
        let client = &self.clients[&user];
        if client.unacked.is_empty() {
            return;
        }
        let send = client.unacked[self.rng.below(client.unacked.len())];
        self.client_sends(user, send);
    }

    /// A message arrives at a client.
    pub(super) fn at_client(&mut self, user: u64, message: Message) {
        match message {
            Message::Answer { request, answer } => {
                let client = self.clients.get_mut(&user).expect("a client");
                let send = client
                    .waiting
                    .remove(&request.0)
                    .expect("one answer per request");
                match answer {
                    Ok(Response::Sent(ack)) => {
                        self.stats.acks += 1;
                        self.stats.duplicate_acks += u64::from(ack.duplicate);
                        assert_eq!(ack.op, send.op, "the ack names the op");
                        let first = *client.acked.entry(send).or_insert(ack.seq);
                        assert_eq!(
                            first, ack.seq,
                            "{send:?} acked as {first:?} then {:?}",
                            ack.seq
                        );
                        client.unacked.retain(|s| *s != send);
                        let got = client.got.entry(send.conversation).or_default();
                        got.insert(ack.seq);
                        // Durable before acked: stored as it, or, for an edit, as its erasure
                        // by a delete of its message since.
                        let entry = self.store.entry(send.conversation, ack.seq);
                        let erased = matches!((&entry, send.kind),
                            (Some(Entry::Erased(x)), Kind::Edit(target)) if x.target == target);
                        assert!(
                            erased
                                || entry.as_ref().and_then(Entry::op)
                                    == Some((UserId(user), send.op)),
                            "{send:?} acked as {:?}, which is not stored as it: {entry:?}",
                            ack.seq
                        );
                        self.stats.changes += u64::from(send.kind != Kind::Post);
                        self.stats.reactions += u64::from(matches!(send.kind, Kind::React { .. }));
                    }
                    // A change of a message the client deleted meanwhile (or edited as often
                    // as allowed, or a reaction it has, or has not): final, like an ack.
                    Err(refusal)
                        if send.kind != Kind::Post
                            && matches!(
                                refusal.code,
                                ErrorCode::MESSAGE_DELETED
                                    | ErrorCode::TOO_MANY_EDITS
                                    | ErrorCode::ALREADY_REACTED
                                    | ErrorCode::NOT_REACTED
                            ) =>
                    {
                        self.stats.refused_changes += 1;
                        client.unacked.retain(|s| *s != send);
                    }
                    Err(refusal) => {
                        self.stats.refusals += 1;
                        assert!(
                            matches!(refusal.code, ErrorCode::UNAVAILABLE | ErrorCode::OVERLOADED),
                            "unexpected refusal {refusal:?}"
                        );
                    }
                    Ok(other) => panic!("a send answered {other:?}"),
                }
            }
            Message::Live {
                generation,
                frame,
                at,
            } => self.live_arrived(user, generation, &frame, at),
            Message::Page {
                generation,
                frames,
                next,
            } => self.page_arrived(user, generation, frames, next),
            other => panic!("a client got {other:?}"),
        }
    }
}
