//! Catch-ups (resume after a reconnect, `Sync`): live log events of the connection are held
//! back while the read pool reads what the device missed, page by page as the client takes
//! it (each page reserved from the budgets before it is read, parked when it does not fit);
//! after the last page come the held-back events the replay did not already hold, then
//! `CaughtUp`.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{Entry, ErrorCode, Event, RequestId, Resume, ServerFrame};

use super::{Conn, ConnId, Kind, get, record_event_peak, reply};
use crate::budget;
use crate::shard::{Position, Shard, ShardMsg, encode, error, error_frame};
use crate::store::{CatchUp, ReplayItem};

/// Starts a catch-up: live log events are held back while the read pool collects what the
/// device missed (after its cursors, else after the user's delivered markers); `replay`
/// then sends it, the held-back events that the replay did not already hold, and `CaughtUp`.
/// Returns `false` (after answering with an error) when it cannot start.
pub(super) fn catch_up(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    resume: Resume,
    request: Option<RequestId>,
) -> bool {
    let refuse = |code: ErrorCode, reason: &str| {
        match request {
            Some(id) => reply(shard, conn.id, id, error(id, code, reason)),
            None => conn.push(encode(&error_frame(None, code, reason)), Kind::Control),
        }
        false
    };
    if resume.cursors.len() > chat_protocol::limits::MAX_RESUME_CURSORS {
        return refuse(ErrorCode::INVALID_REQUEST, "too many resume cursors");
    }
    let Some((user, _)) = conn.session() else {
        return refuse(ErrorCode::NOT_AUTHENTICATED, "");
    };
    let cursors: std::collections::HashMap<_, _> = resume
        .cursors
        .iter()
        .map(|c| (c.conversation, c.seq))
        .collect();
    conn.state.borrow_mut().gate.start(cursors.clone());
    // A catch-up also ends a lag: live events flow again after it.
    conn.out.borrow_mut().lagged = false;
    let config = shard.shared.config();
    let limits = &config.limits;
    let catch_up = CatchUp::new(
        user,
        cursors,
        u64::from(limits.max_resume_gap),
        u64::from(limits.max_replay),
    );
    next_page(shard, conn, Box::new(catch_up));
    true
}

/// Asks the read pool for the next page of a catch-up, once its largest size fits the
/// budgets; until then, or while the pool is full, the catch-up is parked and the writer
/// asks again after writing (or after [`PARKED_RETRY`]).
fn next_page(shard: &Shard, conn: &Conn, catch_up: Box<CatchUp>) {
    if !conn.try_charge(budget::REPLAY_RESERVATION) {
        // Live events held back during the catch-up may be what fills the budget: they would
        // wait for the replay to end and the replay for their room. The connection lags
        // instead (it syncs again after `CaughtUp`), and the next page gets their room.
        let held = conn.state.borrow_mut().gate.take_held();
        if !held.is_empty() {
            conn.release(held.iter().map(|(_, frame)| budget::cost(frame)).sum());
            conn.lag();
        }
        if !conn.try_charge(budget::REPLAY_RESERVATION) {
            conn.state.borrow_mut().replay_parked = Some(catch_up);
            conn.wake.notify_one();
            return;
        }
    }
    let job = PageJob {
        shared: Arc::clone(&shard.shared),
        shard: shard.id,
        conn: conn.id,
        catch_up,
    };
    if let Err(job) = shard.shared.reads.try_submit(job) {
        conn.release(budget::REPLAY_RESERVATION);
        conn.state.borrow_mut().replay_parked = Some(job.catch_up);
        conn.wake.notify_one();
    }
}

/// Reads one page of a catch-up on the read pool and sends it to the connection's shard.
struct PageJob {
    shared: Arc<crate::shard::Shared>,
    shard: crate::shard::ShardId,
    conn: ConnId,
    catch_up: Box<CatchUp>,
}

impl crate::pool::Job for PageJob {
    fn run(self: Box<Self>, store: &crate::store::Store) {
        let PageJob {
            shared,
            shard,
            conn,
            mut catch_up,
        } = *self;
        let msg = match store.catch_up_page(&mut catch_up, budget::REPLAY_PAGE) {
            Ok(items) => {
                let mut replayed = 0u32;
                let frames = items
                    .into_iter()
                    .map(|item| match item {
                        ReplayItem::Gap(gap) => {
                            (None, encode(&ServerFrame::Event(Event::Gap(gap))))
                        }
                        ReplayItem::Entry(entry) => {
                            replayed += 1;
                            let position = Some((entry.conversation(), entry.seq()));
                            let event = match entry {
                                Entry::Message(m) => Event::Message(m),
                                Entry::Membership(m) => Event::Membership(m),
                            };
                            (position, encode(&ServerFrame::Event(event)))
                        }
                    })
                    .collect();
                let next = (!catch_up.done()).then_some(catch_up);
                ShardMsg::Replay {
                    conn,
                    frames,
                    replayed,
                    next,
                }
            }
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "catch-up read failed");
                let frame = encode(&error_frame(
                    None,
                    ErrorCode::UNAVAILABLE,
                    "catch-up failed; page history",
                ));
                ShardMsg::Replay {
                    conn,
                    frames: vec![(None, frame)],
                    replayed: 0,
                    next: None,
                }
            }
        };
        shared.push_blocking(shard, msg);
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Asks for a parked catch-up page if it fits now (the writer calls this after writing).
pub(super) fn resume_parked(shard: &Shard, conn: &Conn) {
    let parked = conn.state.borrow_mut().replay_parked.take();
    if let Some(catch_up) = parked {
        next_page(shard, conn, catch_up);
    }
}

/// A page of a catch-up arrived: send it; if it was the last, then the live events held
/// back meanwhile that the replay did not already hold, then `CaughtUp`; else ask for the
/// next page.
pub(crate) fn replay(
    shard: &Shard,
    conn: ConnId,
    frames: Vec<(Option<Position>, Bytes)>,
    replayed: u32,
    next: Option<Box<CatchUp>>,
) {
    let Some(conn) = get(shard, conn) else { return };
    conn.release(budget::REPLAY_RESERVATION);
    {
        let mut state = conn.state.borrow_mut();
        if !state.gate.catching_up() {
            // The connection ended meanwhile.
            return;
        }
        state.replayed = state.replayed.saturating_add(replayed);
        for position in frames.iter().filter_map(|(position, _)| *position) {
            state.gate.replayed(position);
        }
    }
    for (_, frame) in frames {
        conn.push(frame, Kind::Control);
    }
    if let Some(next) = next {
        next_page(shard, &conn, next);
        return;
    }
    let (held, replayed) = {
        let mut state = conn.state.borrow_mut();
        let held = state.gate.finish();
        (held, std::mem::take(&mut state.replayed))
    };
    let limit = shard.shared.config().limits.outgoing_queue;
    let mut held = held.into_iter();
    if !conn.out.borrow().lagged {
        for (frame, needed) in held.by_ref() {
            if !needed {
                conn.release(budget::cost(&frame));
                continue;
            }
            if conn.out.borrow().events >= limit {
                conn.release(budget::cost(&frame));
                conn.lag();
                break;
            }
            // Charged when it was held.
            conn.enqueue(frame, Kind::Event);
            record_event_peak(shard, &conn);
        }
    }
    // What is left was not sent (the connection lags): its bytes go back.
    conn.release(held.map(|(frame, _)| budget::cost(&frame)).sum());
    conn.push(
        encode(&ServerFrame::Event(Event::CaughtUp { replayed })),
        Kind::Control,
    );
}
