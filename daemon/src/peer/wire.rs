//! The peer protocol: what goes between two nodes of a cluster (docs/SCALING.md section 5).
//!
//! The node that dials (the client's node, forwarding) opens three kinds of stream on its
//! connection to a partition's owner:
//!
//! - the **hello**, a bidirectional stream: each side proves it knows the cluster secret
//!   ([`proof`]) and names itself;
//! - **up**, one unidirectional stream of [`Up`] in order: the conversation requests of its
//!   clients, so one connection's requests reach the owner in the order they were made;
//! - a **call** per read or account creation, a bidirectional stream: one [`Call`], one
//!   [`Answer`].
//!
//! The owner opens **down**, one unidirectional stream of [`Down`] in order: the answers to
//! the forwarded requests, every event it publishes (its feed), which the dialing node
//! delivers to its own connections, and which of its users are online there. Each message is a big-endian `u32` length and its
//! bincode encoding, as client frames are encoded.

use bincode::{Decode, Encode};
use bytes::Bytes;
use chat_protocol::{
    ConversationId, HistoryQuery, Marker, RequestId, SendMessage, Seq, Timestamp, UserId,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::admin::accounts::AccountAction;
use crate::shard::conversation::{Change, Input, RoomAction};
use crate::shard::session::Live;
use crate::shard::{ConnId, ConnRef, Link, Origin};

/// The peer protocol's ALPN id.
pub(crate) const ALPN: &[u8] = b"chatd-peer/2";

/// The largest message either side reads: a bounded history page or event is far smaller.
/// Decoding is held to it too, so a length inside a message cannot make it allocate more.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// The largest hello: a node name and a proof.
pub(crate) const MAX_HELLO: usize = 1024;

/// Where a forwarded request came from on the node that forwarded it.
#[derive(Clone, Copy, Debug, Encode, Decode)]
pub(crate) struct Whence {
    pub(crate) shard: u32,
    pub(crate) conn: u64,
    pub(crate) request: u32,
    pub(crate) user: UserId,
}

impl Whence {
    pub(crate) fn of(origin: &Origin) -> Whence {
        Whence {
            shard: u32::try_from(origin.at.shard).unwrap_or(u32::MAX),
            conn: origin.at.conn.0,
            request: origin.request.0,
            user: origin.user,
        }
    }

    /// The origin on the owner's node: the connection behind `link`.
    pub(crate) fn origin(self, link: Link) -> Origin {
        Origin {
            at: ConnRef {
                link,
                shard: usize::try_from(self.shard).unwrap_or(usize::MAX),
                conn: ConnId(self.conn),
            },
            request: RequestId(self.request),
            user: self.user,
        }
    }
}

/// A conversation request, without its origin.
#[derive(Debug, Encode, Decode)]
pub(crate) enum Asked {
    Send(SendMessage),
    Change(Change),
    History(HistoryQuery),
    Room(RoomAction),
    Typing(bool),
    Mark(Marker, Seq),
}

/// From the dialing node to the owner, in order.
#[derive(Debug, Encode, Decode)]
pub(crate) enum Up {
    /// A request for conversation `conversation`, which the owner's partition holds.
    Conversation {
        conversation: ConversationId,
        from: Whence,
        asked: Asked,
    },
    /// A room to create, named `name`: the owner of the name's partition gives it its id.
    Create {
        from: Whence,
        name: String,
        invite_only: bool,
    },
}

impl Up {
    /// The message for `input` (a client's request) to `conversation` (a room creation goes
    /// as [`Up::Create`]); what a conversation is told by its own node only (commits, reads)
    /// is not forwarded, and the error says so.
    pub(crate) fn of(conversation: ConversationId, input: Input) -> Result<Up, &'static str> {
        let (origin, asked) = match input {
            Input::Send { origin, message } => (origin, Asked::Send(message)),
            Input::Change { origin, change } => (origin, Asked::Change(change)),
            Input::History { origin, query } => (origin, Asked::History(query)),
            Input::Room { origin, action } => (origin, Asked::Room(action)),
            Input::Typing { origin, active } => (origin, Asked::Typing(active)),
            Input::Mark {
                origin,
                marker,
                seq,
            } => (origin, Asked::Mark(marker, seq)),
            Input::Create {
                origin,
                name,
                invite_only,
            } => {
                return Ok(Up::Create {
                    from: Whence::of(&origin),
                    name,
                    invite_only,
                });
            }
            Input::Committed(_) | Input::Refused { .. } => {
                return Err("a commit cannot be forwarded");
            }
            Input::SenderOps { .. } | Input::EntryRead { .. } => {
                return Err("a read cannot be forwarded");
            }
        };
        Ok(Up::Conversation {
            conversation,
            from: Whence::of(&origin),
            asked,
        })
    }

    /// Who waits for an answer: a request that is answered (typing is not).
    pub(crate) fn waiting(&self) -> Option<Whence> {
        match self {
            Up::Conversation {
                asked: Asked::Typing(_),
                ..
            } => None,
            Up::Conversation { from, .. } | Up::Create { from, .. } => Some(*from),
        }
    }
}

