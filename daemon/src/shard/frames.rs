//! Server frames as shards build them: encoded once into `Bytes` (exactly sized when they
//! carry a list), answers and errors with the code's standard text, and the clock.

use super::*;

/// Encodes a server frame. Frames the daemon builds always fit; if one ever does not, the
/// client gets an `INTERNAL` error instead of a broken stream.
pub(crate) fn encode(frame: &ServerFrame) -> Bytes {
    // Answers that carry a list can be large: encoded into a buffer of exactly their size, so
    // the memory they hold is what the budgets charge (a `Vec` grown by doubling holds up to
    // twice its length, and mimalloc does not shrink a block by less than half in place).
    let large = matches!(
        frame,
        ServerFrame::Response {
            response: Response::History(_)
                | Response::Members(_)
                | Response::Conversations(_)
                | Response::Users(_)
                | Response::Presence(_),
            ..
        }
    );
    if let ServerFrame::Error { error, .. } = frame {
        crate::metrics::count_error(error.code);
    }
    let encoded = if large {
        encode_frame_exact(frame)
    } else {
        encode_frame_to_vec(frame)
    };
    match encoded {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "a server frame failed to encode");
            let id = match frame {
                ServerFrame::Response { id, .. } => Some(*id),
                _ => None,
            };
            encode(&error_frame(id, ErrorCode::INTERNAL, "response too large"))
        }
    }
}

/// The same frame with version byte 1, for the frames that refuse a client's versions:
/// `Error` and `Goodbye` have version 1's layout in every version, so any client reads them.
pub(crate) fn in_version_1(frame: Bytes) -> Bytes {
    let mut bytes = frame.to_vec();
    if let Some(version) = bytes.get_mut(chat_protocol::LENGTH_PREFIX) {
        *version = 1;
    }
    Bytes::from(bytes)
}

/// A `Response` frame.
pub(crate) fn response(id: RequestId, response: Response) -> Bytes {
    encode(&ServerFrame::Response { id, response })
}

/// An `Error` frame (not encoded).
pub(crate) fn error_frame(id: Option<RequestId>, code: ErrorCode, reason: &str) -> ServerFrame {
    ServerFrame::Error {
        id,
        error: error_body(code, reason),
    }
}

/// An error body with the code's standard text when `reason` is empty.
pub(crate) fn error_body(code: ErrorCode, reason: &str) -> ErrorBody {
    let reason = if reason.is_empty() {
        code.description().unwrap_or("error")
    } else {
        reason
    };
    ErrorBody {
        code,
        reason: reason.to_owned(),
        retry_after_ms: None,
    }
}

/// An encoded `Error` frame answering request `id`.
pub(crate) fn error(id: RequestId, code: ErrorCode, reason: &str) -> Bytes {
    encode(&error_frame(Some(id), code, reason))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> chat_protocol::Timestamp {
    chat_protocol::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}
