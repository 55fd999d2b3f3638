//! How the client decides to trust the daemon's certificate: the system's roots, a CA (or the
//! daemon's own self-signed certificate) from a PEM file, or a pinned SHA-256 fingerprint of
//! the certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// Which certificates the client accepts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The operating system's trusted roots.
    SystemRoots,
    /// Roots from a PEM file: a CA, or the daemon's self-signed certificate
    /// (`DATA_DIR/tls/cert.pem`).
    CaFile(PathBuf),
    /// Exactly the certificate whose DER encoding has this SHA-256 (as chatd logs it at start).
    Fingerprint([u8; 32]),
}

impl Trust {
    /// Parses a fingerprint written as 64 hex digits (colons allowed).
    ///
    /// # Errors
    /// [`Error::Config`] when it is not 32 bytes of hex.
    pub fn fingerprint(hex_digits: &str) -> Result<Trust, Error> {
        let clean: String = hex_digits.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(clean).map_err(|e| Error::Config(format!("fingerprint: {e}")))?;
        let array = bytes
            .try_into()
            .map_err(|_| Error::Config("a fingerprint is 32 bytes".into()))?;
        Ok(Trust::Fingerprint(array))
    }
}

/// The quinn client configuration the SDK connects with: TLS 1.3 only (rustls with the ring
/// provider), ALPN `chat/1`, and `trust` deciding which certificates are accepted. For tools
/// that drive many connections on their own endpoints (the load generator).
///
/// # Errors
/// [`Error::Config`] when the trust file cannot be read or holds no usable certificate.
pub fn quic_client_config(trust: &Trust) -> Result<quinn::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut tls = match trust {
        Trust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
        Trust::SystemRoots | Trust::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = match trust {
                Trust::CaFile(path) => CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<_, _>>())
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
                _ => rustls_native_certs::load_native_certs().certs,
            };
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Config("no usable trusted certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![chat_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Accepts exactly one certificate, by fingerprint; still checks the handshake signatures.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}