impl Asked {
    /// The input for the owner's conversation, from `origin`.
    pub(crate) fn input(self, origin: Origin) -> Input {
        match self {
            Asked::Send(message) => Input::Send { origin, message },
            Asked::Change(change) => Input::Change { origin, change },
            Asked::History(query) => Input::History { origin, query },
            Asked::Room(action) => Input::Room { origin, action },
            Asked::Typing(active) => Input::Typing { origin, active },
            Asked::Mark(marker, seq) => Input::Mark {
                origin,
                marker,
                seq,
            },
        }
    }
}

/// What an event is, for the receiving node's connections ([`Live`]).
#[derive(Clone, Copy, Debug, Encode, Decode)]
pub(crate) enum Kind {
    /// A log entry at its position, written in the holder's ownership term.
    Entry(ConversationId, Seq, i64),
    Presence(UserId),
    Ephemeral,
    Other,
}

impl Kind {
    /// `live`'s kind; a log entry's with the term `term_of` gives its conversation.
    pub(crate) fn of(live: Live, term_of: impl FnOnce(ConversationId) -> i64) -> Kind {
        match live {
            Live::Entry((c, seq)) => Kind::Entry(c, seq, term_of(c)),
            Live::Presence(user) => Kind::Presence(user),
            Live::Ephemeral => Kind::Ephemeral,
            Live::Other => Kind::Other,
        }
    }

    pub(crate) fn live(self) -> Live {
        match self {
            Kind::Entry(c, seq, _) => Live::Entry((c, seq)),
            Kind::Presence(user) => Live::Presence(user),
            Kind::Ephemeral => Live::Ephemeral,
            Kind::Other => Live::Other,
        }
    }
}

/// From the owner to the dialing node, in order.
#[derive(Debug, Encode, Decode)]
pub(crate) enum Down {
    /// The answer frame to a forwarded request.
    Reply {
        shard: u32,
        conn: u64,
        request: u32,
        frame: Vec<u8>,
    },
    /// An event the owner published: for the dialing node's connections of `audience`,
    /// except `except` (a connection of the dialing node, the sender's).
    Event {
        frame: Vec<u8>,
        audience: Vec<UserId>,
        except: Option<(u32, u64)>,
        kind: Kind,
    },
    /// Users of the owner's node whose first device connected there (`None`), or whose
    /// last device there left (since when), in the order it happened; when the link starts,
    /// every user with a device there.
    Presence {
        changes: Vec<(UserId, Option<Timestamp>)>,
    },
}

