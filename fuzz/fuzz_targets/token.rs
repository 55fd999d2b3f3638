//! Fuzzes the daemon's access-token check, `chatd::token::Keys::verify`, which runs on
//! whatever a client puts in `Auth::token`.
//!
//! Each input is used twice:
//!
//! 1. as the token text itself: the format, key id and signature checks;
//! 2. split at its first `0x00` byte into a header and a payload, as the JSON parts of a
//!    token signed with the configured key, so that the checks behind the signature (the
//!    header's `alg` and `kid`, the claims, the user name rules, the expiry) see arbitrary
//!    JSON too.
//!
//! For each: `verify` never panics; a token that verifies names a user that passes the
//! protocol's name rules and expires after the time of the check; the same token with its
//! signature's last character changed does not verify.
//!
//! `make fuzz` runs it; by hand: `cargo +nightly fuzz run token corpus/token seeds/token`.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatd::token::Keys;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

/// The key the seeds in `seeds/token` are signed with.
const SECRET: [u8; 32] = [7; 32];
/// The time of every check: 2026-12-01T00:00:00Z.
const NOW: u64 = 1_796_083_200;

fn checked(keys: &Keys, token: &str) {
    let Ok(claims) = keys.verify(token, NOW) else {
        return;
    };
    assert!(
        chat_protocol::names::check_user_name(&claims.user).is_ok(),
        "verified a token for the invalid user name {:?}",
        claims.user
    );
    assert!(claims.expires_at > NOW, "verified an expired token");
    let (signed, signature) = token.rsplit_once('.').expect("a verified token has three parts");
    let last = signature.chars().last().unwrap_or('A');
    let other = if last == 'A' { 'B' } else { 'A' };
    let altered = format!("{signed}.{}{other}", &signature[..signature.len() - last.len_utf8()]);
    assert!(
        keys.verify(&altered, NOW).is_err(),
        "a token with another signature verified: {altered}"
    );
}

fuzz_target!(|data: &[u8]| {
    let keys = Keys::from_secrets(&[("fuzz", &SECRET)]);
    if let Ok(text) = std::str::from_utf8(data) {
        checked(&keys, text);
    }
    let (header, payload) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET).expect("any key length");
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    checked(&keys, &token);
});
