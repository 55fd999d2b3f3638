//! chatd's integration test binary: real daemons (real QUIC with TLS on 127.0.0.1, RocksDB in
//! a temp dir, two shards) driven by a frame-level client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod admin;
mod auth;
mod authz;
mod bridge;
mod chain;
mod changes;
mod client;
mod cluster;
mod conversations;
mod erase;
mod history;
mod lifecycle;
mod limits;
mod operations;
mod ownership;
mod partitions;
mod peers;
mod presence;
mod reactions;
mod receipts;
mod resume;
mod robustness;
mod standby;
mod typing;
mod web;

use std::net::SocketAddr;
use std::path::Path;

pub use chatd_testkit::{TestDaemon, test_config};

/// Starts the `chatd` binary on `dir`, on a free UDP port of 127.0.0.1 with 2 shards, with
/// extra environment `env`; returns the child and its address. Output is discarded.
pub fn spawn_chatd(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, SocketAddr) {
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (spawn_chatd_at(dir, addr, env), addr)
}

/// Like `spawn_chatd`, on a given address (a restart on the same port).
pub fn spawn_chatd_at(dir: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args([
            "run",
            "--listen",
            &addr.to_string(),
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("RUST_LOG")
        .env("CHATD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CHATD_WEB_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A certificate authority of the test's own, named `name`, for the TLS of the services a
/// test puts in front of chatd (a broker, etcd).
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `name` (a host, an IP address, a client's name) that `ca` signed, and
/// its key.
pub fn signed_by(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    name: &str,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert, key)
}
