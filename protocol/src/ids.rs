//! Identifiers: small `Copy` newtypes, so a `UserId` can never be passed where a `RoomId`
//! is expected.
//!
//! All of them encode as the integer they wrap (a bincode varint). [`ConversationId`] is
//! the one structured identifier: a direct conversation is named by its two members, so
//! no setup round trip is needed, and the decoder only accepts the canonical form
//! (`low < high`), so every conversation has exactly one encoding.

use crate::codec::{BorrowDecode, BorrowDecoder, Decode, Decoder, Encode, RawDecodeError};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Encode, Decode)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A user account, assigned by the daemon when the account is created.
    UserId(u64)
);
id_newtype!(
    /// One of a user's devices, chosen by the client (a random `u64` kept with its profile).
    /// The daemon keeps one registry entry per (user, device); a second connection with the
    /// same pair replaces the first.
    DeviceId(u64)
);
id_newtype!(
    /// A group room, assigned by the daemon when the room is created.
    RoomId(u64)
);
id_newtype!(
    /// Position of an entry in one conversation's log: contiguous, starting at 1.
    /// `Seq(0)` means "nothing yet" (an empty conversation, or a cursor before the first entry).
    Seq(u64)
);
id_newtype!(
    /// Client operation id of a send. The daemon deduplicates on (sender, op id): a retried
    /// send with the same op id returns the original ack and is stored once.
    OpId(u64)
);
id_newtype!(
    /// Chosen by the client per request and echoed in the response or error, so requests
    /// can be pipelined.
    RequestId(u32)
);
id_newtype!(
    /// Milliseconds since the Unix epoch (UTC), as the daemon's clock saw it.
    Timestamp(u64)
);

impl Seq {
    /// The cursor before the first entry of any conversation.
    pub const ZERO: Seq = Seq(0);

    /// The sequence number after this one.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

/// A conversation: the unit of ordering. Every conversation has its own log of entries
/// numbered by [`Seq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ConversationId {
    /// A one-to-one conversation between two different users, `low < high`.
    /// Build it with [`ConversationId::direct`], which orders the pair.
    Direct {
        /// The member with the smaller id.
        low: UserId,
        /// The member with the larger id.
        high: UserId,
    },
    /// A user's notes to self (a direct conversation with oneself).
    Notes(UserId),
    /// A group room.
    Room(RoomId),
}

impl ConversationId {
    /// The conversation between `a` and `b`: notes-to-self when they are the same user.
    #[must_use]
    pub fn direct(a: UserId, b: UserId) -> ConversationId {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => ConversationId::Direct { low: a, high: b },
            std::cmp::Ordering::Greater => ConversationId::Direct { low: b, high: a },
            std::cmp::Ordering::Equal => ConversationId::Notes(a),
        }
    }

    /// Whether `user` is one of the fixed members of a direct or notes conversation.
    /// Always `false` for rooms, whose membership lives in the daemon.
    #[must_use]
    pub fn is_direct_member(&self, user: UserId) -> bool {
        match *self {
            ConversationId::Direct { low, high } => user == low || user == high,
            ConversationId::Notes(owner) => user == owner,
            ConversationId::Room(_) => false,
        }
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "dm:{low}:{high}"),
            ConversationId::Notes(user) => write!(f, "notes:{user}"),
            ConversationId::Room(room) => write!(f, "room:{room}"),
        }
    }
}

/// The wire shape of [`ConversationId`] before the canonical-order check.
#[derive(Decode)]
enum RawConversationId {
    Direct { low: UserId, high: UserId },
    Notes(UserId),
    Room(RoomId),
}

impl<Context> Decode<Context> for ConversationId {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, RawDecodeError> {
        Ok(match RawConversationId::decode(decoder)? {
            RawConversationId::Direct { low, high } if low < high => {
                ConversationId::Direct { low, high }
            }
            RawConversationId::Direct { .. } => {
                return Err(RawDecodeError::Other(
                    "direct conversation ids must name two different users, smaller id first",
                ));
            }
            RawConversationId::Notes(user) => ConversationId::Notes(user),
            RawConversationId::Room(room) => ConversationId::Room(room),
        })
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ConversationId {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, RawDecodeError> {
        ConversationId::decode(decoder)
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for ConversationId {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<ConversationId>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        use proptest::prelude::*;
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(a, b)| ConversationId::direct(UserId(a), UserId(b))),
            any::<u64>().prop_map(|u| ConversationId::Notes(UserId(u))),
            any::<u64>().prop_map(|r| ConversationId::Room(RoomId(r))),
        ]
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn direct_orders_the_pair_and_folds_self_into_notes() {
        let (a, b) = (UserId(7), UserId(3));
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_eq!(
            ConversationId::direct(a, b),
            ConversationId::Direct { low: b, high: a }
        );
        assert_eq!(ConversationId::direct(a, a), ConversationId::Notes(a));
        assert!(ConversationId::direct(a, b).is_direct_member(a));
        assert!(!ConversationId::direct(a, b).is_direct_member(UserId(1)));
    }

    #[test]
    fn non_canonical_direct_ids_do_not_decode() {
        // Direct (variant 0) with low = 5, high = 2: reversed.
        assert!(codec::decode_value::<ConversationId, 64>(&[0, 5, 2]).is_err());
        // Same user twice is notes-to-self, never a direct conversation.
        assert!(codec::decode_value::<ConversationId, 64>(&[0, 5, 5]).is_err());
        assert_eq!(
            codec::decode_value::<ConversationId, 64>(&[0, 2, 5]).unwrap(),
            ConversationId::direct(UserId(5), UserId(2))
        );
    }
}
