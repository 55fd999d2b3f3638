//! Fuzzes the bridge's binary event decoder, `chat_protocol::events::decode_event`, which a
//! downstream consumer runs on whatever the broker delivers.
//!
//! For each input: decoding never panics, and a decoded event re-encodes (`encode_event`)
//! into bytes that decode to the same event.
//!
//! `make fuzz` runs it after `decode`; by hand: `cargo +nightly fuzz run events corpus/events`.

#![no_main]

use chat_protocol::events::{decode_event, encode_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = decode_event(data) else {
        return;
    };
    let bytes = encode_event(&event);
    match decode_event(&bytes) {
        Ok(again) => assert_eq!(again, event, "re-encoding decodes to a different event"),
        Err(e) => panic!("re-encoding of {event:?} does not decode: {e}"),
    }
});