/// A call: one request on its own stream, one [`Answer`].
#[derive(Debug, Encode, Decode)]
pub(crate) enum Call {
    /// A read of partition `partition` ([`crate::store::Read`]).
    Read {
        partition: u32,
        read: crate::store::Read,
    },
    /// Create the account `name` in its partition (registration, or a backend-minted
    /// token's first use): the owner gives it its id.
    CreateAccount {
        name: String,
        password_hash: Option<String>,
        created_at: Timestamp,
    },
    /// An operator's account action (`kick`, `disable`, `enable`, `revoke`) asked of another
    /// node's admin API, for the node holding the account's partition to take: answered
    /// with the admin API's status and JSON body ([`Acted`]).
    Act {
        name: String,
        action: AccountAction,
        device: Option<u64>,
    },
    /// An account action the node holding the account took, for this node's sessions.
    /// Answered with how many closed ([`Closed`]).
    Order(super::Order),
    /// This node's connections (of `user` only), at most `limit`, as its admin API's
    /// `/v1/connections` lists them: answered with that JSON.
    Connections { user: Option<UserId>, limit: u32 },
    /// A conversation whose partition this node holds, as the admin API's
    /// `/v1/conversations/SPEC` describes it: answered with that JSON, or `None` when it
    /// does not exist.
    Conversation { conversation: ConversationId },
    /// This node's summary as its admin API's `/v1/status` lists it under `nodes`:
    /// answered with that JSON.
    Status,
    /// An erasure's deletes in a conversation whose partition this node holds (the node
    /// holding the erased account asks): delete every message of `user` there as the
    /// operator. Answered with what was done ([`crate::shard::erase::Erased`]).
    Erase {
        conversation: ConversationId,
        user: UserId,
    },
}

/// The answer to [`Call::Act`]: the holding node's admin API status and body.
#[derive(Debug, Encode, Decode)]
pub(crate) struct Acted {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// The answer to [`Call::Order`]: sessions closed, and shards that could not be told.
#[derive(Debug, Encode, Decode)]
pub(crate) struct Closed {
    pub(crate) closed: u64,
    pub(crate) shards_not_answering: u64,
}

/// Why a call has no result.
#[derive(Debug, Encode, Decode)]
pub(crate) enum Refused {
    /// The node does not hold the partition (it moved).
    NotHere,
    /// The account's name is taken.
    Exists,
    /// The owner's read pool or storage queue is full.
    Busy,
    /// The owner's storage failed.
    Failed(String),
}

/// The answer to a [`Call`]: the read's encoded result, or the created account.
pub(crate) type Answer = Result<Vec<u8>, Refused>;

/// A call's result, encoded as its [`Answer`].
pub(crate) fn answer<T: Encode>(value: T) -> Answer {
    bincode::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Refused::Failed(e.to_string()))
}

/// The hello each side sends first: its node name and its [`proof`].
#[derive(Debug, Encode, Decode)]
pub(crate) struct Hello {
    pub(crate) node: String,
    pub(crate) proof: Vec<u8>,
}

/// The cluster secrets a node proves it belongs with: `cluster.secret`, which its proofs
/// are made with, and `cluster.accepted_secret` while the cluster rotates it, which the
/// other side's proofs may be made with too.
pub(crate) struct Secrets {
    pub(crate) signs: Vec<u8>,
    pub(crate) accepted: Option<Vec<u8>>,
}

impl Secrets {
    /// Proof that the side `role` ("dialer" or "listener") of the TLS session whose
    /// exported keying material is `exported` knows the cluster secret: HMAC-SHA256 over
    /// both, keyed by the signing secret. Bound to the session, so it cannot be replayed on
    /// another.
    pub(crate) fn proof(&self, role: &str, exported: &[u8]) -> Vec<u8> {
        proof(&self.signs, role, exported)
    }

    /// Whether `proof` is the proof of `role` for `exported` under either secret, compared
    /// in constant time.
    pub(crate) fn proven(&self, role: &str, exported: &[u8], proof: &[u8]) -> bool {
        std::iter::once(&self.signs)
            .chain(&self.accepted)
            .any(|secret| proven(secret, role, exported, proof))
    }
}

fn proof(secret: &[u8], role: &str, exported: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(role.as_bytes());
    mac.update(exported);
    mac.finalize().into_bytes().to_vec()
}

fn proven(secret: &[u8], role: &str, exported: &[u8], proof: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(role.as_bytes());
    mac.update(exported);
    mac.verify_slice(proof).is_ok()
}

