//! An operator's account actions across the nodes (docs/OPERATIONS.md section 9):
//! `kick`, `disable`, `enable` and `revoke` asked of any node's admin API are taken by the
//! node holding the account's partition ([`wire::Call::Act`]): it commits the restriction
//! and puts it in place, closes the account's sessions there, and orders every other node
//! to close theirs ([`wire::Call::Order`]).
//!
//! A session another node authenticates reads the restriction from the holding node
//! before it starts, so an order can arrive between that read and the session's start.
//! Each node numbers the orders it gets ([`Orders`]); a session is checked, as it starts,
//! against the orders that arrived since its authentication began, and refused as the
//! holder's own check would have refused it.
//!
//! Orders are versioned (the holder's ownership term, then the number of the action
//! there): each goes on its own stream, and one the asking node gave up waiting for may be
//! handled after the next. An order older than one this node remembers for the same
//! account is ignored, so a late `disable` cannot close the sessions of an account enabled
//! since, nor refuse its new ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::{ConversationId, DeviceId, ErrorCode, UserId};

use super::wire::{self, Acted, Call, Closed, Refused};
use super::{CALL_TIMEOUT, Peers};
use crate::admin::accounts::AccountAction;
use crate::shard::erase::Erased;
use crate::store::{Error, Restriction};

/// Orders remembered at most; a session whose authentication began before the oldest one
/// remembered is refused `UNAVAILABLE` (its client retries).
pub(crate) const MAX_ORDERS: usize = 4_096;

/// How long an action asked of another node waits for it, within `chatd admin`'s 30 s: its
/// commit, its shards and the other nodes' orders each have their own deadline (10 s), so
/// an answer may come too late; the action is then taken all the same. Running it again
/// leaves the account as asked (a second `revoke` also revokes tokens issued in between; a
/// second `kick` closes sessions opened since).
pub(crate) const ACT_TIMEOUT: Duration = Duration::from_secs(25);

/// How long a node answering another's order or listing waits for its own shards: less
/// than the asking node waits for the answer ([`CALL_TIMEOUT`]), so a slow shard is counted
/// as a shard not answering, not the whole node.
const PEER_WAIT: Duration = Duration::from_secs(4);

/// How long an erasure's call to another node waits: its deletes there wait
/// [`crate::admin::erase::ERASE_WAIT`].
const ERASE_CALL: Duration = Duration::from_secs(65);

/// How long a status waits for the other nodes' summaries: a node lost a moment ago keeps
/// its link until the link's idle timeout (3 s), and a status must not hang on it.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Account actions forwarded to this node's admin API, waiting at most.
pub(crate) const MAX_FORWARDED: usize = 64;

/// The restrictions other nodes put in place, numbered as they arrived.
#[derive(Default)]
pub(crate) struct Orders {
    /// The number the next order gets: read without the lock as authentications begin.
    next: AtomicU64,
    log: parking_lot::Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Orders numbered below this were forgotten.
    forgotten: u64,
    orders: VecDeque<Noted>,
}

/// An order as noted: its number here, its account, its restriction (none for a kick),
/// its version.
struct Noted {
    n: u64,
    user: UserId,
    restriction: Option<Restriction>,
    version: (i64, u64),
}

/// An account action the holding node ordered ([`wire::Call::Order`]): the restriction it
/// put in place (none for `kick`), then close the account's sessions (of `device` only,
/// when given) as `action` does.
#[derive(Clone, Copy, Debug, bincode::Encode, bincode::Decode)]
pub(crate) struct Order {
    pub(crate) user: UserId,
    pub(crate) action: AccountAction,
    pub(crate) device: Option<u64>,
    pub(crate) restriction: Option<Restriction>,
    /// The holder's ownership term and the number of the action there: an order arriving
    /// after one of a later version for the same account is ignored.
    pub(crate) version: (i64, u64),
}

