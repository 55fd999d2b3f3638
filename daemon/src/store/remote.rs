//! Reads of a partition that another node of the cluster holds (docs/SCALING.md section 6):
//! what [`Stores`](super::Stores) asks that node for when a read it routes falls on a
//! partition this node does not hold. Only the reads a client's node makes for the client
//! go to another node: its account, a room by name, a catch-up's pages and heads and
//! markers, the listing, room counts and presence rights. A conversation's own reads (its
//! state, its senders' windows, a history page it checked) run on the node that owns it.

use bincode::{Decode, Encode};
use chat_protocol::{ConversationId, HistoryFrom, Order, RoomId, Seq, UserId};

use super::{Error, Store};

/// The most entries or conversations one remote read returns: its answer stays one
/// bounded message between nodes.
pub const MAX_REMOTE_ROWS: usize = 1024;

/// A read of one partition, as it goes to the node that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Read {
    /// [`Store::user`].
    User(UserId),
    /// [`Store::user_by_name`].
    UserByName(String),
    /// [`Store::room`].
    Room(RoomId),
    /// [`Store::room_by_name`].
    RoomByName(String),
    /// [`Store::restriction`].
    Restriction(UserId),
    /// [`Store::history`], at most [`MAX_REMOTE_ROWS`] entries.
    History {
        /// Whose log.
        conversation: ConversationId,
        /// Where the page starts.
        from: HistoryFrom,
        /// How many entries, at most.
        limit: u32,
        /// Which way.
        order: Order,
        /// No entry after this one.
        head: Seq,
    },
    /// [`Store::head`].
    Head(ConversationId),
    /// [`Store::marks`].
    Marks(ConversationId, UserId),
    /// [`Store::member_state`].
    MemberState(RoomId, UserId),
    /// [`Store::user_conversations`], at most [`MAX_REMOTE_ROWS`].
    UserConversations {
        /// Whose.
        user: UserId,
        /// After this one.
        after: Option<ConversationId>,
        /// How many, at most.
        limit: u32,
    },
    /// [`Store::room_count`].
    RoomCount(UserId, u32),
    /// [`Store::rooms_of`].
    RoomsOf(UserId),
    /// [`Store::is_in`].
    IsIn(UserId, ConversationId),
    /// [`Store::conversations_of`].
    ConversationsOf(UserId),
}

/// What reads the partitions another node holds (the node's peers, `crate::peer`).
pub trait Remote: Send + Sync {
    /// Asks the node holding partition `partition` for `read`, and waits for its answer as
    /// [`Read::run`] encoded it there.
    ///
    /// # Errors
    /// [`Error::NotHere`] when no node is known to hold it, or that node no longer does;
    /// [`Error::Remote`] when it did not answer in time or the link failed.
    fn read(&self, partition: usize, read: Read) -> Result<Vec<u8>, Error>;
}

fn encode<T: Encode>(value: T) -> Result<Vec<u8>, Error> {
    bincode::encode_to_vec(value, bincode::config::standard()).map_err(|e| Error::Corrupt {
        cf: super::Cf::Meta,
        message: format!("a remote answer does not encode: {e}"),
    })
}

fn limit(n: u32) -> usize {
    usize::try_from(n)
        .unwrap_or(MAX_REMOTE_ROWS)
        .min(MAX_REMOTE_ROWS)
}

impl Read {
    /// Runs the read on `store`, the partition's store held here, and encodes the answer
    /// for [`Asker::ask`].
    ///
    /// # Errors
    /// The store's errors.
    pub fn run(&self, store: &Store) -> Result<Vec<u8>, Error> {
        match self {
            Read::User(id) => encode(store.user(*id)?),
            Read::UserByName(name) => encode(store.user_by_name(name)?),
            Read::Room(id) => encode(store.room(*id)?),
            Read::RoomByName(name) => encode(store.room_by_name(name)?),
            Read::Restriction(user) => encode(store.restriction(*user)?),
            Read::History {
                conversation,
                from,
                limit: n,
                order,
                head,
            } => encode(store.history(*conversation, *from, limit(*n), *order, *head)?),
            Read::Head(c) => encode(store.head(*c)?),
            Read::Marks(c, user) => encode(store.marks(*c, *user)?),
            Read::MemberState(room, user) => encode(store.member_state(*room, *user)?),
            Read::UserConversations {
                user,
                after,
                limit: n,
            } => encode(store.user_conversations(*user, *after, limit(*n))?),
            Read::RoomCount(user, max) => encode(store.room_count(*user, *max)?),
            Read::RoomsOf(user) => encode(store.rooms_of(*user)?),
            Read::IsIn(user, c) => encode(store.is_in(*user, *c)?),
            Read::ConversationsOf(user) => encode(store.conversations_of(*user)?),
        }
    }
}

/// One partition held by another node, and how to ask it.
#[derive(Clone)]
pub(super) struct Asker {
    pub(super) partition: usize,
    pub(super) remote: std::sync::Arc<dyn Remote>,
}

impl Asker {
    /// Sends `read` and decodes its answer.
    pub(super) fn ask<T: Decode<()>>(&self, read: Read) -> Result<T, Error> {
        let bytes = self.remote.read(self.partition, read)?;
        let config = bincode::config::standard().with_limit::<{ 16 << 20 }>();
        bincode::decode_from_slice(&bytes, config)
            .map(|(value, _)| value)
            .map_err(|e| Error::Remote {
                partition: self.partition,
                message: format!("an answer does not decode: {e}"),
            })
    }
}

/// A partition a read goes to: a store held here, or another node.
pub(super) enum Part {
    Here(Store),
    There(Asker),
}
