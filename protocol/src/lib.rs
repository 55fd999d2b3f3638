//! # chat-protocol — chatd wire protocol v2
//!
//! The one definition of what travels between a chatd client and the daemon: identifiers,
//! every client request and server frame, the framing, the codec, the limits and the stable
//! error codes. docs/PROTOCOL.md is the normative description; its byte-level test vectors
//! are checked against this crate by `tests/vectors.rs`.
//!
//! This crate is sans-IO, in the manner of quinn-proto: no sockets, no async runtime, no
//! clock. The daemon and the SDK do the I/O and call in with bytes:
//!
//! - encode with [`encode_frame`] (appends a frame to a buffer you reuse);
//! - decode from a stream by feeding chunks to a [`FrameDecoder`] and pulling frames, or a
//!   whole datagram with [`decode_datagram`];
//! - check names and limits with [`names`] and [`limits`] before sending or when serving.
//!
//! Decoding never panics and never allocates more than the frame limit of its direction,
//! whatever the input: oversize length prefixes are rejected from their first four bytes,
//! and every container length inside a body is charged against the limit before allocation.

#![forbid(unsafe_code)]

pub mod chain;
mod client;
mod codec;
pub mod codes;
pub mod events;
mod frame;
mod ids;
pub mod limits;
pub mod names;
pub mod positions;
mod server;
#[cfg(feature = "token")]
pub mod token;

pub use client::{
    Auth, ClientFrame, ContentType, Cursor, DeleteMessage, EditMessage, Hello, HistoryFrom,
    HistoryQuery, Marker, Order, ReactMessage, Request, Resume, Role, SendMessage, TypingUpdate,
    UserRef, VersionRange,
};
pub use codes::{ErrorCode, GoodbyeCode};
pub use frame::{
    DecodeError, EncodeError, Frame, FrameDecoder, LENGTH_PREFIX, PROTOCOL_VERSION,
    decode_datagram, decode_frame, encode_frame, encode_frame_exact, encode_frame_to_vec,
    frame_size,
};
pub use ids::{ConversationId, DeviceId, OpId, RequestId, RoomId, Seq, Timestamp, UserId};
pub use server::{
    Appended, Chain, ConversationPage, ConversationSummary, Deleted, Deletion, Edit, Edited, Entry,
    Erased, ErrorBody, Event, Gap, Goodbye, Hash, HelloOk, HistoryPage, Limits, Member, MemberPage,
    MembershipChange, MembershipEvent, Message, PresenceInfo, PresenceStatus, Reaction, Reactions,
    Receipt, Response, RoomInfo, SendAck, ServerFrame, Session, TokenGrant, TypingEvent, UserInfo,
};

/// The TLS application protocol (ALPN) id of chatd's framing, the same for every protocol
/// version (the version is agreed in the hello): clients offer it, the daemon accepts only it
/// (docs/PROTOCOL.md section 1).
pub const ALPN: &[u8] = b"chat/1";

/// The version range this crate speaks, for `Hello::versions`.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange {
    min: PROTOCOL_VERSION,
    max: PROTOCOL_VERSION,
};

#[cfg(test)]
mod proptests;
