//! Conversation ownership: the shard that owns a conversation carries out what its rules
//! ask.
//!
//! The rules live in [`super::conversation`], without I/O; this module gives them their inputs
//! with the time and the running configuration ([`Ctx`]) and carries out each [`Effect`] in
//! order: answers go to the asking connection's shard, events to the shards holding sessions of
//! their audience (batched per shard, [`super::placement`]), loads and reads to the read pool,
//! commits to the storage thread, whose results come back as inputs through this shard's inbox.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use chat_protocol::{
    ConversationId, Event, HistoryPage, Member, MemberPage, Response, Seq, ServerFrame, UserId,
};

use super::conversation::{Answer, Ctx, Effect, Input, ReadError};
use super::session::Live;
use super::{Origin, Publication, Shard, ShardMsg, Written, encode, error, now_ms, response};
use crate::store::ConversationSnapshot;

/// Gives `input` to conversation `id`, owned by this shard.
pub(crate) fn handle(shard: &Rc<Shard>, id: ConversationId, input: Input) {
    let mut out = Vec::new();
    with_ctx(shard, |ctx| {
        shard.owner.borrow_mut().handle(id, input, ctx, &mut out);
    });
    carry_out(shard, out);
}

/// The read pool loaded conversation `id` (`None`: it does not exist).
pub(crate) fn loaded(
    shard: &Rc<Shard>,
    id: ConversationId,
    result: Result<Option<ConversationSnapshot>, ReadError>,
) {
    let mut out = Vec::new();
    with_ctx(shard, |ctx| {
        shard.owner.borrow_mut().loaded(id, result, ctx, &mut out);
    });
    carry_out(shard, out);
}

/// Forgets this shard's conversations of `partition` (it left this node, or has just come
/// back and must be read again from its store), answering what waits in them.
pub(crate) fn evict(shard: &Rc<Shard>, partition: usize) {
    let map = shard.shared.partitions;
    let mut out = Vec::new();
    let belongs = |c| map.of_conversation(c) == partition;
    shard.owner.borrow_mut().evict(belongs, &mut out);
    carry_out(shard, out);
}

/// Runs `f` with the current time and configuration.
fn with_ctx(shard: &Shard, f: impl FnOnce(&Ctx<'_>)) {
    let config = shard.shared.config();
    let online = |user| shard.shared.is_online(user);
    f(&Ctx {
        now: now_ms(),
        max_page: shard.shared.limits.max_page,
        max_room_members: config.limits.max_room_members,
        dedupe_window: config.storage.dedupe_window,
        dedupe_cache: config.storage.dedupe_cache,
        outbox: config.bridge.enabled(),
        online: &online,
    });
}

/// Carries out effects in order; a refused commit (the storage queue is full, or this shard
/// has as many writes in flight as its inbox has reserved slots) feeds the conversation its
/// refusal, whose effects follow.
fn carry_out(shard: &Rc<Shard>, effects: Vec<Effect>) {
    let mut queue = VecDeque::from(effects);
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Reply { to, answer } => answer_request(shard, &to, answer),
            Effect::Publish {
                event,
                audience,
                except,
            } => fan_out(shard, &audience, event, except),
            Effect::Load(id) => start_load(shard, id),
            Effect::Commit {
                conversation,
                batch,
            } => {
                let what = Written::Conversation(conversation);
                if let Err(refused) = shard.shared.commit(shard.id, batch, what) {
                    let moved = refused == super::CommitRefused::NotHere;
                    let mut more = Vec::new();
                    with_ctx(shard, |ctx| {
                        let mut owner = shard.owner.borrow_mut();
                        owner.handle(conversation, Input::Refused { moved }, ctx, &mut more);
                    });
                    queue.extend(more);
                }
            }
            Effect::ReadSenderOps {
                conversation,
                instance,
                sender,
                rows,
            } => read_sender_ops(shard, (conversation, instance), sender, rows),
            Effect::ReadEntry {
                conversation,
                instance,
                seq,
            } => read_entry(shard, (conversation, instance), seq),
            Effect::ReadHistory { to, query, head } => shard.read(to, move |store| {
                let limit = usize::from(query.limit);
                let (c, from, order) = (query.conversation, query.from, query.order);
                let (entries, more) = match query.thread {
                    Some(root) => store.thread(c, root, from, limit, order, head)?,
                    None => store.history(c, from, limit, order, head)?,
                };
                // A log page is checked from the link before its lowest entry.
                let lowest = entries.iter().map(chat_protocol::Entry::seq).min();
                let prior = match (query.thread, lowest) {
                    (None, Some(first)) => Some(store.prior(c, first)?),
                    _ => None,
                };
                let page = HistoryPage {
                    conversation: query.conversation,
                    entries,
                    head,
                    more,
                    prior,
                };
                Ok(response(to.request, Response::History(page)))
            }),
            Effect::ReadMembers {
                to,
                room,
                page,
                next,
            } => shard.read(to, move |store| {
                let mut members = Vec::with_capacity(page.len());
                for (user, role) in page {
                    let name = store.user(user)?.map(|r| r.name).unwrap_or_default();
                    members.push(Member { user, name, role });
                }
                let page = MemberPage {
                    room,
                    members,
                    next,
                };
                Ok(response(to.request, Response::Members(page)))
            }),
        }
    }
}

