//! `[cluster]`: what a node of a cluster needs (docs/SCALING.md, OPERATIONS.md section 9).

use serde::Deserialize;

use super::Secret;

/// `[cluster]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The QUIC-LB server id connection ids carry (`0x` and 16 lowercase hex digits); empty:
    /// none. In `CHATD_CLUSTER_SERVER_ID` the digits read as a TOML integer, which is taken
    /// back as the same id.
    #[serde(deserialize_with = "server_id_text")]
    pub server_id: String,
    /// The secret the nodes share, 64 hex digits (a [`Secret`]); empty: the data directory's
    /// own `quic/reset-key`.
    pub secret: Secret,
    /// A second secret the node accepts but never signs with (64 hex digits, a [`Secret`]),
    /// while the cluster rotates `secret` (docs/OPERATIONS.md, section 9): the new one until
    /// every node has it, then the old one until every node signs with the new. Peer proofs,
    /// connection ids and stateless resets of either are honoured. Empty: none.
    pub accepted_secret: Secret,
    /// How many partitions the cluster's data is split into (at most 256; fixed when the
    /// cluster is created: docs/SCALING.md). 0: none, the node's one store in `db/`; N: the
    /// stores in `partitions/000` to `partitions/N-1`, all opened by this node.
    pub partitions: usize,
    /// etcd's client URLs. Set: the node joins the cluster `name` as `node`, and holds the
    /// partitions etcd gives it (docs/SCALING.md section 3); every node of the cluster then
    /// reaches the partitions' stores in `partitions_dir`. Empty: the node holds all of its
    /// partitions, alone.
    pub etcd: Vec<String>,
    /// The etcd user the node authenticates as, when etcd has authentication on (with
    /// `etcd_password`); empty: none.
    pub etcd_user: String,
    /// That user's password (a [`Secret`]: inline, or from a file, the environment or a
    /// systemd credential).
    pub etcd_password: Secret,
    /// The CA certificate (PEM) etcd's certificate is checked against: set, the node speaks
    /// TLS to etcd (its URLs are `https://`); empty: plain TCP (`http://`).
    pub etcd_ca: std::path::PathBuf,
    /// A client certificate (PEM) the node shows etcd (with `etcd_key`), when etcd checks
    /// its clients' certificates (`--client-cert-auth`); empty: none.
    pub etcd_cert: std::path::PathBuf,
    /// The client certificate's private key (PEM).
    pub etcd_key: std::path::PathBuf,
    /// The cluster's name: its keys in etcd are under `/chatd/NAME/`.
    pub name: String,
    /// This node's name, unique in the cluster (required with `etcd`).
    pub node: String,
    /// The node's etcd lease, in seconds: a node that dies loses its partitions this long
    /// after its last renewal.
    pub lease_secs: u64,
    /// Where the partitions' stores are; empty: `DATA_DIR/partitions`. With `etcd`, required:
    /// an absolute path every node reaches (on loopback, one directory; on EC2, where each
    /// partition's volume is mounted).
    pub partitions_dir: std::path::PathBuf,
    /// This node's peer address, `IP:PORT` (UDP), bound and registered in etcd for the other
    /// nodes. Set (with `etcd` and `secret`): the partitions are spread over the nodes and
    /// each forwards to the others what their partitions hold (docs/SCALING.md sections 5
    /// and 6). Empty: one node serves every partition and the others stand by.
    pub peer: String,
}

impl ClusterConfig {
    /// Where the partitions' stores are, for the node whose data directory is `data_dir`.
    #[must_use]
    pub fn partitions_in(&self, data_dir: &std::path::Path) -> std::path::PathBuf {
        if self.partitions_dir.as_os_str().is_empty() {
            data_dir.join("partitions")
        } else {
            self.partitions_dir.clone()
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            server_id: String::new(),
            secret: Secret::default(),
            accepted_secret: Secret::default(),
            partitions: 0,
            etcd: Vec::new(),
            etcd_user: String::new(),
            etcd_password: Secret::default(),
            etcd_ca: std::path::PathBuf::new(),
            etcd_cert: std::path::PathBuf::new(),
            etcd_key: std::path::PathBuf::new(),
            name: "chatd".to_owned(),
            node: String::new(),
            lease_secs: 2,
            partitions_dir: std::path::PathBuf::new(),
            peer: String::new(),
        }
    }
}

/// A server id as written, or as the integer TOML reads `0x…` as when it is unquoted (in
/// the environment): formatted back as `0x` and 16 hex digits.
fn server_id_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Written(String),
        Number(i64),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::Written(text) => text,
        Text::Number(n) if n >= 0 => format!("0x{n:016x}"),
        Text::Number(n) => {
            return Err(serde::de::Error::custom(format!(
                "a server id is 0x and 16 hex digits, not {n}"
            )));
        }
    })
}
