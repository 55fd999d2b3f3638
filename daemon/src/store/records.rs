//! The records the store keeps: accounts, restrictions, rooms and memberships, a
//! conversation's snapshot, sender ops and markers, with their encodings.

use super::*;

/// An account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct UserRecord {
    /// Its id.
    pub id: UserId,
    /// Its name.
    pub name: String,
    /// argon2id PHC string; `None` for accounts created by a backend-minted token.
    pub password_hash: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at: Timestamp,
}

/// `Cf::Meta` key prefix of account restrictions (followed by the user id, 8 bytes
/// big-endian); the value is a JSON [`Restriction`].
pub const RESTRICTION_PREFIX: &[u8] = b"restrict/";

/// The `Cf::Meta` key of a user's restriction.
#[must_use]
pub fn restriction_key(user: UserId) -> Vec<u8> {
    [RESTRICTION_PREFIX, &user.0.to_be_bytes()].concat()
}

/// What an operator set on an account (`chatd admin disable`, `enable`, `revoke`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub struct Restriction {
    /// The account cannot log in or authenticate.
    pub disabled: bool,
    /// Tokens issued before this time (seconds since the epoch, `iat`) are refused, and so
    /// are tokens without `iat`; 0: none is.
    pub tokens_from: u64,
}

impl Restriction {
    /// Why a token issued at `issued_at` cannot authenticate this account, if it cannot.
    #[must_use]
    pub fn refuses(&self, issued_at: Option<u64>) -> Option<chat_protocol::ErrorCode> {
        if self.disabled {
            Some(chat_protocol::ErrorCode::ACCOUNT_DISABLED)
        } else if self.tokens_from > 0 && issued_at.is_none_or(|iat| iat < self.tokens_from) {
            Some(chat_protocol::ErrorCode::TOKEN_REVOKED)
        } else {
            None
        }
    }
}

/// A room's fixed facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RoomRecord {
    /// Its id.
    pub id: RoomId,
    /// Its unique name.
    pub name: String,
    /// Whether joining needs an invitation.
    pub invite_only: bool,
    /// Creation time, ms since the epoch.
    pub created_at: Timestamp,
}

/// A user's standing in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum MemberState {
    /// A member with a role.
    Member(Role),
    /// Invited, not yet joined.
    Invited,
    /// Banned: cannot join. With the role the user had when banned (`Member` for a user who
    /// was not a member): only someone who outranks it may unban.
    Banned(Role),
}

impl MemberState {
    /// One byte on disk.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            MemberState::Member(Role::Member) => 0,
            MemberState::Member(Role::Admin) => 1,
            MemberState::Member(Role::Owner) => 2,
            MemberState::Invited => 3,
            MemberState::Banned(Role::Member) => 4,
            MemberState::Banned(Role::Admin | Role::Owner) => 5,
        }
    }

    pub(super) fn from_byte(b: &[u8]) -> Option<MemberState> {
        Some(match b {
            [0] => MemberState::Member(Role::Member),
            [1] => MemberState::Member(Role::Admin),
            [2] => MemberState::Member(Role::Owner),
            [3] => MemberState::Invited,
            [4] => MemberState::Banned(Role::Member),
            [5] => MemberState::Banned(Role::Admin),
            _ => return None,
        })
    }
}

/// What a conversation's owner shard needs to take over a conversation.
#[derive(Debug, Default)]
pub struct ConversationSnapshot {
    /// The last stored sequence number.
    pub head: Seq,
    /// For rooms: the record and every member, invitation and ban.
    pub room: Option<(RoomRecord, Vec<(UserId, MemberState)>)>,
    /// Every member's (delivered, read) markers.
    pub marks: Vec<(UserId, Seq, Seq)>,
    /// The link of the entry `head` (`Store::chain_tip`); `None` before the first entry
    /// (the conversation starts its chain at the genesis).
    pub tip: Option<chat_protocol::chain::Hash>,
}

/// A `links` row: the entry's link, then its digest.
#[must_use]
pub fn encode_link(
    link: &chat_protocol::chain::Hash,
    digest: &chat_protocol::chain::Hash,
) -> [u8; 64] {
    let mut row = [0u8; 64];
    row[..32].copy_from_slice(link);
    row[32..].copy_from_slice(digest);
    row
}

/// The (link, digest) of a `links` row; `None` for bytes [`encode_link`] never writes.
#[must_use]
pub fn parse_link(row: &[u8]) -> Option<(chat_protocol::chain::Hash, chat_protocol::chain::Hash)> {
    let row: &[u8; 64] = row.try_into().ok()?;
    let (link, digest) = row.split_at(32);
    Some((link.try_into().ok()?, digest.try_into().ok()?))
}

/// The stored form of a user's markers: delivered then read, big-endian.
#[must_use]
pub fn encode_marks(delivered: Seq, read: Seq) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&delivered.0.to_be_bytes());
    value[8..].copy_from_slice(&read.0.to_be_bytes());
    value
}

/// One stored send of a sender ([`Cf::SenderOps`]): its op id, and where and when it was
/// stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderOp {
    /// The client's op id.
    pub op: OpId,
    /// Its sequence number.
    pub seq: Seq,
    /// Its server timestamp.
    pub ts: Timestamp,
}

impl SenderOp {
    /// The stored value (the seq is in the key): op id then timestamp, big-endian.
    #[must_use]
    pub fn value(&self) -> [u8; 16] {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&self.op.0.to_be_bytes());
        value[8..].copy_from_slice(&self.ts.0.to_be_bytes());
        value
    }
}

pub(crate) fn decode_sender_op(seq: Seq, value: &[u8]) -> Option<SenderOp> {
    let value: &[u8; 16] = value.try_into().ok()?;
    Some(SenderOp {
        op: OpId(keys::parse_id(&value[..8])?),
        seq,
        ts: Timestamp(keys::parse_id(&value[8..])?),
    })
}

pub(super) fn parse_marks(value: &[u8]) -> Option<(Seq, Seq)> {
    let value: &[u8; 16] = value.try_into().ok()?;
    Some((
        Seq(keys::parse_id(&value[..8])?),
        Seq(keys::parse_id(&value[8..])?),
    ))
}

/// Decodes a stored log entry.
pub(super) fn decode_entry(bytes: &[u8]) -> Result<Entry, Error> {
    Entry::decode_from(bytes).map_err(|e| Error::Corrupt {
        cf: Cf::Log,
        message: e.to_string(),
    })
}

/// Serializes a record for storage.
#[must_use]
pub fn to_json<T: Serialize>(record: &T) -> Vec<u8> {
    // Plain structs of strings and integers always serialize.
    serde_json::to_vec(record).unwrap_or_default()
}