fn answer_request(shard: &Rc<Shard>, to: &Origin, answer: Answer) {
    if to.at.conn == super::ConnId::OPERATOR {
        return super::erase::answered(shard, to.request, answer);
    }
    let frame = match answer {
        Ok(answer) => {
            if let Response::Sent(ack) = &answer
                && !ack.duplicate
            {
                shard.metrics().sends_acknowledged.increment(1);
            }
            response(to.request, answer)
        }
        Err(refusal) => error(to.request, refusal.code, refusal.reason),
    };
    shard.reply(to, frame);
}

fn start_load(shard: &Rc<Shard>, id: ConversationId) {
    let shared = Arc::clone(&shard.shared);
    let at = shard.id;
    let submitted = shard.shared.reads.submit(move |store| {
        let result = (|| {
            // Direct conversations exist between existing users only.
            if let ConversationId::Direct { low, high } = id
                && (store.user(low)?.is_none() || store.user(high)?.is_none())
            {
                return Ok(None);
            }
            store.load_conversation(id)
        })();
        if let Err(e) = &result {
            crate::logging::throttled!(error, conversation = %id, error = %e, "loading a conversation failed");
        }
        let result = result.map_err(ReadError::from);
        shared.push_blocking(
            at,
            ShardMsg::Loaded {
                conversation: id,
                result,
            },
        );
    });
    if !submitted {
        loaded(shard, id, Err(ReadError::Busy));
    }
}

/// Reads the window of a cold sender on the read pool for `(conversation, instance)`; its
/// sends wait in the conversation.
fn read_sender_ops(shard: &Rc<Shard>, asker: (ConversationId, u64), sender: UserId, rows: usize) {
    let (id, instance) = asker;
    let answer = move |result| Input::SenderOps {
        instance,
        sender,
        result,
    };
    read_for(shard, id, answer, move |store| {
        let result = store.sender_ops(id, sender, rows);
        if let Err(e) = &result {
            crate::logging::throttled!(error, conversation = %id, error = %e, "reading a sender's recent sends failed");
        }
        result
    });
}

/// Reads a stored entry on the read pool for the changes (edits, deletes) of
/// `(conversation, instance)` that wait for it.
fn read_entry(shard: &Rc<Shard>, asker: (ConversationId, u64), seq: Seq) {
    let (id, instance) = asker;
    let answer = move |result| Input::EntryRead {
        instance,
        seq,
        result,
    };
    read_for(shard, id, answer, move |store| {
        let result = store.entry(id, seq);
        if let Err(e) = &result {
            crate::logging::throttled!(error, conversation = %id, error = %e, "reading an entry to change failed");
        }
        result
    });
}

/// Runs `read` on the read pool and gives conversation `id` (owned here) its result as the
/// input `answer` makes of it; when the pool's queue is full, gives it `ReadError::Busy` at
/// once.
fn read_for<T: Send + 'static>(
    shard: &Rc<Shard>,
    id: ConversationId,
    answer: impl FnOnce(Result<T, ReadError>) -> Input + Clone + Send + 'static,
    read: impl FnOnce(&crate::store::Stores) -> Result<T, crate::store::Error> + Send + 'static,
) {
    let shared = Arc::clone(&shard.shared);
    let at = shard.id;
    let answer_read = answer.clone();
    let submitted = shard.shared.reads.submit(move |store| {
        let op = answer_read(read(store).map_err(ReadError::from));
        shared.push_blocking(
            at,
            ShardMsg::Conversation {
                conversation: id,
                op,
            },
        );
    });
    if !submitted {
        handle(shard, id, answer(Err(ReadError::Busy)));
    }
}

/// Encodes `event` once and queues it for every shard holding a session of someone in
/// `audience` (one `Publish` per shard at the end of the loop turn), for their connections
/// except `except`, and for every peer node's feed (`crate::peer`).
fn fan_out(shard: &Shard, audience: &Arc<[UserId]>, event: Event, except: Option<super::ConnRef>) {
    let live = match (event.entry_position(), &event) {
        (Some(position), _) => Live::Entry(position),
        (None, Event::Typing(_)) => Live::Ephemeral,
        (None, _) => Live::Other,
    };
    let mut targets = Vec::new();
    shard.shared.placement.shards_of(audience, &mut targets);
    let peers = shard.shared.peers.on();
    if targets.is_empty() && !peers {
        return;
    }
    let frame = encode(&ServerFrame::Event(event));
    if peers {
        // Every node that dialed this one delivers it to its own connections of the audience.
        shard.shared.peers.publish(&frame, audience, except, live);
    }
    for target in targets {
        shard.publish(
            target,
            Publication {
                frame: frame.clone(),
                audience: Arc::clone(audience),
                except,
                live,
            },
        );
    }
}

/// Drops idle conversations beyond the configured cache.
pub(crate) fn evict_idle(shard: &Shard) {
    let cap = shard.shared.config().storage.cached_conversations;
    shard.owner.borrow_mut().evict_idle(cap);
}

/// Whether no conversation of this shard has a commit in flight or queued.
pub(crate) fn idle(shard: &Shard) -> bool {
    shard.owner.borrow().idle()
}
