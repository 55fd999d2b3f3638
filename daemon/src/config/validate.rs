//! Validation of a configuration: every field checked before anything is bound, with every
//! problem listed at once.

use super::*;

impl Config {
    /// Checks every rule; reports all broken ones.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing each problem.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(
            self.shards <= 1024,
            "shards must be at most 1024 (0 = one per core)",
        );
        check(
            self.shutdown_drain_secs <= 3600,
            "shutdown_drain_secs must be at most 3600",
        );
        check(
            self.shutdown_grace_secs >= 1,
            "shutdown_grace_secs must be at least 1",
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log).is_ok(),
            "log must be a tracing filter, e.g. \"info\" or \"info,chatd=debug\"",
        );
        check(
            self.tls.cert.as_os_str().is_empty() == self.tls.key.as_os_str().is_empty(),
            "tls.cert and tls.key must both be set or both be empty",
        );
        check(
            self.auth.token_ttl_secs >= 60,
            "auth.token_ttl_secs must be at least 60",
        );
        check(
            self.auth.auth_timeout_secs >= 1,
            "auth.auth_timeout_secs must be at least 1",
        );
        for key in &self.auth.keys {
            check(
                !key.id.is_empty()
                    && key.id.len() <= 64
                    && key.id.bytes().all(|b| b.is_ascii_graphic()),
                "auth.keys: an id is 1 to 64 printable ASCII characters",
            );
            check(
                hex::decode(key.secret.expose()).is_ok_and(|s| s.len() >= 32),
                "auth.keys: a secret is at least 32 bytes written as hex (64+ hex digits)",
            );
        }
        let ids: std::collections::HashSet<_> = self.auth.keys.iter().map(|k| &k.id).collect();
        check(
            ids.len() == self.auth.keys.len(),
            "auth.keys: key ids must be unique",
        );
        check(
            (1..=4096).contains(&self.storage.max_group_commit),
            "storage.max_group_commit must be 1 to 4096",
        );
        check(
            self.storage.queue_depth >= 16,
            "storage.queue_depth must be at least 16",
        );
        // A device resends at most its unanswered requests: they must fit the window.
        check(
            (self.limits.max_in_flight as usize..=65_536).contains(&self.storage.dedupe_window),
            "storage.dedupe_window must be limits.max_in_flight to 65536",
        );
        check(
            (self.storage.dedupe_window..=1_000_000).contains(&self.storage.dedupe_cache),
            "storage.dedupe_cache must be storage.dedupe_window to 1000000",
        );
        check(
            self.storage.cached_conversations >= 16,
            "storage.cached_conversations must be at least 16",
        );
        check(
            self.storage.recycled_wals <= 16,
            "storage.recycled_wals must be 0 to 16",
        );
        // Below a memtable's size (64 MiB), every WAL would force flushes of small files.
        check(
            self.storage.max_wal_bytes >= 64 << 20,
            "storage.max_wal_bytes must be at least 67108864 (64 MiB)",
        );
        let limits = &self.limits;
        check(
            (1..=chat_protocol::limits::MAX_BODY).contains(&limits.max_body),
            "limits.max_body must be 1 to 16384 (the protocol ceiling)",
        );
        check(
            limits.max_in_flight >= 1,
            "limits.max_in_flight must be at least 1",
        );
        check(
            limits.max_rooms_per_user >= 1,
            "limits.max_rooms_per_user must be at least 1",
        );
        check(
            limits.max_room_members >= 2,
            "limits.max_room_members must be at least 2",
        );
        check(
            limits.outgoing_queue >= 16,
            "limits.outgoing_queue must be at least 16",
        );
        check(limits.send_rate >= 1, "limits.send_rate must be at least 1");
        check(
            limits.send_burst >= 1,
            "limits.send_burst must be at least 1",
        );
        check(
            limits.max_resume_gap >= 1,
            "limits.max_resume_gap must be at least 1",
        );
        check(
            limits.max_replay >= limits.max_resume_gap,
            "limits.max_replay must be at least limits.max_resume_gap",
        );
        check(
            limits.idle_timeout_secs >= 5,
            "limits.idle_timeout_secs must be at least 5",
        );
        check(
            limits.keep_alive_secs >= 1 && limits.keep_alive_secs < limits.idle_timeout_secs,
            "limits.keep_alive_secs must be at least 1 and below limits.idle_timeout_secs",
        );
        check(
            limits.max_connections_per_shard >= 1,
            "limits.max_connections_per_shard must be at least 1",
        );
        check(
            limits.max_unauthenticated >= 1,
            "limits.max_unauthenticated must be at least 1",
        );
        check(
            limits.max_connections_per_address >= 1,
            "limits.max_connections_per_address must be at least 1",
        );
        let bridge = &self.bridge;
        let url = bridge.amqp_url.expose();
        check(
            url.is_empty() || url.starts_with("amqp://") || url.starts_with("amqps://"),
            "bridge.amqp_url must be empty or an amqp:// or amqps:// URL",
        );
        check(
            !bridge.exchange.is_empty() && bridge.exchange.len() <= 255,
            "bridge.exchange must be 1 to 255 bytes",
        );
        check(
            (1..=65_535).contains(&bridge.max_unconfirmed),
            "bridge.max_unconfirmed must be 1 to 65535",
        );
        check(
            bridge.tls_ca.as_os_str().is_empty() || url.starts_with("amqps://"),
            "bridge.tls_ca needs an amqps:// bridge.amqp_url",
        );
        check(
            limits.max_presence_subscriptions >= 1,
            "limits.max_presence_subscriptions must be at least 1",
        );
        check(
            (100..=60_000).contains(&limits.presence_interval_ms),
            "limits.presence_interval_ms must be 100 to 60000",
        );
        // One largest answer (a full history page) must fit a connection's budget, or the
        // request could never be read.
        check(
            limits.connection_memory >= 2 * chat_protocol::limits::MAX_SERVER_FRAME,
            "limits.connection_memory must be at least 4194304 (two largest server frames)",
        );
        check(
            limits.user_memory >= limits.connection_memory,
            "limits.user_memory must be at least limits.connection_memory",
        );
        check(
            limits.daemon_memory == 0 || limits.daemon_memory >= limits.user_memory,
            "limits.daemon_memory must be 0 (half of the machine's memory) or at least limits.user_memory",
        );
        let admin = &self.admin;
        check(
            !admin.enabled || admin.listen.ip().is_loopback() || !admin.token.is_empty(),
            "admin.listen is not a loopback address: set admin.token (its bearer token), or \
             bind it to 127.0.0.1",
        );
        check(
            admin.token.is_empty() || admin.token.expose().len() >= 16,
            "admin.token must be at least 16 characters",
        );
        let cluster = &self.cluster;
        check(
            cluster.server_id.is_empty()
                || cluster.server_id.parse::<crate::tls::ServerId>().is_ok(),
            "cluster.server_id must be empty or 0x and 16 lowercase hex digits (the load \
             balancer's QuicServerId)",
        );
        check(
            cluster.server_id.is_empty() || self.shards <= 256,
            "cluster.server_id allows at most 256 shards (connection ids name their shard)",
        );
        check(
            cluster.secret.is_empty()
                || hex::decode(cluster.secret.expose()).is_ok_and(|s| s.len() == 32),
            "cluster.secret must be empty or 64 hex digits (32 bytes)",
        );
        if !cluster.accepted_secret.is_empty() {
            check(
                hex::decode(cluster.accepted_secret.expose()).is_ok_and(|s| s.len() == 32),
                "cluster.accepted_secret must be empty or 64 hex digits (32 bytes)",
            );
            check(
                !cluster.secret.is_empty()
                    && !cluster
                        .secret
                        .expose()
                        .eq_ignore_ascii_case(cluster.accepted_secret.expose()),
                "cluster.accepted_secret needs cluster.secret, and another secret than it",
            );
        }
        check(
            cluster.partitions <= crate::store::MAX_PARTITIONS,
            "cluster.partitions must be at most 256 (a partition is the top byte of an id)",
        );
        if !cluster.peer.is_empty() {
            check(
                cluster.peer.parse::<std::net::SocketAddr>().is_ok(),
                "cluster.peer must be IP:PORT, the address the other nodes reach this one at",
            );
            check(
                !cluster.etcd.is_empty() && !cluster.secret.is_empty(),
                "cluster.peer needs cluster.etcd (where the nodes find each other) and \
                 cluster.secret (what they prove to each other)",
            );
        }
        if !cluster.etcd.is_empty() {
            check(
                cluster.partitions > 0,
                "cluster.etcd needs cluster.partitions (what the nodes share)",
            );
            check(
                !cluster.node.is_empty(),
                "cluster.etcd needs cluster.node, this node's name",
            );
            check(
                !cluster.name.is_empty() && !cluster.name.contains('/'),
                "cluster.name must be a name without '/' (the etcd key prefix)",
            );
            check(
                cluster.lease_secs >= 2,
                "cluster.lease_secs must be at least 2",
            );
            check(
                cluster.etcd_user.is_empty() == cluster.etcd_password.is_empty(),
                "cluster.etcd_user and cluster.etcd_password go together",
            );
            let tls = !cluster.etcd_ca.as_os_str().is_empty();
            check(
                cluster
                    .etcd
                    .iter()
                    .all(|url| url.starts_with("https://") == tls),
                "cluster.etcd URLs are https:// with cluster.etcd_ca (TLS), http:// without",
            );
            check(
                cluster.etcd_cert.as_os_str().is_empty() == cluster.etcd_key.as_os_str().is_empty()
                    && (tls || cluster.etcd_cert.as_os_str().is_empty()),
                "cluster.etcd_cert and cluster.etcd_key go together, and need cluster.etcd_ca",
            );
            check(
                cluster.partitions_dir.is_absolute(),
                "cluster.etcd needs cluster.partitions_dir, an absolute path every node of the \
                 cluster reaches (DATA_DIR/partitions is this node's alone)",
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }
}
