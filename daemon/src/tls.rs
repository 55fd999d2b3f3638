//! TLS for the QUIC endpoint: the configured certificate, or a self-signed development
//! certificate generated once into `DATA_DIR/tls/` (and, for browsers, the short-lived one
//! of [`browser`]).
//!
//! TLS 1.3 only, ALPN `chat/1` (and `h3` for WebTransport when `web.webtransport` is on),
//! the ring crypto provider (passed explicitly, not left to whichever provider a dependency
//! happens to enable).

mod browser;
pub(crate) mod cid;
mod keys;

pub use browser::BrowserCert;
pub use cid::{RoutableCids, ServerId};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::config::TlsConfig;

/// The ALPN protocol id of chat protocol v1 ([`chat_protocol::ALPN`]).
pub const ALPN: &[u8] = chat_protocol::ALPN;
/// The ALPN protocol id of HTTP/3, which WebTransport sessions run on.
pub const H3: &[u8] = b"h3";
/// The URL path of the chat protocol's WebTransport sessions.
pub const WEBTRANSPORT_PATH: &str = "/chat/1";

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The development certificate could not be generated or stored.
    #[error("generating the development certificate in {path}: {message}")]
    Generate {
        /// Where it was to be stored.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The QUIC stateless reset key could not be read or stored, or is damaged.
    #[error("stateless reset key {path}: {message}")]
    ResetKey {
        /// The key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The QUIC endpoint configurations of the `shards` shards, with what identifies
/// connections kept across restarts: the key quinn derives stateless reset tokens from (HMAC-SHA256) and the
/// key its connection ids are checked with, both from one secret: `cluster.secret` when set
/// (every node behind one load balancer has the same), else `DATA_DIR/quic/reset-key` (mode
/// 0600, generated on first start). A restarted daemon, or another node of the cluster,
/// then recognises the connection ids as the cluster's and answers their packets with resets
/// that match the tokens the issuing node gave: a client whose connection died with its
/// process learns it from the first packet it sends, instead of waiting for its idle
/// timeout. With `cluster.server_id`, connection ids are QUIC-LB routable ([`RoutableCids`])
/// and name the shard that issued them (at most 256 shards then). With
/// `cluster.accepted_secret`, the ids and tokens of that second secret are honoured too,
/// while the cluster rotates its secret ([`keys`]).
///
/// # Errors
/// When the file cannot be read or written, or does not hold 32 bytes of hex.
pub fn endpoint_configs(
    data_dir: &Path,
    cluster: &crate::config::ClusterConfig,
    shards: usize,
) -> Result<Vec<quinn::EndpointConfig>, Error> {
    let path = data_dir.join("quic").join("reset-key");
    let fail = |message: String| Error::ResetKey {
        path: path.clone(),
        message,
    };
    // 32 bytes written as hex; `what` names where they came from in the error.
    let key = |what: &str, text: &str| {
        hex::decode(text)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(|| fail(format!("{what}expected 64 hex digits")))
    };
    let secret = if cluster.secret.is_empty() {
        match std::fs::read_to_string(&path) {
            Ok(text) => key("", text.trim())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                getrandom::fill(&mut secret).map_err(|e| fail(e.to_string()))?;
                crate::fsutil::write_private(&path, hex::encode(&secret).as_bytes())
                    .map_err(|e| fail(e.to_string()))?;
                secret
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    } else {
        // Validated: 64 hex digits.
        key("cluster.secret: ", cluster.secret.expose())?
    };
    let accepted = if cluster.accepted_secret.is_empty() {
        None
    } else {
        // Validated: 64 hex digits, with `cluster.secret` set.
        Some(key(
            "cluster.accepted_secret: ",
            cluster.accepted_secret.expose(),
        )?)
    };
    let server_id: Option<ServerId> = if cluster.server_id.is_empty() {
        None
    } else {
        Some(
            cluster
                .server_id
                .parse()
                .map_err(|e: String| fail(format!("cluster.server_id: {e}")))?,
        )
    };
    let keys = Arc::new(keys::Keys::new(&secret, accepted.as_deref(), server_id));
    (0..shards)
        .map(|shard| {
            // Hashed ids do not name their shard.
            let shard = match server_id {
                None => 0,
                Some(_) => u8::try_from(shard)
                    .map_err(|_| fail("cluster.server_id: at most 256 shards".into()))?,
            };
            let mut config = quinn::EndpointConfig::new(keys.clone());
            let keys = Arc::clone(&keys);
            config.cid_generator(move || keys.ids(shard));
            Ok(config)
        })
        .collect()
}

/// A loaded certificate chain and key, with where they came from.
pub struct Identity {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The certificate file (the generated one, or the configured one).
    pub cert_path: PathBuf,
    /// Whether it was generated for development.
    pub generated: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_path", &self.cert_path)
            .field("generated", &self.generated)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// SHA-256 of the leaf certificate (DER), as lowercase hex: what a client pins.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.certs
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default()
    }
}

/// The configured certificate and key, or the development certificate in
/// `data_dir/tls/{cert,key}.pem`, generated on first use.
///
/// # Errors
/// Unreadable or invalid PEM files, or a failure to generate or store the development pair.
pub fn load_identity(config: &TlsConfig, data_dir: &Path) -> Result<Identity, Error> {
    if config.cert.as_os_str().is_empty() {
        let dir = data_dir.join("tls");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert_path.exists() || !key_path.exists() {
            generate_dev_certificate(&cert_path, &key_path)?;
        }
        let mut identity = read_pair(&cert_path, &key_path)?;
        identity.generated = true;
        Ok(identity)
    } else {
        read_pair(&config.cert, &config.key)
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<Identity, Error> {
    let pem_error = |path: &Path, message: String| Error::Pem {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(cert_path, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e.to_string()))?;
    Ok(Identity {
        certs,
        key,
        cert_path: cert_path.to_owned(),
        generated: false,
    })
}

fn generate_dev_certificate(cert_path: &Path, key_path: &Path) -> Result<(), Error> {
    let fail = |message: String| Error::Generate {
        path: cert_path.to_owned(),
        message,
    };
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    crate::fsutil::write_private(key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    crate::fsutil::write_private(cert_path, certified.cert.pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// What the endpoint offers browsers.
#[derive(Clone, Debug, Default)]
pub struct Browsers {
    /// WebTransport sessions (ALPN `h3`) are taken.
    pub webtransport: bool,
    /// The certificate browsers get instead of the development one, while that is the
    /// daemon's (with a configured certificate, browsers check that one like any site's);
    /// [`BrowserCert::in_use`] says which, for the web listener.
    pub cert: Option<Arc<BrowserCert>>,
}

impl Browsers {
    /// What a daemon starting with `web` and `identity` offers browsers: with WebTransport
    /// on, a browser certificate, in use while `identity` is the development certificate.
    ///
    /// # Errors
    /// When the browser certificate cannot be generated.
    pub fn new(web: &crate::config::WebConfig, identity: &Identity) -> Result<Browsers, Error> {
        let cert = if web.webtransport {
            let cert = BrowserCert::generate(std::time::SystemTime::now())?;
            cert.set_in_use(identity.generated);
            Some(Arc::new(cert))
        } else {
            None
        };
        Ok(Browsers {
            webtransport: web.webtransport,
            cert,
        })
    }
}

/// The rustls server configuration: TLS 1.3 only, ALPN `chat/1` (and `h3` when
/// `browsers.webtransport`), ring provider; a browser's handshake gets `browsers.cert` when
/// there is one and `identity` is the development certificate.
///
/// # Errors
/// When rustls refuses the certificate or key.
pub fn server_config(
    identity: &Identity,
    browsers: &Browsers,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth();
    let browser = browsers.cert.as_ref();
    let mut config = match browser.filter(|_| browsers.webtransport && identity.generated) {
        Some(browser) => {
            let main = rustls::sign::CertifiedKey::from_der(
                identity.certs.clone(),
                identity.key.clone_key(),
                &provider,
            )?;
            builder.with_cert_resolver(Arc::new(browser::Resolver {
                main: Arc::new(main),
                browser: Arc::clone(browser),
            }))
        }
        None => builder.with_single_cert(identity.certs.clone(), identity.key.clone_key())?,
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    if browsers.webtransport {
        config.alpn_protocols.push(H3.to_vec());
    }
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_identity(&TlsConfig::default(), dir.path()).unwrap();
        assert!(first.generated);
        assert_eq!(first.cert_path, dir.path().join("tls/cert.pem"));
        let second = load_identity(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().len(), 64);
        server_config(&second, &Browsers::default()).unwrap();
    }

    #[test]
    fn configured_files_are_used_and_bad_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let generated = load_identity(&TlsConfig::default(), dir.path()).unwrap();
        let configured = TlsConfig {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem"),
        };
        let loaded = load_identity(&configured, Path::new("/nonexistent")).unwrap();
        assert!(!loaded.generated);
        assert_eq!(loaded.fingerprint(), generated.fingerprint());

        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let broken = TlsConfig {
            cert: dir.path().join("empty.pem"),
            key: configured.key.clone(),
        };
        assert!(
            load_identity(&broken, dir.path())
                .unwrap_err()
                .to_string()
                .contains("empty.pem")
        );
    }
}
