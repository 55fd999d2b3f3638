//! Framing: how frames are delimited on a byte stream, and the sans-IO [`FrameDecoder`].
//!
//! ```text
//! +----------------+-------------+------------------------------+
//! | length: u32 LE | version: u8 | body: bincode (length-1 B)   |
//! +----------------+-------------+------------------------------+
//! ```
//!
//! `length` counts the version byte and the body, so it is at least 1. A frame whose length
//! exceeds the direction's limit ([`Frame::MAX_LEN`]) is rejected from its first four bytes,
//! before anything is buffered or allocated. A datagram carries exactly one whole frame.
//!
//! Driving it: encode with [`encode_frame`]; decode a buffer that may hold a partial frame with
//! [`decode_frame`] (which says how many bytes it still needs), or feed a stream's chunks into a
//! [`FrameDecoder`] and pull frames until it returns `Ok(None)`.

use crate::client::ClientFrame;
use crate::codec;
use crate::limits::{MAX_CLIENT_DECODE, MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use crate::server::ServerFrame;

/// The protocol version this crate speaks and writes into every frame header.
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes before the version byte: the `u32` length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why bytes could not be decoded into a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer holds only part of a frame: read at least `needed` more bytes and retry.
    /// Not a failure of the peer.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// The minimum number of further bytes before decoding can progress.
        needed: usize,
    },
    /// The length prefix is larger than the limit of this direction. Nothing was allocated.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's version byte names a version this crate does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The frame is complete but is not a valid encoding (bad variant, invalid UTF-8, a
    /// reversed direct conversation id, trailing bytes, a zero length, ...).
    #[error("invalid frame: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// Whether more bytes could make the input decodable (only [`DecodeError::Incomplete`]).
    #[must_use]
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

/// Why a frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed the limit of its direction; nothing was appended.
    #[error("encoded frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the frame would have had.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The encoder failed (not expected for the protocol's types).
    #[error("encoding failed: {0}")]
    Encoder(String),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::ClientFrame {}
    impl Sealed for crate::ServerFrame {}
}

/// A top-level frame type: [`ClientFrame`] or [`ServerFrame`]. Sealed.
pub trait Frame: Sized + sealed::Sealed {
    /// The largest length prefix accepted for this direction.
    const MAX_LEN: usize;

    #[doc(hidden)]
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), String>;

    #[doc(hidden)]
    fn body_len(&self) -> Result<usize, String>;

    #[doc(hidden)]
    fn decode_body(body: &[u8]) -> Result<Self, String>;

    /// Whether a frame of `version` (not this crate's) with this body is one this crate
    /// reads anyway: the version refusal, an `Error` or a `Goodbye` frame, which has version
    /// 1's layout in every version (docs/PROTOCOL.md section 7).
    #[doc(hidden)]
    fn readable_refusal(_version: u8, _body: &[u8]) -> bool {
        false
    }
}

impl Frame for ClientFrame {
    const MAX_LEN: usize = MAX_CLIENT_FRAME;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), String> {
        codec::encode_into(self, out)
    }

    fn body_len(&self) -> Result<usize, String> {
        codec::encoded_len(self)
    }

    fn decode_body(body: &[u8]) -> Result<Self, String> {
        codec::decode_value::<Self, MAX_CLIENT_DECODE>(body)
    }
}

impl Frame for ServerFrame {
    const MAX_LEN: usize = MAX_SERVER_FRAME;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), String> {
        codec::encode_into(self, out)
    }

    fn body_len(&self) -> Result<usize, String> {
        codec::encoded_len(self)
    }

    fn decode_body(body: &[u8]) -> Result<Self, String> {
        codec::decode_value::<Self, MAX_SERVER_FRAME>(body)
    }

    fn readable_refusal(version: u8, body: &[u8]) -> bool {
        // Variants 2 (`Error`) and 4 (`Goodbye`) of a version-1 frame.
        version == 1 && matches!(body.first(), Some(2 | 4))
    }
}

