//! Naming rules for users, rooms and reactions, shared by the daemon (which enforces them) and clients
//! (which can check before sending).
//!
//! Names are ASCII so that they are unambiguous on every terminal and in every font: no
//! homoglyphs, no case folding questions. Names travel as plain strings; a name that breaks
//! the rules is a typed error from the daemon, not a malformed frame.

use crate::codes::ErrorCode;
use crate::limits::{
    MAX_PASSWORD, MAX_REACTION, MAX_ROOM_NAME, MAX_USER_NAME, MIN_PASSWORD, MIN_USER_NAME,
};

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
}

/// A user name is 3 to 32 bytes of `a-z 0-9 _ - .`, starting with a letter.
///
/// # Errors
/// [`ErrorCode::INVALID_USERNAME`] when the name breaks a rule.
pub fn check_user_name(name: &str) -> Result<(), ErrorCode> {
    let bytes = name.as_bytes();
    let ok = (MIN_USER_NAME..=MAX_USER_NAME).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|&b| is_name_byte(b));
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::INVALID_USERNAME)
    }
}

/// A room name is 1 to 64 bytes of `a-z 0-9 _ - .`.
///
/// # Errors
/// [`ErrorCode::INVALID_ROOM_NAME`] when the name breaks a rule.
pub fn check_room_name(name: &str) -> Result<(), ErrorCode> {
    let bytes = name.as_bytes();
    let ok = (1..=MAX_ROOM_NAME).contains(&bytes.len()) && bytes.iter().all(|&b| is_name_byte(b));
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::INVALID_ROOM_NAME)
    }
}

/// A password is 8 to 256 bytes; any bytes are allowed.
///
/// # Errors
/// [`ErrorCode::INVALID_PASSWORD`] when it is too short or too long.
pub fn check_password(password: &str) -> Result<(), ErrorCode> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(ErrorCode::INVALID_PASSWORD)
    }
}

/// A reaction is 1 to 32 bytes of UTF-8 (an emoji sequence with its joiners and variation
/// selectors, or a short name such as `+1`) with no control character (Unicode `Cc`) and no
/// white space. Reactions are compared byte for byte: the daemon does not normalise them.
///
/// # Errors
/// [`ErrorCode::INVALID_REACTION`] when it breaks a rule.
pub fn check_reaction(reaction: &str) -> Result<(), ErrorCode> {
    let ok = (1..=MAX_REACTION).contains(&reaction.len())
        && !reaction
            .chars()
            .any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::INVALID_REACTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions() {
        // A thumbs up, a family (joined by U+200D), a flag, a keycap, a short name.
        for good in [
            "👍",
            "👨\u{200d}👩\u{200d}👧\u{200d}👦",
            "🇫🇷",
            "1\u{fe0f}\u{20e3}",
            "+1",
            "ok_hand",
        ] {
            assert_eq!(check_reaction(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            " ",
            "a b",
            "👍\n",
            "\u{7f}",
            "\u{a0}",
            &"x".repeat(33),
            "\u{2028}",
        ] {
            assert_eq!(
                check_reaction(bad),
                Err(ErrorCode::INVALID_REACTION),
                "{bad:?}"
            );
        }
        assert_eq!(check_reaction(&"x".repeat(32)), Ok(()));
    }

    #[test]
    fn user_names() {
        for good in ["ann", "bob_99", "a.b-c", &"x".repeat(32)] {
            assert_eq!(check_user_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Ann",
            "9lives",
            "_x_",
            "ann!",
            "änn",
            &"x".repeat(33),
        ] {
            assert_eq!(
                check_user_name(bad),
                Err(ErrorCode::INVALID_USERNAME),
                "{bad}"
            );
        }
    }

    #[test]
    fn room_names_and_passwords() {
        assert!(check_room_name("general").is_ok());
        assert!(check_room_name("9").is_ok());
        assert!(check_room_name("").is_err());
        assert!(check_room_name("Gen").is_err());
        assert!(check_room_name(&"r".repeat(65)).is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"p".repeat(257)).is_err());
    }
}