impl Orders {
    /// The mark an authentication takes as it begins: the orders from here on are checked
    /// as its session starts ([`Orders::refuses`]).
    pub(crate) fn mark(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Notes `user`'s order of `version`, with the restriction it puts in place (none for
    /// a kick). False, and nothing noted, when an order of a later version for `user` is
    /// remembered: this one came late, and the later one stands.
    pub(crate) fn note(
        &self,
        user: UserId,
        restriction: Option<Restriction>,
        version: (i64, u64),
    ) -> bool {
        let mut log = self.log.lock();
        if (log.orders.iter()).any(|o| o.user == user && o.version > version) {
            return false;
        }
        let n = self.next.load(Ordering::Acquire);
        if log.orders.len() >= MAX_ORDERS
            && let Some(oldest) = log.orders.pop_front()
        {
            log.forgotten = oldest.n + 1;
        }
        log.orders.push_back(Noted {
            n,
            user,
            restriction,
            version,
        });
        self.next.store(n + 1, Ordering::Release);
        true
    }

    /// Why a session of `user`, with a token issued at `issued_at` and authenticated from
    /// `mark` on, cannot start: the last restriction ordered for `user` since then refuses
    /// it, or orders since then were forgotten.
    pub(crate) fn refuses(
        &self,
        user: UserId,
        issued_at: Option<u64>,
        mark: u64,
    ) -> Option<ErrorCode> {
        if self.next.load(Ordering::Acquire) <= mark {
            return None;
        }
        let log = self.log.lock();
        if log.forgotten > mark {
            return Some(ErrorCode::UNAVAILABLE);
        }
        (log.orders.iter().rev())
            .take_while(|o| o.n >= mark)
            .filter(|o| o.user == user)
            .find_map(|o| o.restriction)
            .and_then(|restriction| restriction.refuses(issued_at))
    }
}

/// An account action another node's admin API forwarded, for this node's admin listener.
pub(crate) struct Forwarded {
    pub(crate) name: String,
    pub(crate) action: AccountAction,
    pub(crate) device: Option<DeviceId>,
    /// The admin API's status and JSON body.
    pub(crate) reply: tokio::sync::oneshot::Sender<(u16, String)>,
}

impl Peers {
    /// The admin listener takes the actions other nodes forward from `tx` on.
    pub(crate) fn serve_admin(&self, tx: tokio::sync::mpsc::Sender<Forwarded>) {
        let _ = self.admin.set(tx);
    }

    /// When another node holds the partition of the account named `name`: has it take
    /// account action `action`, and returns its admin API's status and body (from a
    /// blocking thread: it waits).
    pub(crate) fn act_at_holder(
        &self,
        name: &str,
        action: AccountAction,
        device: Option<DeviceId>,
    ) -> Option<Result<Acted, Error>> {
        let p = self.map.of_name(name);
        // Held here (or by nobody known): this node takes it.
        self.elsewhere(p).as_ref()?;
        let call = Call::Act {
            name: name.to_owned(),
            action,
            device: device.map(|d| d.0),
        };
        Some(self.call_within(p, call, ACT_TIMEOUT).and_then(|bytes| {
            wire::decode(&bytes).map_err(|message| Error::Remote {
                partition: p,
                message,
            })
        }))
    }

    /// Orders every other node etcd lists to put `restriction` in place for `user` (none
    /// for a kick) and close its sessions as `action` does, as the action numbered
    /// `version` ([`Peers::version`]; from a blocking thread: it waits). Returns how many
    /// sessions they closed and how many nodes (or their shards) could not be told.
    pub(crate) fn order_everywhere(
        &self,
        user: UserId,
        action: AccountAction,
        device: Option<DeviceId>,
        restriction: Option<Restriction>,
        version: (i64, u64),
    ) -> (u64, u64) {
        let p = self.map.of_id(user.0);
        let order = Order {
            user,
            action,
            device: device.map(|d| d.0),
            restriction,
            version,
        };
        let answers = self.ask_every_node(p, CALL_TIMEOUT, || Call::Order(order));
        let (mut closed, mut missing) = (0, 0);
        for (node, answer) in answers {
            match answer.and_then(|bytes| wire::decode::<Closed>(&bytes).ok()) {
                Some(told) => {
                    closed += told.closed;
                    missing += u64::from(told.shards_not_answering > 0);
                }
                None => {
                    tracing::warn!(target: "chatd::admin", node, "a node could not be told to close an account's sessions");
                    missing += 1;
                }
            }
        }
        (closed, missing)
    }

    /// The connections of every other node etcd lists (of `user` only, when given; at
    /// most `limit` each), as each one's admin API lists its own (from a blocking thread:
    /// it waits). `None` for a node that could not be asked or did not answer.
    pub(crate) fn connections_elsewhere(
        &self,
        user: Option<UserId>,
        limit: usize,
    ) -> Vec<(String, Option<serde_json::Value>)> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.json_elsewhere(CALL_TIMEOUT, || Call::Connections { user, limit })
    }

