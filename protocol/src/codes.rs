//! Stable numeric codes: [`ErrorCode`] for error frames and [`GoodbyeCode`] for the reason a
//! connection ends (sent in a `Goodbye` frame and used as the QUIC application close code).
//!
//! Codes are `u16` newtypes rather than enums so that a client decodes a code a newer daemon
//! added without failing: it shows the reason text and falls back on the code's hundred
//! (1xx protocol, 2xx authentication, 3xx rights and membership, 4xx request, 5xx limits,
//! 9xx server). Codes are never reused or renumbered; the tables below are normative and
//! docs/PROTOCOL.md reproduces them (a test checks that it does).

use crate::codec::{Decode, Encode};

macro_rules! code_table {
    (
        $(#[$doc:meta])* $ty:ident, $table:ident;
        $( $(#[$vdoc:meta])* $name:ident = $value:literal, $text:literal; )+
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $ty(pub u16);

        impl $ty {
            $( $(#[$vdoc])* pub const $name: $ty = $ty($value); )+

            /// The constant's name (`"NOT_MEMBER"`), or `None` for a code this build does not know.
            #[must_use]
            pub fn name(self) -> Option<&'static str> {
                $table.iter().find(|e| e.0 == self).map(|e| e.1)
            }

            /// The standard description of the code, or `None` for a code this build does not know.
            #[must_use]
            pub fn description(self) -> Option<&'static str> {
                $table.iter().find(|e| e.0 == self).map(|e| e.2)
            }
        }

        /// Every known code with its name and standard description, in numeric order.
        pub const $table: &[($ty, &str, &str)] = &[ $( ($ty($value), stringify!($name), $text), )+ ];

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{} ({})", self.0, name),
                    None => write!(f, "{}", self.0),
                }
            }
        }
    };
}

code_table! {
    /// Why a request (or the hello) failed. Carried in `ServerFrame::Error`.
    ErrorCode, ERROR_CODES;
    /// The frame could not be decoded; the connection is closed.
    MALFORMED_FRAME = 100, "the frame is not a valid encoding; the connection is closed";
    /// The length prefix exceeds the frame limit; the connection is closed.
    FRAME_TOO_LARGE = 101, "the frame's length prefix exceeds the frame limit; the connection is closed";
    /// No protocol version in common.
    UNSUPPORTED_VERSION = 102, "client and daemon have no protocol version in common";
    /// A frame that is not allowed now (a second hello, a request before hello).
    UNEXPECTED_FRAME = 103, "this frame is not allowed in the connection's current state";
    /// The request needs an authenticated connection.
    NOT_AUTHENTICATED = 104, "authenticate first: only register, login, authenticate and ping are allowed";
    /// The connection is already authenticated.
    ALREADY_AUTHENTICATED = 105, "the connection is already authenticated";
    /// The client did not authenticate within the configured time.
    AUTH_TIMEOUT = 106, "authentication did not complete in time";
    /// Login with a password that does not match.
    WRONG_PASSWORD = 200, "the password does not match";
    /// No account with that name.
    UNKNOWN_USER = 201, "no account with that name or id";
    /// The token's expiry has passed.
    TOKEN_EXPIRED = 202, "the token has expired; log in again or mint a new one";
    /// The token's signature does not verify (forged or altered).
    TOKEN_INVALID = 203, "the token's signature does not verify";
    /// The token names a key id the daemon does not have.
    TOKEN_UNKNOWN_KEY = 204, "the token was signed with a key the daemon does not know";
    /// The token is not in the documented format.
    TOKEN_MALFORMED = 205, "the token is not in the documented format";
    /// Register with a name that is taken.
    USERNAME_TAKEN = 206, "that user name is taken";
    /// A user name that breaks the naming rules.
    INVALID_USERNAME = 207, "user names are 3 to 32 characters: a-z, 0-9, '_', '-', '.', starting with a letter";
    /// A password outside the allowed length.
    INVALID_PASSWORD = 208, "passwords are 8 to 256 bytes";
    /// An operator disabled the account: it cannot log in or authenticate.
    ACCOUNT_DISABLED = 209, "the account is disabled";
    /// An operator revoked the account's tokens issued up to a time, this one included.
    TOKEN_REVOKED = 210, "the token was revoked; log in again or mint a new one";
    /// The user is not a member of the conversation.
    NOT_MEMBER = 300, "you are not a member of this conversation";
    /// The user's role does not allow the operation.
    FORBIDDEN = 301, "your role in this room does not allow that";
    /// The user is banned from the room.
    BANNED = 302, "you are banned from this room";
    /// The room is invite-only and the user has no invitation.
    INVITE_REQUIRED = 303, "this room is invite-only";
    /// A room with that name exists.
    ROOM_NAME_TAKEN = 304, "a room with that name exists";
    /// No room with that id or name.
    UNKNOWN_ROOM = 305, "no room with that id or name";
    /// The conversation does not exist.
    UNKNOWN_CONVERSATION = 306, "no such conversation";
    /// The user already is a member.
    ALREADY_MEMBER = 307, "already a member of this room";
    /// The user is in as many rooms as allowed.
    TOO_MANY_ROOMS = 308, "you are in as many rooms as the daemon allows";
    /// The room has as many members as allowed.
    ROOM_FULL = 309, "the room has as many members as the daemon allows";
    /// A room name that breaks the naming rules.
    INVALID_ROOM_NAME = 310, "room names are 1 to 64 characters: a-z, 0-9, '_', '-', '.'";
    /// Only the message's author may do that (edit it; delete it, outside a room's admins).
    NOT_AUTHOR = 311, "only the message's author may do that";
    /// A field is out of range or inconsistent.
    INVALID_REQUEST = 400, "a field of the request is out of range or inconsistent";
    /// The message body is larger than allowed.
    BODY_TOO_LARGE = 401, "the message body exceeds the maximum message size";
    /// The body does not match its content type (text that is not UTF-8).
    INVALID_CONTENT = 402, "the body does not match its content type";
    /// A reply to a sequence number the conversation does not have.
    UNKNOWN_MESSAGE = 403, "the conversation has no entry with that sequence number";
    /// An edit or delete of a message that is not there any more.
    MESSAGE_DELETED = 404, "the message was deleted";
    /// You already reacted to the message with that reaction.
    ALREADY_REACTED = 405, "you already reacted with that to this message";
    /// You have no such reaction on the message to take back.
    NOT_REACTED = 406, "you have not reacted with that to this message";
    /// A reaction that breaks the rules (`limits::MAX_REACTION`).
    INVALID_REACTION = 407, "reactions are 1 to 32 bytes with no control or space characters";
    /// A mention of a user who is not a member of the conversation, or of one user twice.
    INVALID_MENTION = 408, "mentions must name members of the conversation, each once";
    /// Too many sends; wait `retry_after_ms`.
    RATE_LIMITED = 500, "too many sends; retry after the given delay";
    /// Too many requests in flight on this connection.
    TOO_MANY_IN_FLIGHT = 501, "too many requests in flight on this connection";
    /// The daemon is shedding load; retry later.
    OVERLOADED = 502, "the daemon is overloaded; retry after the given delay";
    /// The message was edited as often as allowed (`limits::MAX_EDITS`).
    TOO_MANY_EDITS = 503, "the message was edited as often as allowed";
    /// The message has as many reactions, or kinds of reaction, as allowed.
    TOO_MANY_REACTIONS = 504, "the message has as many reactions as allowed";
    /// A server-side fault; the request may or may not have taken effect.
    INTERNAL = 900, "internal error";
    /// Storage or a dependency is unavailable; retry later.
    UNAVAILABLE = 901, "the daemon cannot serve this now (storage unavailable, shutting down, or a node of a cluster that does not hold the data)";
}

