//! Access tokens: JWTs (RFC 7519) signed with HMAC-SHA256 (`alg: HS256`), so an app backend
//! in any language can mint them with a JWT library and the shared secret. The one
//! implementation of the format: the SDK and the daemon mint with [`mint`], the daemon
//! checks with [`verify`].
//!
//! Header `{"alg":"HS256","typ":"JWT","kid":KEY_ID}`; claims `{"sub":USER_NAME,"exp":UNIX_SECS}`
//! (`iat` optional). Verification is strict: exactly three base64url parts without padding,
//! `alg` must be `HS256`, `kid` must name a known key, the signature is compared in constant
//! time, and only then is `exp` checked. Each failure has its own wire error code.
//! docs/PROTOCOL.md ("Access tokens") is the normative description.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ErrorCode;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user name (`sub`).
    pub user: String,
    /// Expiry, seconds since the Unix epoch (`exp`).
    pub expires_at: u64,
    /// Issue time, seconds since the Unix epoch (`iat`), when the token has one: what a
    /// per-user revocation compares.
    pub issued_at: Option<u64>,
}

/// Why a token was refused; each maps to its own wire error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON with the required fields, `alg` not HS256, too long.
    #[error("the token is not in the documented format")]
    Malformed,
    /// `kid` names no known key.
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
}

impl TokenError {
    /// The wire error code for this failure.
    #[must_use]
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Malformed => ErrorCode::TOKEN_MALFORMED,
            TokenError::UnknownKey => ErrorCode::TOKEN_UNKNOWN_KEY,
            TokenError::BadSignature => ErrorCode::TOKEN_INVALID,
            TokenError::Expired => ErrorCode::TOKEN_EXPIRED,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<&'a str>,
    kid: &'a str,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// A token for user `user`, issued at `issued_at` and valid until `expires_at` (Unix
/// seconds), signed with `secret` under key id `key_id`.
#[must_use]
pub fn mint(key_id: &str, secret: &[u8], user: &str, issued_at: u64, expires_at: u64) -> String {
    let header = Header {
        alg: "HS256",
        typ: Some("JWT"),
        kid: key_id,
    };
    let payload = Payload {
        sub: user.to_owned(),
        exp: expires_at,
        iat: Some(issued_at),
    };
    let mut token = String::with_capacity(192);
    // Serializing these plain structs to JSON cannot fail.
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&header).unwrap_or_default(), &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&payload).unwrap_or_default(), &mut token);
    let mut m = mac(secret);
    m.update(token.as_bytes());
    let signature = m.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Checks `token` at time `now` (Unix seconds), with the secret `secret_of` gives for the
/// token's key id.
///
/// # Errors
/// The first check that fails, in the order: format, key, signature, expiry.
pub fn verify<'k>(
    token: &str,
    now: u64,
    secret_of: impl Fn(&str) -> Option<&'k [u8]>,
) -> Result<Claims, TokenError> {
    if token.len() > crate::limits::MAX_TOKEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Malformed);
    }
    let secret = secret_of(header.kid).ok_or(TokenError::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(&token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()]);
    m.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let payload_json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    let payload: Payload =
        serde_json::from_slice(&payload_json).map_err(|_| TokenError::Malformed)?;
    if crate::names::check_user_name(&payload.sub).is_err() {
        return Err(TokenError::Malformed);
    }
    if payload.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(Claims {
        user: payload.sub,
        expires_at: payload.exp,
        issued_at: payload.iat,
    })
}