/// Appends one frame (length prefix, version, body) to `out` and returns its total size.
/// On error `out` is left as it was.
///
/// # Errors
/// [`EncodeError::TooLarge`] when the frame would exceed [`Frame::MAX_LEN`].
pub fn encode_frame<F: Frame>(frame: &F, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    out.push(PROTOCOL_VERSION);
    if let Err(e) = frame.encode_body(out) {
        out.truncate(start);
        return Err(EncodeError::Encoder(e));
    }
    let len = out.len() - start - LENGTH_PREFIX;
    if len > F::MAX_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: F::MAX_LEN,
        });
    }
    let prefix = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
        len,
        max: F::MAX_LEN,
    })?;
    out[start..start + LENGTH_PREFIX].copy_from_slice(&prefix.to_le_bytes());
    Ok(out.len() - start)
}

/// Encodes one frame into a new buffer.
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_frame_to_vec<F: Frame>(frame: &F) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out)?;
    Ok(out)
}

/// Encodes one frame into a buffer of exactly its size: a first pass measures the body (no
/// copy), so a large frame holds no unused capacity (a `Vec` grown by doubling holds up to
/// twice its length). For frames that can be large; small ones are cheaper with
/// [`encode_frame_to_vec`].
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_frame_exact<F: Frame>(frame: &F) -> Result<Vec<u8>, EncodeError> {
    let body = frame.body_len().map_err(EncodeError::Encoder)?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX + 1 + body);
    encode_frame(frame, &mut out)?;
    Ok(out)
}

/// Reads the length prefix at the start of `buf` and returns the total size of the frame
/// (prefix included), checking it against the limit. Allocates nothing.
///
/// # Errors
/// `Incomplete` when fewer than four bytes are present, `TooLarge` above the limit,
/// `Invalid` for a zero length.
pub fn frame_size<F: Frame>(buf: &[u8]) -> Result<usize, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX>() else {
        return Err(DecodeError::Incomplete {
            needed: LENGTH_PREFIX - buf.len(),
        });
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > F::MAX_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: F::MAX_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Invalid(
            "zero frame length: the version byte is missing".into(),
        ));
    }
    Ok(LENGTH_PREFIX + len)
}

/// Decodes the frame at the start of `buf`, returning it and the number of bytes it used.
/// Bytes after the frame are left alone (they belong to the next frame).
///
/// # Errors
/// `Incomplete` with the number of missing bytes when `buf` holds part of a frame; otherwise
/// the frame is bad and the connection should be closed.
pub fn decode_frame<F: Frame>(buf: &[u8]) -> Result<(F, usize), DecodeError> {
    let size = frame_size::<F>(buf)?;
    let Some(frame) = buf.get(..size) else {
        return Err(DecodeError::Incomplete {
            needed: size - buf.len(),
        });
    };
    let (version, body) = (frame[LENGTH_PREFIX], &frame[LENGTH_PREFIX + 1..]);
    if version != PROTOCOL_VERSION && !F::readable_refusal(version, body) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let value = F::decode_body(body).map_err(DecodeError::Invalid)?;
    Ok((value, size))
}

/// Decodes a buffer that must hold exactly one frame (a datagram).
///
/// # Errors
/// As [`decode_frame`]; a truncated datagram is `Invalid`, not `Incomplete`, and so are
/// bytes after the frame.
pub fn decode_datagram<F: Frame>(datagram: &[u8]) -> Result<F, DecodeError> {
    match decode_frame::<F>(datagram) {
        Ok((frame, used)) if used == datagram.len() => Ok(frame),
        Ok((_, used)) => Err(DecodeError::Invalid(format!(
            "{} bytes after the frame",
            datagram.len() - used
        ))),
        Err(DecodeError::Incomplete { needed }) => Err(DecodeError::Invalid(format!(
            "datagram truncated: {needed} bytes missing"
        ))),
        Err(e) => Err(e),
    }
}