    /// The admin API's description of `conversation`, read by the node holding its
    /// partition (from a blocking thread: it waits); `None` when it does not exist.
    pub(crate) fn conversation_at(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<serde_json::Value>, Error> {
        let p = self.map.of_conversation(conversation);
        let bytes = self.call(p, Call::Conversation { conversation })?;
        let found: Option<String> = wire::decode(&bytes).map_err(|message| Error::Remote {
            partition: p,
            message,
        })?;
        found
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| Error::Remote {
                    partition: p,
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    /// Every other node etcd lists, with its summary as its admin API's `/v1/status` lists
    /// it (from a blocking thread: it waits up to [`STATUS_WAIT`]); `None` for a node that
    /// did not answer.
    pub(crate) fn statuses_elsewhere(&self) -> Vec<(String, Option<serde_json::Value>)> {
        self.json_elsewhere(STATUS_WAIT, || Call::Status)
    }

    /// Asks every other node etcd lists `call()`, answered with JSON within `wait`.
    fn json_elsewhere(
        &self,
        wait: Duration,
        call: impl Fn() -> Call,
    ) -> Vec<(String, Option<serde_json::Value>)> {
        (self.ask_every_node(0, wait, call).into_iter())
            .map(|(node, answer)| {
                let json = (answer.and_then(|bytes| wire::decode::<String>(&bytes).ok()))
                    .and_then(|text| serde_json::from_str(&text).ok());
                (node, json)
            })
            .collect()
    }

    /// Sends `call()` to every other node etcd lists, on this node's links (about partition
    /// `p`, for errors), and waits for their answers up to `wait` in all (from a blocking
    /// thread). `None` for a node without a link, or without an answer in time.
    fn ask_every_node(
        &self,
        p: usize,
        wait: Duration,
        call: impl Fn() -> Call,
    ) -> Vec<(String, Option<Vec<u8>>)> {
        if !self.on {
            return Vec::new();
        }
        let others: Vec<String> = (self.nodes.borrow().keys())
            .filter(|node| **node != *self.me)
            .cloned()
            .collect();
        let outbound = self.outbound.load();
        let asked: Vec<_> = (others.into_iter())
            .map(|node| {
                let answer =
                    (outbound.get(node.as_str())).and_then(|link| link.ask(call(), p, wait).ok());
                (node, answer)
            })
            .collect();
        let deadline = Instant::now() + wait;
        (asked.into_iter())
            .map(|(node, answer)| {
                let left = deadline.saturating_duration_since(Instant::now());
                let answer = answer.and_then(|rx| rx.recv_timeout(left).ok()?.ok());
                (node, answer)
            })
            .collect()
    }

    /// The version of the next account action this node takes for an account of
    /// partition `p` (it holds it), taken one at a time: its term, then a number.
    pub(crate) fn version(&self, p: usize) -> (i64, u64) {
        let term = self.terms.get(p).map_or(0, |t| t.load(Ordering::Acquire));
        (term, self.actions.fetch_add(1, Ordering::AcqRel))
    }

    /// Answers [`Call::Order`]: notes the order, then closes the account's sessions here;
    /// an order that came after a later one for the same account is ignored (0 closed).
    pub(crate) async fn ordered(
        shared: &crate::shard::Shared,
        order: Order,
    ) -> Result<Vec<u8>, Refused> {
        let Order {
            user,
            action,
            device,
            restriction,
            version,
        } = order;
        let current = shared.peers.orders.note(user, restriction, version);
        let (closed, missing) = match action.goodbye() {
            Some((code, reason)) if current => {
                let device = device.map(DeviceId);
                let wait = PEER_WAIT;
                crate::admin::accounts::close_sessions(shared, user, device, code, reason, wait)
                    .await
            }
            _ => {
                if !current {
                    tracing::warn!(target: "chatd::admin", user = %user, action = action.name(), "an account order came after a later one; ignored");
                }
                (0, 0)
            }
        };
        let closed = Closed {
            closed: u64::try_from(closed).unwrap_or(u64::MAX),
            shards_not_answering: u64::try_from(missing).unwrap_or(u64::MAX),
        };
        wire::answer(closed)
    }

    /// Answers [`Call::Connections`]: this node's connections, as its admin API lists them.
    pub(crate) async fn listed(
        shared: &crate::shard::Shared,
        user: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<u8>, Refused> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let listed = crate::admin::api::connections_here(shared, user, limit, PEER_WAIT).await;
        wire::answer(listed.to_string())
    }

    /// Has the node holding `conversation`'s partition delete every message of `user`
    /// there as the operator (an erasure this node takes), within [`ERASE_CALL`] (from a
    /// blocking thread: it waits).
    pub(crate) fn erase_at(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Erased, Error> {
        let p = self.map.of_conversation(conversation);
        let bytes = self.call_within(p, Call::Erase { conversation, user }, ERASE_CALL)?;
        wire::decode(&bytes).map_err(|message| Error::Remote {
            partition: p,
            message,
        })
    }

    /// Answers [`Call::Erase`]: this node finds `user`'s messages in `conversation` and its
    /// owner shard deletes them as the operator.
    pub(crate) async fn erased(
        shared: &crate::shard::Shared,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Vec<u8>, Refused> {
        let messages = super::accept::read_here(shared, move |stores| {
            (stores.of_conversation(conversation))
                .and_then(|store| store.messages_of(conversation, user))
        })
        .await?;
        let wait = crate::admin::erase::ERASE_WAIT;
        match crate::admin::erase::erase_here(shared, conversation, messages, wait).await {
            Some(done) => wire::answer(done),
            None => Err(Refused::Failed(
                "the conversation's deletes did not finish in time".into(),
            )),
        }
    }

    /// Answers [`Call::Act`]: this node's admin listener takes the action.
    pub(crate) async fn acted(
        &self,
        name: String,
        action: AccountAction,
        device: Option<u64>,
    ) -> Result<Vec<u8>, Refused> {
        let admin = (self.admin.get())
            .ok_or_else(|| Refused::Failed(format!("node {} has no admin listener", self.me)))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let forwarded = Forwarded {
            name,
            action,
            device: device.map(DeviceId),
            reply,
        };
        admin.try_send(forwarded).map_err(|_| Refused::Busy)?;
        let (status, body) = answer
            .await
            .map_err(|_| Refused::Failed("the admin listener stopped".into()))?;
        wire::answer(Acted { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISABLED: Restriction = Restriction {
        disabled: true,
        tokens_from: 0,
    };

    #[test]
    fn a_session_is_checked_against_the_orders_since_its_mark() {
        let orders = Orders::default();
        let (dave, erin) = (UserId(4), UserId(5));
        let before = orders.mark();
        assert!(orders.note(dave, Some(DISABLED), (1, 1)));
        let after = orders.mark();
        // Read before the order arrived: refused as the holder refuses it.
        assert_eq!(
            orders.refuses(dave, Some(10), before),
            Some(ErrorCode::ACCOUNT_DISABLED)
        );
        // Read after: the read saw the restriction itself; the log has nothing newer.
        assert_eq!(orders.refuses(dave, Some(10), after), None);
        // Another account is not touched.
        assert_eq!(orders.refuses(erin, Some(10), before), None);
        // The last order decides: enabled again (tokens from 20 on).
        let enabled = Restriction {
            disabled: false,
            tokens_from: 20,
        };
        assert!(orders.note(dave, Some(enabled), (1, 2)));
        assert_eq!(orders.refuses(dave, Some(20), before), None);
        assert_eq!(
            orders.refuses(dave, Some(19), before),
            Some(ErrorCode::TOKEN_REVOKED)
        );
    }

    #[test]
    fn a_mark_older_than_the_orders_remembered_is_refused_unavailable() {
        let orders = Orders::default();
        let old = orders.mark();
        for n in 0..=MAX_ORDERS {
            orders.note(UserId(1_000 + n as u64), Some(DISABLED), (1, n as u64));
        }
        assert_eq!(orders.log.lock().orders.len(), MAX_ORDERS);
        // The order numbered `old` was forgotten: whoever it was for, retry.
        assert_eq!(
            orders.refuses(UserId(7), None, old),
            Some(ErrorCode::UNAVAILABLE)
        );
        // A mark taken after it is checked as usual.
        assert_eq!(orders.refuses(UserId(7), None, old + 1), None);
    }

    #[test]
    fn an_order_older_than_one_remembered_for_the_account_is_ignored() {
        let orders = Orders::default();
        let (dave, erin) = (UserId(4), UserId(5));
        let before = orders.mark();
        let enabled = Restriction {
            disabled: false,
            tokens_from: 0,
        };
        // The enable (action 8 in term 3) arrived first; the disable before it (action 7)
        // comes late.
        assert!(orders.note(dave, Some(enabled), (3, 8)));
        assert!(!orders.note(dave, Some(DISABLED), (3, 7)));
        assert_eq!(orders.refuses(dave, Some(10), before), None);
        // A kick is versioned too, and has no restriction: the last restriction still decides.
        assert!(
            !orders.note(dave, None, (2, 99)),
            "an earlier term is older"
        );
        assert!(orders.note(dave, None, (3, 9)));
        assert_eq!(orders.refuses(dave, Some(10), before), None);
        // Later versions apply; other accounts are not compared.
        assert!(orders.note(dave, Some(DISABLED), (4, 0)));
        assert!(orders.note(erin, Some(DISABLED), (1, 0)));
        assert_eq!(
            orders.refuses(dave, Some(10), before),
            Some(ErrorCode::ACCOUNT_DISABLED)
        );
    }
}
