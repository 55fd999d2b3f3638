//! Minting access tokens, for an app backend (or a load generator) that holds the daemon's
//! token secret: HS256 JWTs in the format of docs/PROTOCOL.md section 8.9.
//!
//! The daemon verifies; this module only signs, with the format's one implementation,
//! [`chat_protocol::token`] (the daemon uses the same), and the SDK tests check that the
//! daemon accepts what it mints.

/// A signing key: its id (the JWT `kid`) and the shared HMAC-SHA256 secret.
#[derive(Clone)]
pub struct SigningKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A key with id `id` and a secret given as hex (as in `[[auth.keys]]` of chatd.toml or
    /// the daemon's generated `DATA_DIR/auth/secret`, whose key id is `local`).
    ///
    /// # Errors
    /// [`crate::Error::Config`] when the secret is not hex or shorter than 32 bytes.
    pub fn from_hex(id: &str, secret_hex: &str) -> Result<SigningKey, crate::Error> {
        let secret = hex::decode(secret_hex.trim())
            .map_err(|e| crate::Error::Config(format!("token secret: {e}")))?;
        if secret.len() < 32 {
            return Err(crate::Error::Config(
                "token secret: at least 32 bytes (64 hex digits)".into(),
            ));
        }
        Ok(SigningKey {
            id: id.to_owned(),
            secret,
        })
    }

    /// A token for user `name`, issued at `issued_at` and valid until `expires_at` (Unix
    /// seconds). A token for a name the daemon does not know creates that user on first use.
    #[must_use]
    pub fn mint(&self, name: &str, issued_at: u64, expires_at: u64) -> String {
        chat_protocol::token::mint(&self.id, &self.secret, name, issued_at, expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn a_token_has_the_documented_shape() {
        let key = SigningKey::from_hex("local", &"ab".repeat(32)).unwrap();
        let token = key.mint("alice", 100, 200);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], "local");
        let claims = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(
            (claims["sub"].as_str(), claims["exp"].as_u64()),
            (Some("alice"), Some(200))
        );
    }

    #[test]
    fn short_or_non_hex_secrets_are_refused() {
        assert!(SigningKey::from_hex("k", "abcd").is_err());
        assert!(SigningKey::from_hex("k", &"zz".repeat(32)).is_err());
    }
}
