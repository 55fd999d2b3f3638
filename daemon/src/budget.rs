//! Memory budgets in bytes: what one connection, one user and the whole daemon may hold in
//! queued frames.
//!
//! Three levels, each charged with the same bytes:
//!
//! - a connection's own count (kept by the connection on its shard, no atomics): replies
//!   reserved when their request is read, queued events, held-back events of a catch-up,
//!   the catch-up page being read;
//! - a [`UserBudget`] shared by every connection of one account, wherever their shards are
//!   (created by the user's registry shard with the first device, an atomic count);
//! - the daemon's [`Budget`] in `Shared::memory`, which also carries a fixed
//!   [`CONNECTION_COST`] per open connection.
//!
//! Requests are read only when the reply they may produce fits the connection's and the
//! user's budgets (else the stream is not read: QUIC flow control slows the client); the
//! daemon's budget refuses them with `OVERLOADED` and turns new connections away. Events
//! that do not fit make the connection lag. The reservation of a request is an upper bound
//! of its answer ([`reply_reservation`]), so budgets hold before the answer exists.

use std::sync::atomic::{AtomicUsize, Ordering};

use chat_protocol::Request;

use crate::store::{ENTRY_OVERHEAD, MAX_ENTRY_CHARGE, PAGE_BYTES, REPLAY_CHUNK};

/// What the daemon's budget charges for one open connection besides its queues: the
/// measured resident memory of an idle authenticated connection (37 KiB, bench/RESULTS.md)
/// with headroom. QUIC's own buffers are bounded apart, by its flow-control windows.
pub(crate) const CONNECTION_COST: usize = 48 * 1024;

/// Bytes of one catch-up page the read pool aims at; a page may exceed it by one chunk.
pub(crate) const REPLAY_PAGE: usize = 256 * 1024;

/// The most bytes a catch-up page can hold: what a connection reserves before it asks for
/// one. Entries count at the protocol's ceilings ([`MAX_ENTRY_CHARGE`]).
pub(crate) const REPLAY_RESERVATION: usize =
    REPLAY_PAGE + REPLAY_CHUNK * (MAX_ENTRY_CHARGE + ENTRY_OVERHEAD);

/// What a queued frame is charged: its length, and for a large frame its length rounded up
/// to 64 KiB, what the allocator (mimalloc) actually holds for a block that size. The same
/// function charges and releases a frame.
pub(crate) fn cost(frame: &bytes::Bytes) -> usize {
    allocated(frame.len())
}

/// The memory a block of `len` bytes takes: large blocks in whole 64 KiB granules.
fn allocated(len: usize) -> usize {
    const GRANULE: usize = 64 * 1024;
    if len < GRANULE {
        len
    } else {
        len.div_ceil(GRANULE) * GRANULE
    }
}

/// Bytes of every answer that carries no list: errors (reason at most 256 bytes), tokens
/// (at most 512 bytes), sessions, acks, room infos.
const SMALL_REPLY: usize = 1024;

/// What reading `request` reserves from the budgets: an upper bound of its encoded answer
/// (bodies at the protocol's ceiling, as above) plus the request's own memory while it is on
/// its way (its collections and strings; a collection beyond its limit is refused at once).
pub(crate) fn reply_reservation(request: &Request) -> usize {
    allocated(answer_bound(request)) + request_size(request)
}

/// The request's own heap memory, roughly: what it holds while it waits for the read pool or
/// a conversation's owner.
fn request_size(request: &Request) -> usize {
    match request {
        Request::Send(message) => message.body.len() + 8 * message.mentions.len(),
        Request::React(react) => react.reaction.len(),
        Request::Edit(edit) => edit.body.len(),
        Request::LookupUsers(users) => users
            .iter()
            .map(|u| match u {
                chat_protocol::UserRef::Id(_) => 32,
                chat_protocol::UserRef::Name(name) => 32 + name.len(),
            })
            .sum(),
        Request::Presence {
            subscribe,
            unsubscribe,
        } => 8 * (subscribe.len() + unsubscribe.len()),
        Request::Sync(resume) => 32 * resume.cursors.len(),
        Request::Register { name, password } | Request::Login { name, password } => {
            name.len() + password.len()
        }
        Request::Authenticate(auth) => {
            auth.token.len() + auth.resume.as_ref().map_or(0, |r| 32 * r.cursors.len())
        }
        Request::CreateRoom { name, .. } | Request::FindRoom { name } => name.len(),
        _ => 0,
    }
}

/// An upper bound of the encoded answer to `request`. Counts beyond the protocol's limits
/// are answered with a small error, so they are bounded by the limit, not by what the
/// client asked: a reservation never exceeds one full page.
fn answer_bound(request: &Request) -> usize {
    use chat_protocol::limits::{MAX_PAGE, MAX_USERS_PER_REQUEST};
    let page = |limit: u16| usize::from(limit.min(MAX_PAGE));
    let users = |n: usize| n.min(MAX_USERS_PER_REQUEST);
    let items = |n: usize, each: usize| SMALL_REPLY + n * each;
    match request {
        // A page stops at `PAGE_BYTES` (edited messages carry two bodies).
        Request::History(query) => items(page(query.limit), MAX_ENTRY_CHARGE + ENTRY_OVERHEAD)
            .min(SMALL_REPLY + PAGE_BYTES),
        // Conversation id, title (a room name: 64 bytes at most), role, three seqs.
        Request::Conversations { limit, .. } => items(page(*limit), 128),
        // User id, name (32 bytes at most), role.
        Request::Members { limit, .. } => items(page(*limit), 64),
        Request::LookupUsers(list) => items(users(list.len()), 64),
        Request::Presence { subscribe, .. } => items(users(subscribe.len()), 32),
        _ => SMALL_REPLY,
    }
}

