//! The certificate browsers get over WebTransport: the configured one, or, with the
//! development certificate, a short-lived one a page accepts through `serverCertificateHashes`
//! (W3C WebTransport: ECDSA P-256, valid at most 14 days, pinned by the SHA-256 of its DER).
//!
//! Native clients keep the long-lived development certificate they pin; a handshake that
//! offers ALPN `h3` and not `chat/1` (a browser) gets the short-lived one. It is generated in
//! memory at start, valid from an hour ago (clock skew) for [`VALIDITY`], and replaced by
//! [`BrowserCert::rotate_if_due`] once less than [`RENEW_BEFORE`] of it is left; the web
//! listener publishes the current hash, which pages fetch again before each connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

use super::Error;

/// How long a generated browser certificate is valid: under the 14 days browsers allow.
pub const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// A certificate with less than this left is replaced: pages that fetched its hash have
/// days to reconnect with the next one.
pub const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far back a certificate's validity starts, for clients whose clock is behind.
const SKEW: Duration = Duration::from_secs(3600);

/// One generated certificate.
struct Current {
    key: Arc<CertifiedKey>,
    /// SHA-256 of its DER.
    hash: [u8; 32],
    not_after: SystemTime,
}

/// The short-lived certificate for browsers, replaced in place: handshakes read the current
/// one, open connections keep theirs.
pub struct BrowserCert {
    current: ArcSwap<Current>,
    /// Whether handshakes present it: while the development certificate is the daemon's
    /// (a reload may switch to a configured one, which browsers then get like anyone).
    in_use: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for BrowserCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserCert")
            .field("hash", &hex::encode(self.hash()))
            .finish_non_exhaustive()
    }
}

impl BrowserCert {
    /// A certificate valid from an hour before `now`.
    ///
    /// # Errors
    /// When the key or certificate cannot be generated.
    pub fn generate(now: SystemTime) -> Result<BrowserCert, Error> {
        Ok(BrowserCert {
            current: ArcSwap::from_pointee(generate(now)?),
            in_use: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether browsers get it (and its hash is published).
    #[must_use]
    pub fn in_use(&self) -> bool {
        self.in_use.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets whether browsers get it.
    pub fn set_in_use(&self, in_use: bool) {
        self.in_use
            .store(in_use, std::sync::atomic::Ordering::Release);
    }

    /// SHA-256 of the current certificate's DER: the `serverCertificateHashes` value.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        self.current.load().hash
    }

    /// When the current certificate stops being valid.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    /// Replaces the certificate when less than [`RENEW_BEFORE`] of it is left at `now`;
    /// returns whether it did.
    ///
    /// # Errors
    /// When the next one cannot be generated (the current one stays).
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, Error> {
        if self.not_after() > now + RENEW_BEFORE {
            return Ok(false);
        }
        self.current.store(Arc::new(generate(now)?));
        Ok(true)
    }

    fn key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.load().key)
    }
}

fn generate(now: SystemTime) -> Result<Current, Error> {
    let fail = |message: String| Error::Generate {
        path: "(browser certificate, in memory)".into(),
        message,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(e.to_string()))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    let from = now.checked_sub(SKEW).unwrap_or(now);
    let to = from + VALIDITY;
    params.not_before = offset_date_time(from).map_err(fail)?;
    params.not_after = offset_date_time(to).map_err(fail)?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let der = CertificateDer::from(cert.der().to_vec());
    let hash: [u8; 32] = Sha256::digest(der.as_ref()).into();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(vec![der], private, &provider)?;
    Ok(Current {
        key: Arc::new(key),
        hash,
        // Whole seconds, as the certificate states it.
        not_after: SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                to.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            ),
    })
}

fn offset_date_time(at: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// Picks the certificate of each handshake: the browser certificate for a client that
/// offers `h3` and not `chat/1`, the configured (or development) one otherwise.
#[derive(Debug)]
pub(super) struct Resolver {
    pub(super) main: Arc<CertifiedKey>,
    pub(super) browser: Arc<BrowserCert>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (mut h3, mut native) = (false, false);
        for protocol in hello.alpn().into_iter().flatten() {
            h3 |= protocol == super::H3;
            native |= protocol == super::ALPN;
        }
        Some(if h3 && !native {
            self.browser.key()
        } else {
            Arc::clone(&self.main)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_certificate_is_short_lived_and_rotated_before_it_runs_out() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cert = BrowserCert::generate(start).unwrap();
        let first = cert.hash();
        let lifetime = cert.not_after().duration_since(start).unwrap() + SKEW;
        assert_eq!(lifetime, VALIDITY);
        assert!(VALIDITY <= Duration::from_secs(14 * 24 * 3600));
        // The certificate as a browser checks it: P-256, within 14 days.
        let key = cert.key();
        let der = key.end_entity_cert().unwrap();
        assert_eq!(first, <[u8; 32]>::from(Sha256::digest(der.as_ref())));
        assert_eq!(key.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);

        let day = Duration::from_secs(24 * 3600);
        assert!(!cert.rotate_if_due(start + 5 * day).unwrap());
        assert_eq!(cert.hash(), first);
        assert!(cert.rotate_if_due(start + 6 * day).unwrap());
        assert_ne!(cert.hash(), first);
        assert_eq!(
            cert.not_after().duration_since(start + 6 * day).unwrap() + SKEW,
            VALIDITY
        );
    }
}