/// One message with its length in front.
pub(crate) fn encode<T: Encode>(value: &T) -> Result<Bytes, String> {
    let mut out = vec![0u8; 4];
    bincode::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(out.len() - 4).map_err(|_| "a peer message over 4 GiB".to_owned())?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Bytes::from(out))
}

/// Decodes one message body (without its length), allocating no more than
/// [`MAX_MESSAGE`] whatever lengths it claims.
pub(crate) fn decode<T: Decode<()>>(body: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard().with_limit::<MAX_MESSAGE>();
    bincode::decode_from_slice(body, config)
        .map(|(value, _)| value)
        .map_err(|e| e.to_string())
}

/// Reads one message from `stream`; `Ok(None)` when the stream ended between messages.
pub(crate) async fn read<T: Decode<()>>(
    stream: &mut quinn::RecvStream,
) -> Result<Option<T>, String> {
    read_within(stream, MAX_MESSAGE).await
}

/// Reads one message of at most `max` bytes from `stream`.
pub(crate) async fn read_within<T: Decode<()>>(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, String> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(format!("a peer message of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_for_its_role_and_session_only() {
        let secret = [7u8; 32];
        let p = proof(&secret, "dialer", b"session one");
        assert!(proven(&secret, "dialer", b"session one", &p));
        assert!(!proven(&secret, "listener", b"session one", &p));
        assert!(!proven(&secret, "dialer", b"session two", &p));
        assert!(!proven(&[8u8; 32], "dialer", b"session one", &p));
    }

    /// While the secret rotates, a node proves with the secret it signs with and accepts
    /// proofs made with either: so a node on the old secret and one on the new link whenever
    /// one of them accepts the other's.
    #[test]
    fn proofs_of_either_secret_hold_while_it_rotates() {
        let secrets = |signs: u8, accepted: Option<u8>| Secrets {
            signs: vec![signs; 32],
            accepted: accepted.map(|a| vec![a; 32]),
        };
        let (before, adding, rotated, done) = (
            secrets(1, None),
            secrets(1, Some(2)),
            secrets(2, Some(1)),
            secrets(2, None),
        );
        let linked = |a: &Secrets, b: &Secrets| {
            a.proven("dialer", b"s", &b.proof("dialer", b"s"))
                && b.proven("dialer", b"s", &a.proof("dialer", b"s"))
        };
        // Each step of the rotation links with the step before and the step after.
        for (a, b) in [(&before, &adding), (&adding, &rotated), (&rotated, &done)] {
            assert!(linked(a, b));
        }
        assert!(linked(&adding, &adding) && linked(&rotated, &rotated));
        // Skipping a step does not.
        assert!(!linked(&before, &rotated) && !linked(&adding, &done));
        assert!(!linked(&before, &done));
        assert!(!rotated.proven("listener", b"s", &before.proof("dialer", b"s")));
    }

    #[test]
    fn a_claimed_length_beyond_the_limit_is_refused_before_it_is_allocated() {
        // A hello whose proof claims 2^42 bytes, in 10 bytes.
        let mut body = vec![0u8]; // an empty node name
        body.push(253); // a u64 length follows (bincode's varint)
        body.extend_from_slice(&(1u64 << 42).to_le_bytes());
        assert!(decode::<Hello>(&body).is_err());
    }

    #[test]
    fn messages_go_through_with_their_length() {
        let up = Up::Create {
            from: Whence {
                shard: 1,
                conn: 9,
                request: 3,
                user: UserId(5),
            },
            name: "lobby".into(),
            invite_only: true,
        };
        let bytes = encode(&up).unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(len as usize, bytes.len() - 4);
        match decode::<Up>(&bytes[4..]).unwrap() {
            Up::Create {
                from,
                name,
                invite_only,
            } => {
                assert_eq!((from.shard, from.conn, from.request), (1, 9, 3));
                assert_eq!((name.as_str(), invite_only), ("lobby", true));
            }
            other => panic!("{other:?}"),
        }
    }
}
