//! What a reload (SIGHUP) may change while connections stay open, and what waits for a
//! restart.
//!
//! Reloaded: the TLS certificate and key (new handshakes use them), the token keys and
//! token lifetime, the log filter, the shutdown grace, and the limits that guard the
//! daemon rather than promise something to clients (admission, memory budgets, presence,
//! replay, queue length). Not reloaded: what is bound or opened at start (`listen`,
//! `data_dir`, `shards`, `runtime`, `log_format`, `[storage]`, `[bridge]`, the admin
//! listener's address (its token is reloaded), `[web]`) and the limits announced to clients in `HelloOk`, which connected clients already rely on; a change to
//! one of those is named in the log and takes effect at the next restart.

use crate::config::Config;

/// The configuration to run with after a reload: `new` with every field that cannot change
/// at runtime kept at its `running` value, and the names of the fields that were asked to
/// change and could not.
#[must_use]
pub fn merge(running: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut merged = new;
    let mut restart = Vec::new();
    macro_rules! keep {
        ($($field:ident).+) => {
            if merged.$($field).+ != running.$($field).+ {
                restart.push(stringify!($($field).+));
                merged.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(listen);
    keep!(data_dir);
    keep!(shards);
    keep!(runtime);
    keep!(log_format);
    keep!(storage);
    keep!(bridge);
    keep!(admin.enabled);
    keep!(admin.listen);
    keep!(web);
    keep!(auth.auth_timeout_secs);
    keep!(limits.max_body);
    keep!(limits.max_in_flight);
    keep!(limits.max_rooms_per_user);
    keep!(limits.max_room_members);
    keep!(limits.send_rate);
    keep!(limits.send_burst);
    keep!(limits.max_resume_gap);
    keep!(limits.idle_timeout_secs);
    keep!(limits.keep_alive_secs);
    keep!(cluster);
    (merged, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_change_and_promises_wait_for_a_restart() {
        let running = Config::default();
        let mut new = running.clone();
        new.limits.max_unauthenticated = 5;
        new.limits.connection_memory = 8 << 20;
        new.auth.token_ttl_secs = 600;
        new.log = "debug".into();
        new.tls.cert = "/etc/chatd/tls/cert.pem".into();
        new.tls.key = "/etc/chatd/tls/key.pem".into();
        new.listen = "0.0.0.0:9999".parse().unwrap();
        new.limits.max_in_flight = 1;
        new.storage.max_group_commit = 7;
        new.cluster.server_id = "0x0000000000000001".into();
        let (merged, restart) = merge(&running, new);
        assert_eq!(
            restart,
            ["listen", "storage", "limits.max_in_flight", "cluster"]
        );
        assert_eq!(merged.limits.max_unauthenticated, 5);
        assert_eq!(merged.limits.connection_memory, 8 << 20);
        assert_eq!(merged.auth.token_ttl_secs, 600);
        assert_eq!(merged.log, "debug");
        assert_eq!(
            merged.tls.cert,
            std::path::Path::new("/etc/chatd/tls/cert.pem")
        );
        assert_eq!(merged.listen, running.listen);
        assert_eq!(merged.limits.max_in_flight, running.limits.max_in_flight);
        assert_eq!(merged.storage, running.storage);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = Config::default();
        let (merged, restart) = merge(&running, running.clone());
        assert!(restart.is_empty());
        assert_eq!(merged, running);
    }
}
