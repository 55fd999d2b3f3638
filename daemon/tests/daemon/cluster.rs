//! Nodes behind one load balancer: connection ids carry the node's QUIC-LB server id, and a
//! node resets the connections of a dead node when they share `cluster.secret`. The load
//! balancer here is a small UDP router that does what a QUIC-LB load balancer (an AWS NLB's
//! QUIC listener) does: long-header packets go to a node chosen for the new connection,
//! short-header packets by the server id in their destination connection id, and packets
//! whose server id names no live node to another node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use chat_protocol::*;
use chatd::tls::{RoutableCids, ServerId};
use tokio::net::UdpSocket;

use crate::client::{Client, client_config};

const A: &str = "0x00000000000000a1";
const B: &str = "0x00000000000000b2";
/// A cluster secret, and the one it is rotated to.
const OLD: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const NEW: &str = "a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7";

/// What the router saw and where it sends: nodes by server id (removed when they die), the
/// node new connections go to, and the server ids of the short-header packets it routed.
#[derive(Default)]
struct Routes {
    nodes: HashMap<ServerId, SocketAddr>,
    first: Option<SocketAddr>,
    routed: Vec<ServerId>,
    unroutable: usize,
}

/// A QUIC-LB router on 127.0.0.1 for one client: returns its address.
async fn router(routes: Arc<Mutex<Routes>>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let address = front.local_addr().unwrap();
    // One upstream socket: the nodes answer it, and their answers go back to the client.
    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, upstream, client) = (front.clone(), upstream.clone(), client.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buffer).await {
                *client.lock() = Some(from);
                let packet = &buffer[..n];
                let to = {
                    let mut routes = routes.lock();
                    if packet[0] & 0x80 != 0 {
                        routes.first
                    } else {
                        let id = packet.get(1..17).and_then(RoutableCids::server_id_of);
                        match id {
                            Some(id) => {
                                routes.routed.push(id);
                                // An unknown server id (a node gone) goes to some live node.
                                routes
                                    .nodes
                                    .get(&id)
                                    .or_else(|| routes.nodes.values().next())
                                    .copied()
                            }
                            None => {
                                routes.unroutable += 1;
                                routes.first
                            }
                        }
                    }
                };
                if let Some(to) = to {
                    let _ = upstream.send_to(packet, to).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((n, _)) = upstream.recv_from(&mut buffer).await {
            let to = *client.lock();
            if let Some(to) = to {
                let _ = front.send_to(&buffer[..n], to).await;
            }
        }
    });
    address
}

