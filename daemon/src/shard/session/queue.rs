//! The session's queue and budgets: admission of requests, answers, live events and the
//! lag, the writer's side, and the release of everything at the end.

use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{
    ErrorBody, ErrorCode, Event, Goodbye, GoodbyeCode, RequestId, ServerFrame, UserId,
};

use super::gate::Verdict;
use super::*;
use crate::budget::{self, UserBudget};
use crate::shard::{Position, encode};

impl Session {
    /// The budget shared by the user's connections arrived: it is charged with what the
    /// connection holds already.
    pub(crate) fn user_budget(&mut self, budget: Arc<UserBudget>) {
        if self.released {
            return;
        }
        budget.bytes.charge(self.bytes);
        if let Some(old) = self.user.replace(budget) {
            // Not expected (a connection authenticates once); keep the counts right anyway.
            old.release(self.bytes);
        }
        // A reader may be waiting for it.
        self.signals.room = true;
    }

    /// The user's budget, for a reader that waits for room in it.
    pub(crate) fn user_budget_ref(&self) -> Option<&Arc<UserBudget>> {
        self.user.as_ref()
    }

    /// Whether request `id`, whose answer may take `reserve` bytes, may be read now: the
    /// connection has fewer than `max_in_flight` unanswered requests and `reserve` more bytes
    /// fit its budget and its user's. A client that does not read its answers (or whose other
    /// devices do not) stops being read, and QUIC flow control slows it, so what it pins
    /// stays within its budgets. The daemon's budget is not waited for: when it is full the
    /// request is answered `OVERLOADED`.
    pub(crate) fn admit(&mut self, id: RequestId, reserve: usize, limits: &Limits) -> Admission {
        if self.released {
            return Admission::Closed;
        }
        if self.user.is_none() && self.auth.is_some() {
            return Admission::AwaitBudget;
        }
        // A reservation never exceeds one page (`budget::reply_reservation`), far below any
        // budget; clamped anyway, so a request can always be read once the connection is
        // empty.
        let reserve = reserve.min(limits.connection_memory);
        let connection_fits = self.in_flight < limits.max_in_flight
            && self.bytes.saturating_add(reserve) <= limits.connection_memory;
        if !connection_fits {
            return Admission::Wait { user: false };
        }
        if let Some(user) = &self.user
            && !user.bytes.try_charge(reserve)
        {
            return Admission::Wait { user: true };
        }
        if !self.daemon.try_charge(reserve) {
            if let Some(user) = &self.user {
                user.release(reserve);
            }
            self.overloaded(id);
            return Admission::Refused;
        }
        self.bytes += reserve;
        self.reserved.entry(id).or_default().push(reserve);
        Admission::Admitted
    }

    /// Refuses request `id` because the daemon's memory budget is full. The answer is small and
    /// charged as it is; the client is told when to try again.
    fn overloaded(&mut self, id: RequestId) {
        self.in_flight += 1;
        let frame = encode(&ServerFrame::Error {
            id: Some(id),
            error: ErrorBody {
                code: ErrorCode::OVERLOADED,
                reason: "the daemon's memory budget is full".to_owned(),
                retry_after_ms: Some(OVERLOADED_RETRY_MS),
            },
        });
        self.reply(id, frame);
    }

    /// Queues a frame, charging its bytes whatever the budgets say (it exists already).
    pub(super) fn push(&mut self, frame: Bytes, kind: Kind) {
        if self.closing.is_some() {
            return;
        }
        self.charge(budget::cost(&frame));
        self.enqueue(frame, kind);
    }

    /// Queues a connection-level frame (a hello answer, an error without a request).
    pub(crate) fn control(&mut self, frame: ServerFrame) {
        self.push(encode(&frame), Kind::Control);
    }

    /// Queues an encoded connection-level frame.
    pub(crate) fn control_bytes(&mut self, frame: Bytes) {
        self.push(frame, Kind::Control);
    }

    /// Queues a frame whose bytes are charged already.
    pub(super) fn enqueue(&mut self, frame: Bytes, kind: Kind) {
        if self.closing.is_some() {
            return;
        }
        self.events += usize::from(kind == Kind::Event);
        self.frames.push_back((frame, kind));
        self.signals.writer = true;
    }

