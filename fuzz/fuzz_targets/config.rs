//! Fuzzes the daemon's configuration parser, `chatd::config::Config::parse`: the TOML of a
//! configuration file over the embedded defaults, then every validation rule.
//!
//! For each UTF-8 input: parsing never panics, and a configuration it accepts passes
//! `validate` again (nothing it returns breaks a rule).
//!
//! `make fuzz` runs it; by hand: `cargo +nightly fuzz run config corpus/config seeds/config`
//! (the seed is the packaged `daemon/chatd.toml`).

#![no_main]

use chatd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse("fuzz.toml", text) {
        if let Err(e) = config.validate() {
            panic!("parse accepted a configuration that validate refuses: {e}");
        }
    }
});
