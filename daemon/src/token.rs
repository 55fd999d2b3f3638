//! The daemon's token keys: the configured `[[auth.keys]]` (the first signs, all verify) or the
//! secret generated into the data directory. The token format itself (HS256 JWTs, strict
//! verification, one wire error code per failure) is [`chat_protocol::token`], shared with the
//! SDK; docs/PROTOCOL.md ("Access tokens") is the normative description.

use std::path::Path;

use crate::config::AuthConfig;

/// Key id of the secret generated into the data directory when none is configured.
pub const LOCAL_KEY_ID: &str = "local";

/// One signing key.
#[derive(Clone)]
struct Key {
    id: String,
    secret: Vec<u8>,
}

/// The configured keys: the first signs, all verify.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

pub use chat_protocol::token::{Claims, TokenError};

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The generated local secret could not be read or written.
    #[error("token secret {path}: {source}")]
    Io {
        /// The secret file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The generated local secret file does not hold 32+ bytes of hex.
    #[error("token secret {0} is damaged: expected at least 64 hex digits")]
    Damaged(std::path::PathBuf),
}

impl Keys {
    /// The keys from `[auth] keys`, or the local secret in `data_dir/auth/secret`, generated
    /// (mode 0600) on first use.
    ///
    /// # Errors
    /// When the local secret cannot be read, written or parsed. Configured keys were
    /// validated with the configuration.
    pub fn load(auth: &AuthConfig, data_dir: &Path) -> Result<Keys, KeyError> {
        if !auth.keys.is_empty() {
            let keys = auth
                .keys
                .iter()
                .map(|k| Key {
                    id: k.id.clone(),
                    secret: hex::decode(k.secret.expose()).unwrap_or_default(),
                })
                .collect();
            return Ok(Keys { keys });
        }
        let path = data_dir.join("auth").join("secret");
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .filter(|s| s.len() >= 32)
                .ok_or_else(|| KeyError::Damaged(path.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                getrandom::fill(&mut secret)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                crate::fsutil::write_private(&path, hex::encode(&secret).as_bytes()).map_err(io)?;
                secret
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Keys {
            keys: vec![Key {
                id: LOCAL_KEY_ID.into(),
                secret,
            }],
        })
    }

    /// Keys from explicit (id, secret) pairs; the first signs.
    #[must_use]
    pub fn from_secrets(keys: &[(&str, &[u8])]) -> Keys {
        Keys {
            keys: keys
                .iter()
                .map(|(id, secret)| Key {
                    id: (*id).into(),
                    secret: secret.to_vec(),
                })
                .collect(),
        }
    }

    /// A token for `user` expiring at `expires_at` (Unix seconds), signed with the first key.
    #[must_use]
    pub fn mint(&self, user: &str, issued_at: u64, expires_at: u64) -> String {
        let Some(key) = self.keys.first() else {
            return String::new();
        };
        chat_protocol::token::mint(&key.id, &key.secret, user, issued_at, expires_at)
    }

    /// Checks `token` at time `now` (Unix seconds).
    ///
    /// # Errors
    /// The first check that fails, in the order: format, key, signature, expiry.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        chat_protocol::token::verify(token, now, |kid| {
            let key = self.keys.iter().find(|k| k.id == kid)?;
            Some(key.secret.as_slice())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const NOW: u64 = 1_795_000_000;

    fn keys() -> Keys {
        Keys::from_secrets(&[
            ("new", b"0123456789abcdef0123456789abcdef"),
            ("old", b"fedcba9876543210fedcba9876543210"),
        ])
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = keys().mint("alice", NOW, NOW + 60);
        assert_eq!(
            keys().verify(&token, NOW),
            Ok(Claims {
                user: "alice".into(),
                expires_at: NOW + 60,
                issued_at: Some(NOW),
            })
        );
    }

    #[test]
    fn rotated_keys_still_verify_and_unknown_ones_do_not() {
        let old_only = Keys::from_secrets(&[("old", b"fedcba9876543210fedcba9876543210")]);
        let token = old_only.mint("bob", NOW, NOW + 60);
        assert!(keys().verify(&token, NOW).is_ok());
        let stranger = Keys::from_secrets(&[("other", b"fedcba9876543210fedcba9876543210")]);
        assert_eq!(stranger.verify(&token, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let k = keys();
        let token = k.mint("alice", NOW, NOW + 60);
        assert_eq!(k.verify(&token, NOW + 60), Err(TokenError::Expired));
        // Forged: same kid, different secret.
        let forger = Keys::from_secrets(&[("new", b"not the secret, not the secret!!")]);
        assert_eq!(
            k.verify(&forger.mint("alice", NOW, NOW + 60), NOW),
            Err(TokenError::BadSignature)
        );
        // Altered claims keep the old signature.
        let parts: Vec<_> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":1795000060}"#);
        assert_eq!(
            k.verify(&format!("{}.{evil}.{}", parts[0], parts[2]), NOW),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.??.##", &"x".repeat(600)] {
            assert_eq!(k.verify(bad, NOW), Err(TokenError::Malformed), "{bad}");
        }
        // alg "none" is refused outright.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"new"}"#);
        assert_eq!(
            k.verify(&format!("{none}.{}.", parts[1]), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn matches_an_independent_hs256_implementation() {
        // Computed with Python's hmac/hashlib for the documented example in PROTOCOL.md.
        let k = Keys::from_secrets(&[("k1", b"0123456789abcdef0123456789abcdef")]);
        let token = k.mint("alice", 1_795_000_000, 1_795_086_400);
        assert_eq!(token, EXAMPLE_TOKEN);
    }

    /// The example token of PROTOCOL.md ("Access tokens").
    const EXAMPLE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5NTA4NjQwMCwiaWF0IjoxNzk1MDAwMDAwfQ._4QKND0ISHobIk8rtbMxHnnXbSSVTYj_IPSNIbVMhYs";

    #[test]
    fn local_secret_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keys::load(&AuthConfig::default(), dir.path()).unwrap();
        let second = Keys::load(&AuthConfig::default(), dir.path()).unwrap();
        let token = first.mint("alice", NOW, NOW + 60);
        assert!(second.verify(&token, NOW).is_ok());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("auth/secret"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
