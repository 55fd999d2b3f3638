//! Protocol ceilings: the largest values any v2 peer must accept.
//!
//! The daemon may configure tighter limits (it announces its own in `HelloOk::limits`) but
//! never looser ones. Frame limits are enforced by the decoder before it allocates; the
//! field and collection limits below are checked by the daemon once the frame is decoded,
//! which answers a violation with a typed error (`INVALID_REQUEST`, `BODY_TOO_LARGE`, ...)
//! and keeps the connection. Every client frame within [`MAX_CLIENT_FRAME`] decodes, however
//! its bytes are spent (a collection of many small elements included): the decode memory
//! bound [`MAX_CLIENT_DECODE`] covers the largest in-memory size such a frame can have.

/// Largest frame a client may send (length prefix value: version byte + body).
/// Client frames are small; the largest is a send with a maximal body.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// The most memory a decoder may reserve for one client frame's value. Every element of a
/// client frame's collections takes at least one byte on the wire and at most 32 bytes in
/// memory (the largest, a `Cursor` or a `UserRef`, is 32 bytes; see the tests), so any frame
/// within [`MAX_CLIENT_FRAME`] fits, and a length prefix claiming more fails before
/// allocating.
pub const MAX_CLIENT_DECODE: usize = 32 * MAX_CLIENT_FRAME;

/// Largest frame the daemon may send. Sized for a history page of [`MAX_PAGE`] entries with
/// bodies of [`MAX_BODY`] bytes each.
pub const MAX_SERVER_FRAME: usize = 2 * 1024 * 1024;

/// Largest message body in bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// Most edits of one message.
pub const MAX_EDITS: usize = 64;

/// Longest reaction in bytes (`ReactMessage::reaction`): room for any emoji sequence.
pub const MAX_REACTION: usize = 32;

/// Most different reactions on one message.
pub const MAX_REACTION_KINDS: usize = 20;

/// Most reactions on one message, every kind and user counted (one user's reaction with two
/// kinds counts twice).
pub const MAX_REACTIONS: usize = 1024;

/// Most users one message mentions.
pub const MAX_MENTIONS: usize = 32;

/// The most `Entry::charge` can be: an edited message with every edit, mention and
/// reaction it may have.
pub const MAX_ENTRY_CHARGE: usize = 2 * MAX_BODY
    + 9 * MAX_EDITS
    + 9 * MAX_MENTIONS
    + MAX_REACTION_KINDS * (48 + MAX_REACTION)
    + 9 * MAX_REACTIONS;

/// Most entries in one history page, and most items in any other paged listing.
pub const MAX_PAGE: u16 = 100;

/// Longest user name in bytes. Rules: see `names`.
pub const MAX_USER_NAME: usize = 32;

/// Shortest user name in bytes.
pub const MIN_USER_NAME: usize = 3;

/// Longest room name in bytes.
pub const MAX_ROOM_NAME: usize = 64;

/// Shortest password in bytes.
pub const MIN_PASSWORD: usize = 8;

/// Longest password in bytes.
pub const MAX_PASSWORD: usize = 256;

/// Longest access token in bytes.
pub const MAX_TOKEN: usize = 512;

/// Longest client software name in the hello.
pub const MAX_CLIENT_NAME: usize = 64;

/// Longest human-readable reason in an error or goodbye frame, in bytes.
pub const MAX_REASON: usize = 256;

/// Most per-conversation cursors in one resume.
pub const MAX_RESUME_CURSORS: usize = 1024;

/// Most users named in one lookup or presence subscription change.
pub const MAX_USERS_PER_REQUEST: usize = 256;

/// How long a typing indicator lasts unless refreshed, in milliseconds.
pub const TYPING_TTL_MS: u32 = 6_000;

// A full history page of messages never edited must fit a server frame: every entry's
// in-memory size is charged to the decode limit, so keep generous headroom per entry for the
// fixed fields. An edited message carries two bodies: the daemon cuts a page short by bytes.
const _: () = assert!(MAX_PAGE as usize * (MAX_BODY + 512) <= MAX_SERVER_FRAME);
// One entry always fits a frame, however often its message was edited and reacted to.
const _: () = assert!(MAX_ENTRY_CHARGE + 512 <= MAX_SERVER_FRAME);
// A maximal send must fit a client frame.
const _: () = assert!(MAX_BODY + 9 * MAX_MENTIONS + 512 <= MAX_CLIENT_FRAME);
// Frame lengths travel in a u32.
const _: () = assert!(MAX_SERVER_FRAME <= u32::MAX as usize);