/// Node A and node B (each its own data directory and certificate) with server ids `A` and
/// `B`, A's secrets `secrets_a` and B's `secrets_b` (each `cluster.secret`, then
/// `cluster.accepted_secret` or empty); a client logged in to A through the router, with a
/// 3 s idle timeout. A is then killed; the client sends a ping; returns how its connection
/// ended and what the router saw.
async fn kill_a_behind_the_router(
    secrets_a: [&'static str; 2],
    secrets_b: [&'static str; 2],
) -> (quinn::ConnectionError, Arc<Mutex<Routes>>) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = |server_id, [secret, accepted]: [&'static str; 2]| {
        let mut env = vec![
            ("CHATD_CLUSTER_SERVER_ID", server_id),
            ("CHATD_CLUSTER_SECRET", secret),
        ];
        if !accepted.is_empty() {
            env.push(("CHATD_CLUSTER_ACCEPTED_SECRET", accepted));
        }
        env
    };
    let (mut a, a_addr) = crate::spawn_chatd(dir_a.path(), &env(A, secrets_a));
    let (mut b, b_addr) = crate::spawn_chatd(dir_b.path(), &env(B, secrets_b));
    let cert = dir_a.path().join("tls/cert.pem");
    // Up: a direct connection to each.
    drop(crate::lifecycle::connect_when_up(a_addr, &cert).await);
    drop(crate::lifecycle::connect_when_up(b_addr, &dir_b.path().join("tls/cert.pem")).await);

    let routes = Arc::new(Mutex::new(Routes::default()));
    {
        let mut r = routes.lock();
        r.nodes.insert(A.parse().unwrap(), a_addr);
        r.nodes.insert(B.parse().unwrap(), b_addr);
        r.first = Some(a_addr);
    }
    let via = router(routes.clone()).await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = client_config(&cert);
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into().unwrap()));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(via, "localhost").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut client = Client::from_streams(conn, send, recv, endpoint);
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), dir_a.path()).unwrap();
    let now = chatd::unix_now();
    client
        .hello(Some(&keys.mint("alice", now, now + 3600)), 1)
        .await
        .session
        .unwrap();
    assert!(matches!(
        client.ok(Request::Ping).await,
        Response::Pong { .. }
    ));

    // A dies without a word; the load balancer takes it out of its targets.
    a.kill().unwrap();
    a.wait().unwrap();
    routes.lock().nodes.remove(&A.parse().unwrap());
    let closed = client.ended_after_a_packet().await;
    b.kill().unwrap();
    b.wait().unwrap();
    (closed, routes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_carry_the_server_id_and_another_node_resets_a_dead_nodes_clients() {
    let (closed, routes) = kill_a_behind_the_router([OLD, ""], [OLD, ""]).await;
    // B recognised the cluster's connection id and answered with the reset A's token matches.
    assert!(
        matches!(closed, quinn::ConnectionError::Reset),
        "{closed:?}"
    );
    let routes = routes.lock();
    let a: ServerId = A.parse().unwrap();
    assert_eq!(
        routes.unroutable, 0,
        "every short-header packet carried a server id"
    );
    assert!(routes.routed.len() > 2, "{:?}", routes.routed);
    assert!(
        routes.routed.iter().all(|id| *id == a),
        "{:?}",
        routes.routed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shared_secret_the_other_node_cannot_reset_and_the_client_times_out() {
    let (closed, _) = kill_a_behind_the_router([OLD, ""], [NEW, ""]).await;
    // B drops a packet whose connection id its key does not check: the client learns only
    // from its idle timeout.
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
}

/// While the cluster rotates its secret, a node resets the clients of a dead node that
/// issued their connection ids under the other secret, with the token their connection was
/// given: B accepts the old secret and signs with the new one while A is still on the old
/// one, and the other way round (A already signs with the new one, B has only started to
/// accept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_secret_rotates_a_node_resets_the_clients_of_a_node_on_the_other_secret() {
    for (secrets_a, secrets_b) in [([OLD, ""], [NEW, OLD]), ([NEW, OLD], [OLD, NEW])] {
        let (closed, _) = kill_a_behind_the_router(secrets_a, secrets_b).await;
        assert!(
            matches!(closed, quinn::ConnectionError::Reset),
            "A {secrets_a:?}, B {secrets_b:?}: {closed:?}"
        );
    }
}

/// With routable connection ids, a client whose address changes (a new socket: a new port,
/// as after a NAT rebinding or a network switch) keeps its connection: the shards' sockets
/// steer its packets by the shard byte of the connection id, not by its address, and
/// migration is on. Eight moves over four shards: by address alone, each move would land on
/// another shard (which resets the connection) three times in four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_address_changes_keeps_its_connection_on_its_shard() {
    let daemon = crate::TestDaemon::start_with(|config| {
        config.shards = 4;
        config.cluster.server_id = A.into();
    });
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(&daemon.cert));
    let conn = endpoint
        .connect(daemon.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let rebinder = endpoint.clone();
    let mut client = Client::from_streams(conn, send, recv, endpoint);
    client
        .hello(Some(&daemon.token("alice")), 1)
        .await
        .session
        .unwrap();
    let before = daemon.connections_per_shard();
    for _ in 0..8 {
        rebinder
            .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        assert!(matches!(
            client.ok(Request::Ping).await,
            Response::Pong { .. }
        ));
    }
    assert_eq!(daemon.connections_per_shard(), before, "still on its shard");
    assert!(client.conn.close_reason().is_none());
}
