//! What each metric means: the `# HELP` and unit of every metric [`super::Metrics::new`]
//! registers, in one place.

use metrics::Unit;

use super::Registry;

/// Describes every metric on `r`.
#[allow(clippy::too_many_lines)] // one description per metric
pub(super) fn describe(r: &Registry<'_>) {
    let count = Some(Unit::Count);
    let seconds = Some(Unit::Seconds);
    let bytes = Some(Unit::Bytes);
    r.describe(
        "chatd_requests_total",
        count,
        "Requests read from clients, by shard and kind.",
    );
    r.describe(
        "chatd_errors_total",
        count,
        "Error frames sent to clients, by code.",
    );
    r.describe(
        "chatd_handshakes_total",
        count,
        "QUIC handshakes, by shard and result.",
    );
    r.describe(
        "chatd_sessions_total",
        count,
        "Sessions authenticated, by shard.",
    );
    r.describe(
        "chatd_sends_acknowledged_total",
        count,
        "Sends committed and acknowledged, by the conversation's owner shard.",
    );
    r.describe(
        "chatd_deliveries_total",
        count,
        "Event frames queued for client connections, by shard.",
    );
    r.describe(
        "chatd_lagged_total",
        count,
        "Connections told they lag (their event queue or a shard inbox was full), by shard.",
    );
    r.describe(
        "chatd_rate_limited_total",
        count,
        "Sends refused by the per-connection rate limit, by shard.",
    );
    r.describe(
        "chatd_kicked_total",
        count,
        "Connections an operator closed, by shard.",
    );
    r.describe(
        "chatd_connections_refused_total",
        count,
        "New connections refused (full, over budget, too many unauthenticated or from one address).",
    );
    r.describe(
        "chatd_quic_retries_total",
        count,
        "QUIC Retries sent to prove a new connection's address.",
    );
    r.describe(
        "chatd_storage_commits_total",
        count,
        "Group commits, by result.",
    );
    r.describe(
        "chatd_bridge_confirmed_total",
        count,
        "Outbox events the broker confirmed since start.",
    );
    r.describe(
        "chatd_bridge_nacks_total",
        count,
        "Publish windows the broker refused.",
    );
    r.describe(
        "chatd_bridge_connections_total",
        count,
        "Broker connections made since start.",
    );
    r.describe(
        "chatd_peer_lags_total",
        count,
        "Times a cluster's node told every session it lags, by reason: a link to a node \
         holding partitions started or ended, a view moved a partition, the node took \
         partitions, or a partition's entries came from a new node or term.",
    );
    r.describe(
        "chatd_admin_actions_total",
        count,
        "Admin actions carried out, by action.",
    );
    r.describe_gauge(
        "chatd_connections",
        count,
        "Open connections by state: handshaking (from the first packet), unauthenticated, authenticated.",
    );
    r.describe_gauge(
        "chatd_shard_connections",
        count,
        "Open connections, by shard.",
    );
    r.describe_gauge(
        "chatd_inbox_depth",
        count,
        "Messages waiting in a shard's inbox (capacity 65536).",
    );
    r.describe(
        "chatd_inbox_messages_total",
        count,
        "Messages put in a shard's inbox (from other shards, itself, storage and the read pools): the cross-thread hops.",
    );
    r.describe(
        "chatd_inbox_wakeups_total",
        count,
        "Times a shard was woken for its inbox (a burst of messages costs one).",
    );
    r.describe_gauge(
        "chatd_shard_heartbeat_age_seconds",
        seconds,
        "Time since a shard's event loop last turned (it turns at least every 250 ms).",
    );
    r.describe_gauge(
        "chatd_memory_used_bytes",
        bytes,
        "Bytes charged to the daemon's memory budget (queued frames, reservations, connections).",
    );
    r.describe_gauge(
        "chatd_memory_peak_bytes",
        bytes,
        "The most bytes ever charged to the daemon's memory budget.",
    );
    r.describe_gauge(
        "chatd_memory_limit_bytes",
        bytes,
        "The daemon's memory budget (limits.daemon_memory).",
    );
    r.describe_gauge(
        "chatd_event_queue_peak",
        count,
        "The most events ever queued for one connection (bounded by limits.outgoing_queue).",
    );
    r.describe_gauge(
        "chatd_conversations_cached",
        count,
        "Conversations held in memory, by owner shard.",
    );
    r.describe_gauge(
        "chatd_storage_queue_depth",
        count,
        "Write requests waiting for the storage thread.",
    );
    r.describe_gauge(
        "chatd_storage_queue_capacity",
        count,
        "The storage queue's bound (storage.queue_depth).",
    );
    r.describe_gauge(
        "chatd_storage_failing",
        None,
        "1 while group commits fail (a full or broken disk), else 0.",
    );
    r.describe_gauge(
        "chatd_outbox_head",
        count,
        "The newest committed outbox event's seq.",
    );
    r.describe_gauge(
        "chatd_bridge_cursor",
        count,
        "The newest outbox event seq the broker confirmed.",
    );
    r.describe_gauge(
        "chatd_bridge_backlog_events",
        count,
        "Committed outbox events the broker has not confirmed yet.",
    );
    r.describe_gauge(
        "chatd_bridge_connected",
        None,
        "1 while the bridge holds a broker connection, else 0.",
    );
    r.describe_gauge(
        "chatd_bridge_publishers",
        None,
        "Partitions the bridge publishes: 1 on a single node, those held on a cluster's node (0 on a standby).",
    );
    r.describe_gauge(
        "chatd_process_resident_memory_bytes",
        bytes,
        "The process's resident set size.",
    );
    r.describe_gauge(
        "chatd_uptime_seconds",
        seconds,
        "Time since the daemon started.",
    );
    r.describe_gauge("chatd_ready", None, "1 when /readyz answers 200, else 0.");
    r.describe_gauge(
        "chatd_draining",
        None,
        "1 once a stop began (SIGTERM), else 0.",
    );
    r.describe_gauge(
        "chatd_build_info",
        None,
        "Always 1, with the version as a label.",
    );
    r.describe_histogram(
        "chatd_storage_group_commit_requests",
        count,
        "Write requests per group commit.",
    );
    r.describe_histogram(
        "chatd_storage_commit_seconds",
        seconds,
        "From a group's oldest request entering the storage queue to the group being durable.",
    );
    r.describe_histogram(
        "chatd_storage_write_seconds",
        seconds,
        "A group's RocksDB write, from the first key read for a unique name to the write's return (WAL append and fsync, memtable).",
    );
    r.describe_histogram(
        "chatd_storage_fsync_seconds",
        seconds,
        "RocksDB's WAL write of a group with its fsync (durability fsync; the append alone takes microseconds).",
    );
    r.describe_histogram(
        "chatd_bridge_publish_seconds",
        seconds,
        "A window of outbox events from its first publish to the broker's last confirm.",
    );
}
