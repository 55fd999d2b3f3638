//! Fuzzes every decoding entry point of `chat-protocol` with arbitrary bytes.
//!
//! For each input it checks that:
//!
//! 1. `decode_frame` as a `ClientFrame` and as a `ServerFrame` never panics, reports a used
//!    length no larger than the input, and that a decoded frame re-encodes with
//!    `encode_frame_to_vec` into bytes that decode back to an equal value;
//! 2. `decode_datagram` for both frame types never panics;
//! 3. a `FrameDecoder<ClientFrame>` fed the input in chunks (sizes derived from the first
//!    byte, never more than `space()` at once) never panics and never buffers more than
//!    `FrameDecoder::CAPACITY` bytes.
//!
//! Run it from the repository root with `make fuzz` (bounded by `FUZZ_SECONDS`, default 60),
//! or from this directory with `cargo +nightly fuzz run decode corpus/decode seeds/decode`.
//! Seeds (valid frames from docs/PROTOCOL.md's test vectors) live in `seeds/decode`.

#![no_main]

use chat_protocol::{
    ClientFrame, Frame, FrameDecoder, ServerFrame, decode_datagram, decode_frame,
    encode_frame_to_vec,
};
use libfuzzer_sys::fuzz_target;

/// `decode_frame` as `F`; on success, the re-encoding must decode to the same value.
fn round_trip<F: Frame + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok((frame, used)) = decode_frame::<F>(data) else {
        return;
    };
    assert!(used <= data.len(), "decode_frame used {used} of {} bytes", data.len());
    let bytes = match encode_frame_to_vec(&frame) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a decoded frame failed to re-encode: {e}\nframe: {frame:?}"),
    };
    match decode_frame::<F>(&bytes) {
        Ok((again, again_used)) => {
            assert_eq!(again, frame, "re-encoding decodes to a different value");
            assert_eq!(again_used, bytes.len(), "re-encoding is not exactly one frame");
        }
        Err(e) => panic!("re-encoding of {frame:?} does not decode: {e}"),
    }
}

/// Streams `data` through a `FrameDecoder<ClientFrame>` in chunks of `chunk` bytes at most.
fn stream(data: &[u8], chunk: usize) {
    let mut decoder = FrameDecoder::<ClientFrame>::new();
    let cap = FrameDecoder::<ClientFrame>::CAPACITY;
    let mut rest = data;
    while !rest.is_empty() {
        let space = decoder.space();
        assert!(space >= 1, "no space after next_frame returned Ok(None)");
        let n = chunk.min(space).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        if let Err(e) = decoder.push(piece) {
            panic!("push of {n} bytes with space {space} failed: {e}");
        }
        assert!(decoder.buffered() <= cap);
        loop {
            match decoder.next_frame() {
                Ok(Some(_)) => assert!(decoder.buffered() <= cap),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= cap);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<ServerFrame>(data);

    let _ = decode_datagram::<ClientFrame>(data);
    let _ = decode_datagram::<ServerFrame>(data);

    if let Some(&first) = data.first() {
        stream(data, 1 + usize::from(first) % 64);
    }
});
