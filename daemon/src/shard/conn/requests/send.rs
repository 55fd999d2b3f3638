//! `Send`, `Edit`, `Delete` and `React`: the body's size and content type, a send's
//! mentions and a reaction's form, the user's send rate limit (shared by their devices and by
//! these four requests, charged here on the connection's shard), then straight to the
//! conversation's owner.

use std::time::Instant;

use chat_protocol::limits::MAX_MENTIONS;
use chat_protocol::{
    ContentType, DeleteMessage, EditMessage, ErrorBody, ErrorCode, ReactMessage, SendMessage,
    ServerFrame, names,
};

use super::Asked;
use crate::shard::conversation::{self, Change, Input};
use crate::shard::encode;

pub(super) fn send(asked: &Asked<'_>, message: SendMessage) {
    let mentions = &message.mentions;
    if mentions.len() > MAX_MENTIONS {
        let reason = format!("at most {MAX_MENTIONS} mentions");
        return asked.fail(ErrorCode::INVALID_MENTION, &reason);
    }
    if (1..mentions.len()).any(|i| mentions[..i].contains(&mentions[i])) {
        return asked.fail(ErrorCode::INVALID_MENTION, "a user is mentioned twice");
    }
    if checked(asked, Some((message.content_type, &message.body))) {
        let origin = asked.origin;
        asked.to_owner(message.conversation, Input::Send { origin, message });
    }
}

pub(super) fn edit(asked: &Asked<'_>, edit: EditMessage) {
    if checked(asked, Some((edit.content_type, &edit.body))) {
        let (origin, conversation) = (asked.origin, edit.conversation);
        let change = Change::Edit(edit);
        asked.to_owner(conversation, Input::Change { origin, change });
    }
}

pub(super) fn delete(asked: &Asked<'_>, delete: DeleteMessage) {
    if checked(asked, None) {
        let (origin, conversation) = (asked.origin, delete.conversation);
        let change = Change::Delete(delete);
        asked.to_owner(conversation, Input::Change { origin, change });
    }
}

pub(super) fn react(asked: &Asked<'_>, react: ReactMessage) {
    if let Err(code) = names::check_reaction(&react.reaction) {
        return asked.fail(code, "");
    }
    if checked(asked, None) {
        let (origin, conversation) = (asked.origin, react.conversation);
        let change = Change::React(react);
        asked.to_owner(conversation, Input::Change { origin, change });
    }
}

/// Whether a send, edit, delete or reaction may go on: its content fits, and the user's rate allows it;
/// if not, it is answered here.
fn checked(asked: &Asked<'_>, content: Option<(ContentType, &[u8])>) -> bool {
    let config = asked.shard.shared.config();
    let limits = &config.limits;
    if let Some((content_type, body)) = content {
        if body.len() > limits.max_body {
            asked.fail(ErrorCode::BODY_TOO_LARGE, "");
            return false;
        }
        if !conversation::valid_content(content_type, body) {
            asked.fail(
                ErrorCode::INVALID_CONTENT,
                "text content types need UTF-8 bodies",
            );
            return false;
        }
    }
    let (rate, burst) = (f64::from(limits.send_rate), f64::from(limits.send_burst));
    let sends = asked.conn.sends.borrow().clone();
    if let Some(Err(wait_ms)) = sends.map(|s| s.take(Instant::now(), rate, burst)) {
        asked.shard.metrics().rate_limited.increment(1);
        let error = ErrorBody {
            code: ErrorCode::RATE_LIMITED,
            reason: format!("at most {} messages per second", limits.send_rate),
            retry_after_ms: Some(wait_ms),
        };
        asked.answer(encode(&ServerFrame::Error {
            id: Some(asked.id),
            error,
        }));
        return false;
    }
    true
}
