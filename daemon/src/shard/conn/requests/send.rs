//! `Send`, `Edit` and `Delete`: the body's size and content type, the user's send rate limit
//! (shared by their devices and by these three requests, charged here on the connection's
//! shard), then straight to the conversation's owner.

use std::time::Instant;

use chat_protocol::{
    ContentType, DeleteMessage, EditMessage, ErrorBody, ErrorCode, SendMessage, ServerFrame,
};

use super::Asked;
use crate::shard::conversation::{self, Change, Input};
use crate::shard::encode;

pub(super) fn send(asked: &Asked<'_>, message: SendMessage) {
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

/// Whether a send, edit or delete may go on: its content fits, and the user's rate allows it;
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