    /// Charges `n` bytes to the connection, its user and the daemon, beyond their limits if
    /// need be.
    pub(super) fn charge(&mut self, n: usize) {
        if self.released {
            return;
        }
        self.bytes += n;
        if let Some(user) = &self.user {
            user.bytes.charge(n);
        }
        self.daemon.charge(n);
    }

    /// Charges `n` bytes if they fit every budget (the connection's `limit`, its user's, the
    /// daemon's); else charges nothing.
    pub(super) fn try_charge(&mut self, n: usize, limit: usize) -> bool {
        if self.released || self.bytes.saturating_add(n) > limit {
            return false;
        }
        if let Some(user) = &self.user
            && !user.bytes.try_charge(n)
        {
            return false;
        }
        if !self.daemon.try_charge(n) {
            if let Some(user) = &self.user {
                user.release(n);
            }
            return false;
        }
        self.bytes += n;
        true
    }

    /// Gives `n` charged bytes back.
    pub(super) fn release(&mut self, n: usize) {
        if self.released || n == 0 {
            return;
        }
        debug_assert!(
            self.bytes >= n,
            "a connection released more than it was charged"
        );
        self.bytes = self.bytes.saturating_sub(n);
        if let Some(user) = &self.user {
            user.release(n);
        }
        self.daemon.release(n);
        self.signals.room = true;
    }

    /// A response or error for request `id`. It counts as in flight until the writer has
    /// taken it; the bytes reserved for it when it was read become the frame's own.
    pub(crate) fn reply(&mut self, id: RequestId, frame: Bytes) {
        let reserved = match self.reserved.get_mut(&id) {
            Some(list) => {
                let reserved = list.pop().unwrap_or(0);
                if list.is_empty() {
                    self.reserved.remove(&id);
                }
                reserved
            }
            None => 0,
        };
        let len = budget::cost(&frame);
        if len > reserved {
            // Reservations are upper bounds, so this is an answer without one (`OVERLOADED`),
            // or a client that reused a request id and got the answers in another order than
            // the reservations: the bytes exist, so they are charged.
            self.charge(len - reserved);
        } else {
            self.release(reserved - len);
        }
        self.enqueue(frame, Kind::Reply);
        self.presence_answered(id);
    }

    /// A live event for this connection (a datagram-capable connection takes ephemeral events
    /// as datagrams before this). Returns whether it was queued or held for the device.
    pub(crate) fn event(&mut self, frame: &Bytes, live: Live, limits: &Limits) -> bool {
        if self.closing.is_some() {
            return false;
        }
        match live {
            Live::Entry(position) => match self.gate.live(position) {
                // Already sent by the catch-up (or had before it): a late fan-out.
                Verdict::Late => return false,
                Verdict::Deliver => {}
                Verdict::Hold => return self.hold(position, frame, limits),
            },
            Live::Presence(user) if self.asked_about(user) => {
                return self.hold_presence(user, frame, limits);
            }
            _ => {}
        }
        if self.lagged {
            return false;
        }
        let ephemeral = live == Live::Ephemeral;
        if self.events < limits.outgoing_queue
            && self.try_charge(budget::cost(frame), limits.connection_memory)
        {
            self.enqueue(frame.clone(), Kind::Event);
            return true;
        }
        if !ephemeral {
            // Beyond `outgoing_queue` events, or beyond a byte budget.
            self.lag();
        }
        false
    }

    /// Holds a live log event during a catch-up, if the budgets take it; else the connection
    /// lags and what it held is dropped.
    fn hold(&mut self, position: Position, frame: &Bytes, limits: &Limits) -> bool {
        if self.lagged {
            // It lagged during this catch-up: nothing more is held for it.
            return false;
        }
        let room = self.gate.held() < limits.outgoing_queue;
        if room && self.try_charge(budget::cost(frame), limits.connection_memory) {
            self.gate.hold(position, frame.clone());
            return true;
        }
        // Too much arrived during the catch-up: this connection lags.
        let dropped = self.gate.take_held();
        self.release(dropped.iter().map(|(_, frame)| budget::cost(frame)).sum());
        self.lag();
        false
    }