/// Reassembles frames from a byte stream, sans-IO, in bounded memory.
///
/// Read at most [`FrameDecoder::space`] bytes from the stream, [`push`](Self::push) them,
/// then call [`next_frame`](Self::next_frame) until it returns `Ok(None)`. The buffer never
/// holds more than one maximal frame (`LENGTH_PREFIX + F::MAX_LEN` bytes); an oversize
/// length prefix is reported as soon as its four bytes arrive.
#[derive(Debug)]
pub struct FrameDecoder<F> {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    _frame: std::marker::PhantomData<fn() -> F>,
}

impl<F: Frame> Default for FrameDecoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// The most bytes the decoder buffers at once.
    pub const CAPACITY: usize = LENGTH_PREFIX + F::MAX_LEN;

    /// The room an emptied buffer keeps: enough for the usual small frames; one grown for a
    /// large frame gives the rest back, so an idle stream holds at most this.
    pub const KEPT: usize = 1024;

    /// An empty decoder. It allocates as frames arrive, never more than [`Self::CAPACITY`].
    #[must_use]
    pub fn new() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            _frame: std::marker::PhantomData,
        }
    }

    /// Bytes buffered and not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many bytes [`push`](Self::push) accepts now. Always at least 1 after
    /// [`next_frame`](Self::next_frame) returned `Ok(None)`.
    #[must_use]
    pub fn space(&self) -> usize {
        Self::CAPACITY - self.buffered()
    }

    /// Appends bytes read from the stream.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`] when `bytes` does not fit in [`space`](Self::space) (the
    /// caller read more than it was told to); nothing is appended.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if bytes.len() > self.space() {
            return Err(DecodeError::TooLarge {
                len: self.buffered() + bytes.len(),
                max: Self::CAPACITY,
            });
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// Any error but `Incomplete` means the stream is corrupt: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<F>, DecodeError> {
        match decode_frame::<F>(&self.buf[self.start..]) {
            Ok((frame, used)) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                    // A buffer grown for a large frame is not kept for an idle stream.
                    self.buf.shrink_to(Self::KEPT);
                }
                Ok(Some(frame))
            }
            Err(DecodeError::Incomplete { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Request;
    use crate::ids::RequestId;

    fn ping(id: u32) -> ClientFrame {
        ClientFrame::Request {
            id: RequestId(id),
            request: Request::Ping,
        }
    }

    #[test]
    fn an_exact_encoding_is_the_same_bytes_with_no_spare_capacity() {
        use crate::server::{Response, ServerFrame, UserInfo};
        let users = (0..300)
            .map(|i| UserInfo {
                user: crate::ids::UserId(i),
                name: format!("user{i}"),
            })
            .collect();
        let frame = ServerFrame::Response {
            id: RequestId(3),
            response: Response::Users(users),
        };
        let exact = encode_frame_exact(&frame).unwrap();
        assert_eq!(exact, encode_frame_to_vec(&frame).unwrap());
        assert_eq!(exact.capacity(), exact.len());
    }

    #[test]
    fn ping_frame_layout() {
        let bytes = encode_frame_to_vec(&ping(7)).unwrap();
        // length 4 = version + variant 1 + id 7 + Request variant 3
        assert_eq!(bytes, [4, 0, 0, 0, 2, 1, 7, 3]);
        assert_eq!(decode_frame::<ClientFrame>(&bytes).unwrap(), (ping(7), 8));
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_with_the_right_count() {
        let bytes = encode_frame_to_vec(&ping(300)).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_frame::<ClientFrame>(&bytes[..cut]).unwrap_err();
            let expected = if cut < LENGTH_PREFIX {
                LENGTH_PREFIX - cut
            } else {
                bytes.len() - cut
            };
            assert_eq!(
                err,
                DecodeError::Incomplete { needed: expected },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversize_zero_and_wrong_version() {
        let too_big = u32::try_from(MAX_CLIENT_FRAME + 1).unwrap().to_le_bytes();
        assert_eq!(
            decode_frame::<ClientFrame>(&too_big),
            Err(DecodeError::TooLarge {
                len: MAX_CLIENT_FRAME + 1,
                max: MAX_CLIENT_FRAME
            })
        );
        // A server frame may be that large.
        assert!(
            decode_frame::<ServerFrame>(&too_big)
                .unwrap_err()
                .is_incomplete()
        );
        assert!(matches!(
            decode_frame::<ClientFrame>(&[0, 0, 0, 0]),
            Err(DecodeError::Invalid(_))
        ));
        assert_eq!(
            decode_frame::<ClientFrame>(&[4, 0, 0, 0, 1, 1, 7, 3]),
            Err(DecodeError::UnsupportedVersion(1))
        );
        // A version refusal in a version-1 frame reads in every version; nothing else of
        // version 1 does.
        let goodbye = ServerFrame::Goodbye(crate::Goodbye {
            code: crate::GoodbyeCode::UNSUPPORTED_VERSION,
            reason: "no".into(),
        });
        let mut v1 = encode_frame_to_vec(&goodbye).unwrap();
        v1[LENGTH_PREFIX] = 1;
        assert_eq!(decode_frame::<ServerFrame>(&v1).unwrap().0, goodbye);
        let pong = ServerFrame::Response {
            id: crate::RequestId(1),
            response: crate::Response::Ok,
        };
        let mut v1 = encode_frame_to_vec(&pong).unwrap();
        v1[LENGTH_PREFIX] = 1;
        assert_eq!(
            decode_frame::<ServerFrame>(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn datagrams_hold_exactly_one_frame() {
        let mut bytes = encode_frame_to_vec(&ping(1)).unwrap();
        assert_eq!(decode_datagram::<ClientFrame>(&bytes).unwrap(), ping(1));
        assert!(matches!(
            decode_datagram::<ClientFrame>(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Invalid(_))
        ));
        bytes.push(0);
        assert!(matches!(
            decode_datagram::<ClientFrame>(&bytes),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn encoding_too_large_leaves_the_buffer_untouched() {
        let frame = ClientFrame::Request {
            id: RequestId(1),
            request: Request::LookupUsers(vec![
                crate::client::UserRef::Name("x".repeat(1000));
                100
            ]),
        };
        let mut out = vec![9];
        assert!(matches!(
            encode_frame(&frame, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(out, [9]);
    }

    #[test]
    fn decoder_reassembles_byte_by_byte_and_in_bulk() {
        let mut stream = Vec::new();
        for id in 0..50 {
            encode_frame(&ping(id * 1000), &mut stream).unwrap();
        }
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut decoder = FrameDecoder::<ClientFrame>::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece).unwrap();
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, (0..50).map(|id| ping(id * 1000)).collect::<Vec<_>>());
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn an_emptied_decoder_gives_back_what_a_burst_grew() {
        let mut stream = Vec::new();
        for id in 0..500 {
            encode_frame(&ping(id), &mut stream).unwrap();
        }
        let kept = FrameDecoder::<ClientFrame>::KEPT;
        assert!(stream.len() > 4 * kept);
        let mut decoder = FrameDecoder::<ClientFrame>::new();
        decoder.push(&stream).unwrap();
        assert!(decoder.buf.capacity() >= stream.len());
        let mut got = 0;
        while decoder.next_frame().unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, 500);
        assert!(decoder.buf.capacity() <= kept, "{}", decoder.buf.capacity());
        // Small frames keep their room.
        decoder
            .push(&encode_frame_to_vec(&ping(1)).unwrap())
            .unwrap();
        decoder.next_frame().unwrap().unwrap();
        assert!(decoder.buf.capacity() > 0);
    }

    #[test]
    fn decoder_is_bounded_and_rejects_oversize_prefixes_early() {
        let mut decoder = FrameDecoder::<ClientFrame>::new();
        assert_eq!(decoder.space(), LENGTH_PREFIX + MAX_CLIENT_FRAME);
        assert!(decoder.push(&vec![0; decoder.space() + 1]).is_err());
        decoder.push(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(
            decoder.next_frame(),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
