//! [`Daemon::reload`]: a new configuration applied to the running daemon, as SIGHUP asks
//! (which fields may change at runtime is [`crate::reload`]'s rule).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Daemon, Error, daemon_memory, tell_every_shard};
use crate::config::Config;
use crate::shard::ShardMsg;
use crate::{tls, token};

/// How long a reload waits for every shard to take the new certificate.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// What a reload changed.
#[derive(Debug)]
pub struct Reloaded {
    /// The SHA-256 fingerprint of the certificate new handshakes get.
    pub certificate: String,
    /// Fields the new configuration changes that only a restart applies (kept as running).
    pub restart_needed: Vec<&'static str>,
    /// Shards that had not taken the new certificate when the reload stopped waiting
    /// (normally 0; a stuck or stopping shard keeps serving the old one until it does).
    pub late_shards: usize,
}

impl Daemon {
    /// Applies a new configuration to the running daemon ([`crate::reload`]): reads the TLS
    /// certificate and key and the token keys again, then swaps them in with the reloadable
    /// fields of `config`. Open connections keep going; new handshakes present the new
    /// certificate once every shard has it, which this waits for.
    ///
    /// # Errors
    /// When the certificate, the key or the token keys cannot be read, or the merged
    /// configuration breaks a rule. Nothing changed then: the daemon runs as before.
    pub fn reload(&mut self, config: Config) -> Result<Reloaded, Error> {
        let running = self.shared.config();
        let (merged, restart_needed) = crate::reload::merge(&running, config);
        merged
            .validate()
            .map_err(|e| Error::Reload(e.to_string()))?;
        let identity = tls::load_identity(&merged.tls, &self.data_dir)?;
        let keys = token::Keys::load(&merged.auth, &self.data_dir)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(
            &identity,
            &self.browsers,
        )?)
        .map_err(|e| Error::Start(e.to_string()))?;
        // The same transport and Retry token key: only the certificate changes.
        let mut server_config = (*self.server_config).clone();
        server_config.crypto = Arc::new(crypto);
        let server_config = Arc::new(server_config);
        drop(running);

        self.shared.keys.store(Arc::new(keys));
        // Set once the reload can no longer fail: the web listener publishes the browser
        // certificate's hash only while handshakes present it.
        if let Some(cert) = &self.browsers.cert {
            cert.set_in_use(identity.generated);
        }
        self.shared.memory.set_limit(daemon_memory(&merged));
        self.shared.config.store(Arc::new(merged));
        // Bounded as a whole (a stuck shard with a full inbox must not hold the signal loop,
        // and with it SIGTERM, for longer than this).
        let deadline = Instant::now() + RELOAD_WAIT;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let told = tell_every_shard(
            &self.shared,
            || ShardMsg::ServerConfig {
                config: Arc::clone(&server_config),
                done: done_tx.clone(),
            },
            Some(deadline),
        );
        drop(done_tx);
        let mut updated = 0;
        while updated < told {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
            updated += 1;
        }
        self.server_config = server_config;
        self.cert_path.clone_from(&identity.cert_path);
        Ok(Reloaded {
            certificate: identity.fingerprint(),
            restart_needed,
            late_shards: self.shared.inboxes.len() - updated,
        })
    }
}
