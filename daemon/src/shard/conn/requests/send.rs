//! `Send`: the body's size and content type, the user's send rate limit (shared by their
//! devices, charged here on the connection's shard), then straight to the conversation's
//! owner.

use std::time::Instant;

use chat_protocol::{ErrorBody, ErrorCode, SendMessage, ServerFrame};

use super::Asked;
use crate::shard::conversation::{self, Input};
use crate::shard::encode;

pub(super) fn send(asked: &Asked<'_>, message: SendMessage) {
    let config = asked.shard.shared.config();
    let limits = &config.limits;
    if message.body.len() > limits.max_body {
        return asked.fail(ErrorCode::BODY_TOO_LARGE, "");
    }
    if !conversation::valid_content(message.content_type, &message.body) {
        return asked.fail(
            ErrorCode::INVALID_CONTENT,
            "text content types need UTF-8 bodies",
        );
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
        return asked.answer(encode(&ServerFrame::Error {
            id: Some(asked.id),
            error,
        }));
    }
    let origin = asked.origin;
    asked.to_owner(message.conversation, Input::Send { origin, message });
}