    /// Holds a presence event until the answer about its user is queued.
    fn hold_presence(&mut self, user: UserId, frame: &Bytes, limits: &Limits) -> bool {
        if self.lagged {
            return false;
        }
        if self.presence_held.len() < limits.outgoing_queue
            && self.try_charge(budget::cost(frame), limits.connection_memory)
        {
            self.presence_held.push((user, frame.clone()));
            return true;
        }
        // The client follows again after the lag (section 8.6): what was held goes.
        let dropped: usize = self
            .presence_held
            .drain(..)
            .map(|(_, f)| budget::cost(&f))
            .sum();
        self.release(dropped);
        self.lag();
        false
    }

    /// Marks the connection lagged: it gets `Lagged` once and no more live events until it
    /// catches up.
    pub(crate) fn lag(&mut self) {
        if self.lagged {
            return;
        }
        self.lagged = true;
        self.signals.lagged = true;
        self.push(encode(&ServerFrame::Event(Event::Lagged)), Kind::Control);
    }

    /// Events queued, for the shard's peak.
    pub(crate) fn events_queued(&self) -> usize {
        self.events
    }

    /// Moves up to `max` queued frames into `batch` for the writer. Answers taken leave the
    /// requests in flight (a slot opens).
    pub(crate) fn transmit(&mut self, batch: &mut Vec<Bytes>, max: usize) -> Transmit {
        let mut bytes = 0;
        let mut replies = 0u32;
        while batch.len() < max {
            let Some((frame, kind)) = self.frames.pop_front() else {
                break;
            };
            match kind {
                Kind::Event => self.events -= 1,
                Kind::Reply => replies += 1,
                Kind::Control => {}
            }
            bytes += budget::cost(&frame);
            batch.push(frame);
        }
        if self.frames.is_empty() {
            self.frames.shrink_to(IDLE_FRAMES);
        }
        if replies > 0 {
            self.in_flight = self.in_flight.saturating_sub(replies);
            self.signals.room = true;
        }
        Transmit {
            bytes,
            closing: self.closing,
        }
    }

    /// The writer wrote `bytes` of what it took: QUIC holds them now, within its flow-control
    /// windows, so they go back to the budgets.
    pub(crate) fn written(&mut self, bytes: usize) {
        self.release(bytes);
    }

    /// Queues a goodbye; the writer closes the connection once it is written.
    pub(crate) fn goodbye(&mut self, code: GoodbyeCode, reason: &str) {
        self.goodbye_in(code, reason, |frame| frame);
    }

    /// As [`Session::goodbye`], the encoded frame passed through `version` (which may give it
    /// another version byte).
    pub(crate) fn goodbye_in(
        &mut self,
        code: GoodbyeCode,
        reason: &str,
        version: impl FnOnce(Bytes) -> Bytes,
    ) {
        if self.closing.is_none() {
            let frame = version(encode(&ServerFrame::Goodbye(Goodbye {
                code,
                reason: reason.to_owned(),
            })));
            self.charge(budget::cost(&frame));
            self.frames.push_back((frame, Kind::Control));
            self.closing = Some(code);
        }
        self.signals.writer = true;
    }

    /// The goodbye's code once the connection is closing.
    pub(crate) fn closing(&self) -> Option<GoodbyeCode> {
        self.closing
    }

    /// The connection is over: everything it still holds goes back to the budgets, and
    /// nothing is queued or charged after this.
    pub(crate) fn release_all(&mut self) {
        if self.released {
            return;
        }
        self.closing.get_or_insert(GoodbyeCode::NORMAL);
        self.frames.clear();
        self.events = 0;
        let n = std::mem::take(&mut self.bytes);
        if let Some(user) = &self.user {
            user.release(n);
        }
        self.daemon.release(n);
        self.released = true;
        self.gate.clear();
        self.parked = None;
        self.reserved.clear();
        self.presence_asked.clear();
        self.presence_held.clear();
        self.signals.writer = true;
        self.signals.room = true;
    }

    /// Frames queued, bytes charged, and whether the connection lags.
    pub(crate) fn queue(&self) -> (usize, usize, bool) {
        (self.frames.len(), self.bytes, self.lagged)
    }
}