/// A byte budget shared between threads: an atomic count against a limit (which a reload
/// may change; what is charged beyond a lowered limit drains as it is released).
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: AtomicUsize,
    peak: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            peak: AtomicUsize::new(0),
        }
    }

    /// Charges `n` bytes if they fit under the limit.
    pub(crate) fn try_charge(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        let limit = self.limit();
        loop {
            let Some(next) = used.checked_add(n).filter(|next| *next <= limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `n` bytes whether or not they fit (what is already in memory).
    pub(crate) fn charge(&self, n: usize) {
        let next = self.used.fetch_add(n, Ordering::AcqRel) + n;
        self.peak.fetch_max(next, Ordering::Relaxed);
    }

    /// Gives back `n` charged bytes.
    pub(crate) fn release(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "a budget released more than it was charged");
    }

    /// Whether `n` more bytes would fit now.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.used().saturating_add(n) <= self.limit()
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets a new limit (a reload).
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The most ever charged at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The budget of one user's connections, shared by their shards. Connections whose reads
/// wait for room wait on `freed`.
#[derive(Debug)]
pub(crate) struct UserBudget {
    pub(crate) bytes: Budget,
    pub(crate) freed: tokio::sync::Notify,
}

impl UserBudget {
    pub(crate) fn new(limit: usize) -> UserBudget {
        UserBudget {
            bytes: Budget::new(limit),
            freed: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn release(&self, n: usize) {
        self.bytes.release(n);
        self.freed.notify_waiters();
    }
}

/// The memory the daemon may use when `limits.daemon_memory` is 0: half of what the
/// machine (or the cgroup the daemon runs in, when it sets a lower limit) has, leaving the
/// other half to RocksDB's caches, the allocator and the kernel's socket buffers. 1 GiB
/// when neither can be read.
pub(crate) fn default_daemon_memory() -> usize {
    let total = machine_memory().unwrap_or(2 << 30);
    usize::try_from(total / 2).unwrap_or(usize::MAX)
}

/// Physical memory, or the cgroup v2 limit when lower.
fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = total_kib.saturating_mul(1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |limit| limit.min(total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::{ConversationId, HistoryFrom, HistoryQuery, Order, RoomId};

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_takes_it_back_after_a_release() {
        let budget = Budget::new(100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41));
        assert!(budget.try_charge(40));
        assert!(!budget.fits(1));
        budget.release(60);
        assert!(budget.fits(60));
        assert!(!budget.fits(61));
        // What is already in memory is charged even beyond the limit; the peak shows it.
        budget.charge(100);
        assert_eq!(budget.used(), 140);
        assert_eq!(budget.peak(), 140);
        assert!(!budget.try_charge(1));
    }

    #[test]
    fn a_history_reservation_covers_a_full_page_of_maximal_entries() {
        let query = |limit| {
            Request::History(HistoryQuery {
                conversation: ConversationId::Room(RoomId(5)),
                from: HistoryFrom::Latest,
                limit,
                order: Order::NewestFirst,
                thread: None,
            })
        };
        let full = reply_reservation(&query(100));
        assert!(full >= 100 * (16 * 1024 + ENTRY_OVERHEAD));
        // As charged: in whole 64 KiB granules, like any large frame.
        assert_eq!(full % (64 * 1024), 0);
        assert!(full <= chat_protocol::limits::MAX_SERVER_FRAME);
        // Asking for more than a page reserves a page (the answer is an error).
        assert_eq!(reply_reservation(&query(u16::MAX)), full);
        // A short page reserves less, so pipelined small reads are not held back: one page
        // of one entry reserves what one maximal entry takes (an edited message with every
        // mention and reaction), no more.
        let one = SMALL_REPLY + MAX_ENTRY_CHARGE + ENTRY_OVERHEAD;
        assert_eq!(reply_reservation(&query(1)), allocated(one));
        assert!(reply_reservation(&query(1)) < full / 40);
        assert_eq!(reply_reservation(&Request::Ping), SMALL_REPLY);
        // A request's own memory counts too.
        let lookup = Request::LookupUsers(vec![chat_protocol::UserRef::Name("a".repeat(30)); 10]);
        assert_eq!(reply_reservation(&lookup), SMALL_REPLY + 10 * 64 + 10 * 62);
    }

    #[test]
    fn machine_memory_is_read() {
        let total = machine_memory().expect("Linux has /proc/meminfo");
        assert!(total > 64 << 20, "{total} bytes of memory");
    }
}