code_table! {
    /// Why the daemon ends a connection: sent in `ServerFrame::Goodbye` just before the QUIC
    /// close, whose application error code is the same number.
    GoodbyeCode, GOODBYE_CODES;
    /// A normal close.
    NORMAL = 0, "normal close";
    /// The daemon is shutting down; reconnect (to another instance) and resume.
    SHUTTING_DOWN = 1, "the daemon is shutting down; reconnect and resume";
    /// No traffic within the idle timeout.
    IDLE_TIMEOUT = 2, "no traffic within the idle timeout";
    /// The connection did not authenticate in time.
    AUTH_TIMEOUT = 3, "authentication did not complete in time";
    /// The peer broke the protocol (malformed or oversize frame, unexpected stream).
    PROTOCOL_VIOLATION = 4, "protocol violation (malformed or oversize frame)";
    /// The same user and device connected again; this older connection is closed.
    REPLACED = 5, "the same device connected again";
    /// The session's token expired.
    TOKEN_EXPIRED = 6, "the session's token expired";
    /// No protocol version in common.
    UNSUPPORTED_VERSION = 7, "no protocol version in common";
    /// The daemon is over capacity.
    OVERLOADED = 8, "the daemon is over capacity";
    /// An operator closed the session.
    KICKED = 9, "an operator closed the session";
    /// An operator disabled the account.
    ACCOUNT_DISABLED = 10, "the account is disabled";
    /// An operator revoked the session's token.
    TOKEN_REVOKED = 11, "the session's token was revoked";
}

impl ErrorCode {
    /// Whether retrying the same request later can succeed without changing it.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RATE_LIMITED | Self::TOO_MANY_IN_FLIGHT | Self::OVERLOADED | Self::UNAVAILABLE
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        for table in [
            ERROR_CODES.iter().map(|e| e.0.0).collect::<Vec<_>>(),
            GOODBYE_CODES.iter().map(|e| e.0.0).collect::<Vec<_>>(),
        ] {
            assert!(table.windows(2).all(|w| w[0] < w[1]), "{table:?}");
        }
    }

    #[test]
    fn unknown_codes_still_display() {
        assert_eq!(ErrorCode(4242).to_string(), "4242");
        assert_eq!(ErrorCode::NOT_MEMBER.to_string(), "300 (NOT_MEMBER)");
        assert!(ErrorCode::RATE_LIMITED.is_retryable());
        assert!(!ErrorCode::NOT_MEMBER.is_retryable());
    }
}
