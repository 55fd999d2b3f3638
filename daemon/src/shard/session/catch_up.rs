//! The session's catch-ups (resume, `Sync`) and the presence it follows.

use std::collections::HashMap;

use bytes::Bytes;
use chat_protocol::{ErrorCode, Event, RequestId, Resume, ServerFrame, UserId};

use super::*;
use crate::budget;
use crate::shard::{Position, encode};
use crate::store::CatchUp;

impl Session {
    /// Applies a checked presence change: unsubscribes first, then subscribes (a user in both
    /// lists stays followed). Returns the users no longer followed, or the refusal when more
    /// than `limit` would be followed (nothing changes then).
    pub(crate) fn follow(
        &mut self,
        subscribe: &[UserId],
        unsubscribe: &[UserId],
        limit: usize,
    ) -> Result<Vec<UserId>, String> {
        let mut followed = self.presence.clone();
        for user in unsubscribe {
            followed.remove(user);
        }
        followed.extend(subscribe.iter().copied());
        if followed.len() > limit {
            return Err(format!(
                "at most {limit} presence subscriptions per connection"
            ));
        }
        let dropped = self.presence.difference(&followed).copied().collect();
        self.presence = followed;
        Ok(dropped)
    }

    /// The answer to `Presence` request `id` about `users` is on its way: their presence
    /// events wait for it.
    pub(crate) fn presence_asked(&mut self, id: RequestId, users: Vec<UserId>) {
        self.presence_asked.push((id, users));
    }

    /// The answer to request `id` was queued: if it was a presence answer, the events held
    /// for its users (and asked about by no other answer on its way) follow it, in order.
    pub(super) fn presence_answered(&mut self, id: RequestId) {
        let Some(at) = self.presence_asked.iter().position(|(r, _)| *r == id) else {
            return;
        };
        self.presence_asked.remove(at);
        let held = std::mem::take(&mut self.presence_held);
        for (user, frame) in held {
            if self.asked_about(user) {
                self.presence_held.push((user, frame));
            } else if self.lagged {
                self.release(budget::cost(&frame));
            } else {
                // Charged when it was held.
                self.enqueue(frame, Kind::Event);
            }
        }
    }

    /// Whether an answer about `user` is on its way.
    pub(super) fn asked_about(&self, user: UserId) -> bool {
        self.presence_asked
            .iter()
            .any(|(_, users)| users.contains(&user))
    }

    /// The connection ends: the users it followed.
    pub(crate) fn unfollow_all(&mut self) -> Vec<UserId> {
        std::mem::take(&mut self.presence).into_iter().collect()
    }

    /// Whether a catch-up runs.
    #[cfg(test)]
    pub(crate) fn catching_up(&self) -> bool {
        self.gate.catching_up()
    }

    /// Starts a catch-up after `resume`'s cursors: live log events are held back from now
    /// on, and a lag ends (live events flow again after it). Returns the catch-up to read
    /// page by page ([`Session::reserve_page`]), or why it cannot start.
    pub(crate) fn start_catch_up(
        &mut self,
        resume: &Resume,
        max_gap: u64,
        max_replay: u64,
    ) -> Result<Box<CatchUp>, (ErrorCode, &'static str)> {
        if resume.cursors.len() > chat_protocol::limits::MAX_RESUME_CURSORS {
            return Err((ErrorCode::INVALID_REQUEST, "too many resume cursors"));
        }
        let Some((user, _)) = self.user() else {
            return Err((ErrorCode::NOT_AUTHENTICATED, ""));
        };
        if self.gate.catching_up() {
            return Err((ErrorCode::INVALID_REQUEST, "a catch-up is already running"));
        }
        let cursors: HashMap<_, _> = resume
            .cursors
            .iter()
            .map(|c| (c.conversation, c.seq))
            .collect();
        self.gate.start(cursors.clone());
        self.lagged = false;
        self.replayed = 0;
        Ok(Box::new(CatchUp::new(user, cursors, max_gap, max_replay)))
    }

    /// Reserves room for the next page of a catch-up (`page` bytes at most). Live events held
    /// back during the catch-up may be what fills the budget: they would wait for the replay
    /// to end and the replay for their room, so the connection lags instead (it syncs again
    /// after `CaughtUp`) and the page gets their room. `false`: park the catch-up and try
    /// again after writing ([`Session::park`]).
    pub(crate) fn reserve_page(&mut self, page: usize, limits: &Limits) -> bool {
        if self.try_charge(page, limits.connection_memory) {
            return true;
        }
        let held = self.gate.take_held();
        if !held.is_empty() {
            self.release(held.iter().map(|(_, frame)| budget::cost(frame)).sum());
            self.lag();
        }
        self.try_charge(page, limits.connection_memory)
    }

    /// The page reserved for could not be read now (the read pool is full): its room goes
    /// back and the catch-up waits.
    pub(crate) fn page_refused(&mut self, page: usize, catch_up: Box<CatchUp>) {
        self.release(page);
        self.park(catch_up);
    }

    /// Parks a catch-up until the writer has written (or a timer fires).
    pub(crate) fn park(&mut self, catch_up: Box<CatchUp>) {
        self.parked = Some(catch_up);
        self.signals.writer = true;
    }

    /// Whether a catch-up is parked.
    pub(crate) fn parked(&self) -> bool {
        self.parked.is_some()
    }

    /// The parked catch-up, to ask for its next page.
    pub(crate) fn take_parked(&mut self) -> Option<Box<CatchUp>> {
        self.parked.take()
    }

    /// A page of a catch-up arrived (`page` bytes were reserved for it): its frames are
    /// queued. If it was the last (`last`), then the live events held back meanwhile that the
    /// replay did not already hold, then `CaughtUp`. Returns `false` when no catch-up runs any
    /// more (the connection ended meanwhile): the caller asks for no next page.
    pub(crate) fn page(
        &mut self,
        page: usize,
        frames: Vec<(Option<Position>, Bytes)>,
        replayed: u32,
        last: bool,
        limits: &Limits,
    ) -> bool {
        self.release(page);
        if !self.gate.catching_up() {
            return false;
        }
        self.replayed = self.replayed.saturating_add(replayed);
        for position in frames.iter().filter_map(|(position, _)| *position) {
            self.gate.replayed(position);
        }
        for (_, frame) in frames {
            self.push(frame, Kind::Control);
        }
        if last {
            self.caught_up(limits);
        }
        true
    }

    fn caught_up(&mut self, limits: &Limits) {
        let held = self.gate.finish();
        let replayed = std::mem::take(&mut self.replayed);
        let mut held = held.into_iter();
        if !self.lagged {
            for (frame, needed) in held.by_ref() {
                if !needed {
                    self.release(budget::cost(&frame));
                    continue;
                }
                if self.events >= limits.outgoing_queue {
                    self.release(budget::cost(&frame));
                    self.lag();
                    break;
                }
                // Charged when it was held.
                self.enqueue(frame, Kind::Event);
            }
        }
        // What is left was not sent (the connection lags): its bytes go back.
        self.release(held.map(|(frame, _)| budget::cost(&frame)).sum());
        self.push(
            encode(&ServerFrame::Event(Event::CaughtUp { replayed })),
            Kind::Control,
        );
    }
}
