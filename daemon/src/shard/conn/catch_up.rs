//! Catch-ups (resume after a reconnect, `Sync`): live log events of the connection are held
//! back while the read pool reads what the device missed, page by page as the client takes
//! it (each page reserved from the budgets before it is read, parked when it does not fit);
//! after the last page come the held-back events the replay did not already hold, then
//! `CaughtUp`.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{ErrorCode, Event, RequestId, Resume, ServerFrame};

use super::{Conn, ConnId, get, record_event_peak};
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
    let (max_gap, max_replay) = {
        let config = shard.shared.config();
        let limits = &config.limits;
        (
            u64::from(limits.max_resume_gap),
            u64::from(limits.max_replay),
        )
    };
    match conn.with(|s| s.start_catch_up(&resume, max_gap, max_replay)) {
        Ok(catch_up) => {
            next_page(shard, conn, catch_up);
            true
        }
        Err((code, reason)) => {
            match request {
                Some(id) => conn.with(|s| s.reply(id, error(id, code, reason))),
                None => conn.with(|s| s.control(error_frame(None, code, reason))),
            }
            false
        }
    }
}

/// Asks the read pool for the next page of a catch-up, once its largest size fits the
/// budgets; until then, or while the pool is full, the catch-up is parked and the writer
/// asks again after writing (or after [`super::io::PARKED_RETRY`]).
fn next_page(shard: &Shard, conn: &Conn, catch_up: Box<CatchUp>) {
    let limits = conn.limits();
    if !conn.with(|s| s.reserve_page(budget::REPLAY_RESERVATION, &limits)) {
        conn.with(|s| s.park(catch_up));
        return;
    }
    let job = PageJob {
        shared: Arc::clone(&shard.shared),
        shard: shard.id,
        conn: conn.id,
        catch_up,
    };
    if let Err(job) = shard.shared.reads.try_submit(job) {
        conn.with(|s| s.page_refused(budget::REPLAY_RESERVATION, job.catch_up));
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
    fn run(self: Box<Self>, store: &crate::store::Stores) {
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
                            (position, encode(&ServerFrame::Event(entry.into_event())))
                        }
                    })
                    .collect();
                let next = (!catch_up.done()).then_some(catch_up);
                ShardMsg::Replay {
                    conn,
                    frames,
                    replayed,
                    next,
                    failed: false,
                }
            }
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "catch-up read failed");
                // A partition between nodes (or its node out of reach) passes: the device
                // syncs again. Anything else (this node's storage) would fail again: the
                // device pages history instead, and goes live.
                let passing = matches!(
                    e,
                    crate::store::Error::NotHere(_) | crate::store::Error::Remote { .. }
                );
                let reason = if passing {
                    "catch-up failed; sync again"
                } else {
                    "catch-up failed; page history"
                };
                let frame = encode(&error_frame(None, ErrorCode::UNAVAILABLE, reason));
                ShardMsg::Replay {
                    conn,
                    frames: vec![(None, frame)],
                    replayed: 0,
                    next: None,
                    failed: passing,
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
    if let Some(catch_up) = conn.with(|s| s.take_parked()) {
        next_page(shard, conn, catch_up);
    }
}

/// A page of a catch-up arrived: send it; if it was the last, then the live events held
/// back meanwhile that the replay did not already hold, then `CaughtUp`; else ask for the
/// next page. A page that could not be read because its partition is between nodes or its
/// node out of reach (`failed`) ends the catch-up with the connection lagging: live events
/// would move the device's cursors past what it did not get, so none come until it syncs
/// again.
pub(crate) fn replay(
    shard: &Shard,
    conn: ConnId,
    frames: Vec<(Option<Position>, Bytes)>,
    replayed: u32,
    next: Option<Box<CatchUp>>,
    failed: bool,
) {
    let Some(conn) = get(shard, conn) else { return };
    if failed {
        conn.lag();
    }
    let limits = conn.limits();
    let last = next.is_none();
    let page = budget::REPLAY_RESERVATION;
    let running = conn.with(|s| s.page(page, frames, replayed, last, &limits));
    record_event_peak(shard, &conn);
    if let (true, Some(next)) = (running, next) {
        next_page(shard, &conn, next);
    }
}
