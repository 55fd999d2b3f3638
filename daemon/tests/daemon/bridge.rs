//! The AMQP bridge against the real RabbitMQ on 127.0.0.1:5672 (`CHATD_TEST_AMQP_URL` to
//! point elsewhere): every committed event arrives in order with none missing; broker
//! connections cut mid-run lose nothing (a deduplicating consumer sees each event once); a
//! daemon killed with a backlog publishes it after the restart. These tests fail, rather
//! than skip, when the broker is not there.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chat_protocol::events::{self, EventKind};
use chat_protocol::*;
use chatd::config::Secret;
use futures_lite::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;

use crate::client::Client;
use crate::{TestDaemon, test_config};

pub(crate) fn amqp_url() -> String {
    std::env::var("CHATD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A fresh exchange name per test, so runs and tests do not see each other's events.
pub(crate) fn unique_exchange(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("chatd.test.{test}.{nanos}")
}

/// One published event as a consumer sees it.
#[derive(Debug)]
struct Received {
    seq: u64,
    routing_key: String,
    /// The JSON payload (`Null` for a bincode one).
    body: Value,
    /// The bincode payload, decoded.
    binary: Option<events::EventRecord>,
    content_type: String,
    header_seq: Option<i64>,
    persistent: bool,
}

/// A queue bound to everything on an exchange; deliveries are auto-acked.
pub(crate) struct Consumer {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    pub(crate) deliveries: lapin::Consumer,
    /// Deliveries seen, duplicates included.
    received: usize,
}

impl Consumer {
    pub(crate) async fn bind(exchange: &str) -> Consumer {
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                .await
                .expect("RabbitMQ must answer on 127.0.0.1:5672 (rabbitmq-server -detached)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                // As the bridge declares it (a mismatch is a channel error).
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let deliveries = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Consumer {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
            deliveries,
            received: 0,
        }
    }

    /// The seq of the next delivery, whatever it is.
    async fn next_seq(&mut self) -> u64 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), self.deliveries.next())
            .await
            .expect("no delivery for 30 s")
            .expect("consumer ended")
            .expect("delivery failed");
        self.received += 1;
        delivery
            .properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .as_str()
            .parse()
            .unwrap()
    }

    /// Deletes the test's exchange (the queue goes with the connection).
    pub(crate) async fn finish(self) {
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }

    /// Receives until every event up to `head` was seen; returns the first delivery of each
    /// seq, deduplicating on it as docs/EVENTS.md tells consumers to. Fails if one takes
    /// longer than 30 s to arrive.
    async fn until(&mut self, head: u64) -> BTreeMap<u64, Received> {
        let mut seen = BTreeMap::new();
        let mut highest = 0;
        while (seen.len() as u64) < head {
            let delivery = tokio::time::timeout(Duration::from_secs(30), self.deliveries.next())
                .await
                .unwrap_or_else(|_| panic!("no event for 30 s; have {} of {head}", seen.len()))
                .expect("consumer ended")
                .expect("delivery failed");
            self.received += 1;
            let properties = &delivery.properties;
            let seq: u64 = properties
                .message_id()
                .as_ref()
                .expect("message_id")
                .as_str()
                .parse()
                .unwrap();
            // In order: a new event is the next one; anything lower is a redelivery.
            if seq <= highest {
                continue;
            }
            assert_eq!(
                seq,
                highest + 1,
                "event {seq} arrived after {highest}: a gap"
            );
            highest = seq;
            let content_type = properties
                .content_type()
                .as_ref()
                .expect("content_type")
                .to_string();
            let (body, binary) = if content_type == events::BINCODE_CONTENT_TYPE {
                let event = events::decode_event(&delivery.data).unwrap();
                assert_eq!(event.seq, seq, "payload seq matches message_id");
                (Value::Null, Some(event))
            } else {
                assert_eq!(content_type, "application/json");
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                assert_eq!(body["seq"], seq, "payload seq matches message_id");
                (body, None)
            };
            let header_seq = properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-chatd-seq"))
                .and_then(lapin::types::AMQPValue::as_long_long_int);
            seen.insert(
                seq,
                Received {
                    seq,
                    routing_key: delivery.routing_key.to_string(),
                    body,
                    binary,
                    content_type,
                    header_seq,
                    persistent: *properties.delivery_mode() == Some(2),
                },
            );
        }
        seen
    }
}

pub(crate) fn with_bridge(exchange: &str) -> impl FnOnce(&mut chatd::config::Config) + '_ {
    move |c| {
        c.bridge.amqp_url = Secret::inline(amqp_url());
        c.bridge.exchange = exchange.to_owned();
        c.limits.presence_interval_ms = 100;
        c.limits.send_rate = 10_000;
        c.limits.send_burst = 10_000;
    }
}

pub(crate) async fn login(daemon: &TestDaemon, name: &str) -> (Client, UserId) {
    let (client, session) = Client::login(daemon.addr, &daemon.cert, &daemon.token(name), 1).await;
    (client, session.user)
}

/// The outbox head once the test's requests are acknowledged: the storage thread numbers a
/// group's events before it completes the group's requests, so every acknowledged commit is
/// counted (and an event nobody asked for would make the exact counts below fail).
fn acked_head(daemon: &TestDaemon) -> u64 {
    daemon.outbox_head()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_arrives_in_order() {
    let exchange = unique_exchange("order");
    let mut consumer = Consumer::bind(&exchange).await;
    let daemon = TestDaemon::start_with(with_bridge(&exchange));
    let (mut alice, a) = login(&daemon, "alice").await;
    let (mut bob, b) = login(&daemon, "bob").await;
    let (mut carol, c) = login(&daemon, "carol").await;
    let room = alice.create_room("news", false).await;
    bob.ok(Request::JoinRoom { room }).await;
    carol.ok(Request::JoinRoom { room }).await;
    // Carol goes away; once alice sees her offline, a message to the room lists her.
    alice
        .ok(Request::Presence {
            subscribe: vec![c],
            unsubscribe: vec![],
        })
        .await;
    carol.conn.close(0u32.into(), b"bye");
    drop(carol);
    loop {
        if let Event::Presence(p) = alice.event().await
            && p.user == c
            && p.status == PresenceStatus::Offline
        {
            break;
        }
    }
    let news = ConversationId::Room(room);
    let hello = alice.send_text(news, 1, "hello").await;
    bob.ok(Request::Mark {
        conversation: news,
        marker: Marker::Read,
        seq: hello.seq,
    })
    .await;
    let dm = ConversationId::direct(a, b);
    alice.send_text(dm, 2, "psst").await;

    let head = acked_head(&daemon);
    // 3 accounts, room created + its creation entry, 2 joins, 2 messages, 1 mark.
    assert_eq!(head, 10, "events numbered without gaps");
    let events = consumer.until(head).await;
    let kinds: Vec<&str> = events
        .values()
        .map(|e| e.body["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "user.registered",
            "user.registered",
            "user.registered",
            "room.created",
            "membership.changed",
            "membership.changed",
            "membership.changed",
            "message.created",
            "marker.moved",
            "message.created",
        ]
    );
    for event in events.values() {
        assert!(event.persistent, "event {} not persistent", event.seq);
        assert_eq!(event.header_seq, Some(i64::try_from(event.seq).unwrap()));
    }
    let hello_event = &events[&8];
    assert_eq!(hello_event.routing_key, "message.created.room");
    assert_eq!(hello_event.body["message"]["text"], "hello");
    assert_eq!(hello_event.body["message"]["seq"], hello.seq.0);
    assert_eq!(
        hello_event.body["offline_recipients"],
        serde_json::json!([c.0]),
        "carol was offline, bob was not"
    );
    assert_eq!(events[&9].routing_key, "marker.moved.read");
    assert_eq!(events[&9].body["up_to"], hello.seq.0);
    assert_eq!(events[&10].routing_key, "message.created.direct");
    assert_eq!(
        events[&10].body["offline_recipients"],
        serde_json::json!([])
    );
    assert_eq!(events[&4].body["name"], "news");
    assert_eq!(events[&1].body["name"], "alice");
    consumer.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bincode_events_carry_what_the_json_ones_do() {
    let exchange = unique_exchange("bincode");
    let mut consumer = Consumer::bind(&exchange).await;
    let daemon = TestDaemon::start_with(|c| {
        with_bridge(&exchange)(c);
        c.bridge.payload = chatd::config::Payload::Bincode;
    });
    let (mut alice, a) = login(&daemon, "alice").await;
    let (mut bob, b) = login(&daemon, "bob").await;
    let room = alice.create_room("news", false).await;
    bob.ok(Request::JoinRoom { room }).await;
    let news = ConversationId::Room(room);
    let hello = alice.send_text(news, 1, "hello").await;
    bob.ok(Request::Mark {
        conversation: news,
        marker: Marker::Read,
        seq: hello.seq,
    })
    .await;
    let dm = ConversationId::direct(a, b);
    alice.send_text(dm, u64::MAX, "psst").await;

    let head = acked_head(&daemon);
    // 2 accounts, room created + its creation entry, 1 join, 2 messages, 1 mark.
    assert_eq!(head, 8);
    let events = consumer.until(head).await;
    for event in events.values() {
        assert_eq!(event.content_type, events::BINCODE_CONTENT_TYPE);
        assert!(event.persistent);
        assert_eq!(event.header_seq, Some(i64::try_from(event.seq).unwrap()));
    }
    let kinds: Vec<&EventKind> = events
        .values()
        .map(|e| &e.binary.as_ref().unwrap().event)
        .collect();
    assert!(
        matches!(kinds[0], EventKind::UserRegistered { name, user } if name == "alice" && *user == a)
    );
    assert!(matches!(kinds[1], EventKind::UserRegistered { user, .. } if *user == b));
    assert!(
        matches!(kinds[2], EventKind::RoomCreated { room: r, name, owner, invite_only: false } if *r == room && name == "news" && *owner == a)
    );
    assert!(matches!(
        kinds[3],
        EventKind::MembershipChanged { change: events::Change::Created, subject, .. } if *subject == a
    ));
    assert!(matches!(
        kinds[4],
        EventKind::MembershipChanged { change: events::Change::Joined, subject, .. } if *subject == b
    ));
    assert_eq!(events[&6].routing_key, "message.created.room");
    assert_eq!(
        *kinds[5],
        EventKind::MessageCreated {
            conversation: news,
            seq: hello.seq,
            sender: a,
            op: OpId(1),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: b"hello".to_vec(),
            offline_recipients: vec![],
            mentions: vec![],
        }
    );
    assert_eq!(
        *kinds[6],
        EventKind::MarkerMoved {
            conversation: news,
            user: b,
            marker: Marker::Read,
            up_to: hello.seq,
        }
    );
    assert_eq!(events[&8].routing_key, "message.created.direct");
    assert!(matches!(
        kinds[7],
        EventKind::MessageCreated { conversation, op: OpId(u64::MAX), body, .. }
            if *conversation == dm && body == b"psst"
    ));
    consumer.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_consumers_after_their_message() {
    let exchange = unique_exchange("changes");
    let mut consumer = Consumer::bind(&exchange).await;
    let daemon = TestDaemon::start_with(with_bridge(&exchange));
    let (mut alice, a) = login(&daemon, "alice").await;
    let notes = ConversationId::Notes(a);
    let sent = alice.send_text(notes, 1, "draft").await;
    let edit = Request::Edit(EditMessage {
        conversation: notes,
        op: OpId(2),
        target: sent.seq,
        content_type: ContentType::TEXT,
        body: b"final".to_vec(),
    });
    assert!(matches!(alice.ok(edit).await, Response::Sent(_)));
    let delete = Request::Delete(DeleteMessage {
        conversation: notes,
        op: OpId(3),
        target: sent.seq,
    });
    assert!(matches!(alice.ok(delete).await, Response::Sent(_)));

    let head = acked_head(&daemon);
    // The account, the message, its edit, its deletion.
    assert_eq!(head, 4);
    let events = consumer.until(head).await;
    let keys: Vec<&str> = events.values().map(|e| e.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "user.registered",
            "message.created.notes",
            "message.edited.notes",
            "message.deleted.notes"
        ]
    );
    let edited = &events[&3].body;
    assert_eq!(
        (
            edited["type"].as_str(),
            edited["target"].as_u64(),
            edited["edit"]["seq"].as_u64(),
            edited["edit"]["text"].as_str(),
            edited["edit"]["op"].as_str()
        ),
        (
            Some("message.edited"),
            Some(1),
            Some(2),
            Some("final"),
            Some("2")
        )
    );
    let deleted = &events[&4].body;
    assert_eq!(
        (
            deleted["target"].as_u64(),
            deleted["entry_seq"].as_u64(),
            deleted["author"].as_u64(),
            deleted["actor"].as_u64(),
            deleted["erased"].clone()
        ),
        (
            Some(1),
            Some(3),
            Some(a.0),
            Some(a.0),
            serde_json::json!([2])
        )
    );
    // A deletion carries no content.
    assert!(!deleted.to_string().contains("final") && !deleted.to_string().contains("draft"));
    consumer.finish().await;
}

/// A TLS terminator in front of the broker, with a certificate for 127.0.0.1 that a CA of
/// its own signed: `amqps://` to it is TLS to a real RabbitMQ.
struct TlsFront {
    port: u16,
    ca: tempfile::NamedTempFile,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TlsFront {
    async fn start(upstream: std::net::SocketAddr) -> TlsFront {
        use std::sync::atomic::Ordering;
        let ca = crate::test_ca("chatd test CA");
        let (leaf, leaf_key) = crate::signed_by(&ca, "127.0.0.1");
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca_file, ca.pem().as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (done, failed) = (handshakes.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (done, failed) = (done.clone(), failed.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        failed.fetch_add(1, Ordering::AcqRel);
                        return;
                    };
                    done.fetch_add(1, Ordering::AcqRel);
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
                });
            }
        });
        TlsFront {
            port,
            ca: ca_file,
            handshakes,
            refused,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_bridge_publishes_over_tls_and_checks_the_brokers_certificate() {
    use std::sync::atomic::Ordering;
    let exchange = unique_exchange("amqps");
    let mut consumer = Consumer::bind(&exchange).await;
    let front = TlsFront::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqps = amqp_url()
        .replace("amqp://", "amqps://")
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{}", front.port));

    // Without the CA the certificate is not trusted: the bridge never gets through.
    let untrusted = TestDaemon::start_with(|c| {
        with_bridge(&exchange)(c);
        c.bridge.amqp_url = Secret::inline(amqps.clone());
    });
    let waited = std::time::Instant::now();
    while front.refused.load(Ordering::Acquire) == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the bridge did not try to connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(untrusted.bridge_connections(), 0);
    assert_eq!(front.handshakes.load(Ordering::Acquire), 0);
    drop(untrusted);

    // With it, events arrive through TLS.
    let daemon = TestDaemon::start_with(|c| {
        with_bridge(&exchange)(c);
        c.bridge.amqp_url = Secret::inline(amqps);
        c.bridge.tls_ca = front.ca.path().to_owned();
    });
    let (mut alice, a) = login(&daemon, "alice").await;
    alice
        .send_text(ConversationId::Notes(a), 1, "over tls")
        .await;
    let head = acked_head(&daemon);
    assert_eq!(head, 2);
    let events = consumer.until(head).await;
    assert_eq!(events[&1].body["type"], "user.registered");
    assert_eq!(events[&2].body["message"]["text"], "over tls");
    // (That the events came at all shows the handshake through the TLS front succeeded.)
    consumer.finish().await;
}

/// A TCP proxy that can cut every connection through it at once.
struct FaultProxy {
    port: u16,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl FaultProxy {
    async fn start(upstream: std::net::SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, watch) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = watch.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {} // both sockets drop: a hard cut
                    }
                });
            }
        });
        FaultProxy { port, cuts }
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_broker_connections_lose_and_duplicate_nothing_after_dedup() {
    // The bridge's log, shown if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chatd=debug,lapin=info")
        .with_test_writer()
        .try_init();
    let exchange = unique_exchange("cuts");
    let mut consumer = Consumer::bind(&exchange).await;
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let through_proxy = amqp_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port));
    let daemon = TestDaemon::start_with(|c| {
        with_bridge(&exchange)(c);
        c.bridge.amqp_url = Secret::inline(through_proxy);
        c.bridge.max_unconfirmed = 8;
    });
    let (mut alice, a) = login(&daemon, "alice").await;
    let notes = ConversationId::Notes(a);
    let cuts = 4;
    let mut op = 0;
    for round in 1..=cuts {
        // The bridge is up on its `round`-th connection (on a loaded machine the first one
        // can take a while).
        let waited = std::time::Instant::now();
        while !(daemon.bridge_connected() && daemon.bridge_connections() >= round) {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the bridge did not connect (round {round})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Cut in the middle of a stream of commits: some are in flight, the next ones
        // wait while the bridge reconnects.
        for i in 0..50 {
            op += 1;
            alice.send_text(notes, op, &format!("note {op}")).await;
            if i == 25 {
                proxy.cut();
            }
        }
        let waited = std::time::Instant::now();
        while daemon.bridge_connections() < round + 1 {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the bridge did not reconnect after cut {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let head = acked_head(&daemon);
    assert_eq!(head, 1 + op, "the account and every note");
    // `until` holds events 1..=head, each once and in order, or fails.
    let events = consumer.until(head).await;
    for (seq, event) in events.iter().skip(1) {
        assert_eq!(
            event.body["message"]["text"],
            format!("note {}", seq - 1),
            "event {seq}"
        );
    }
    // (How many deliveries the cuts repeated depends on timing: reported, not asserted.
    // `events` above already holds every event once.)
    eprintln!(
        "{} deliveries for {head} events over {} connections",
        consumer.received,
        daemon.bridge_connections()
    );
    consumer.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_sigkill_and_is_published_after_restart() {
    let exchange = unique_exchange("sigkill");
    let mut consumer = Consumer::bind(&exchange).await;
    let temp = tempfile::tempdir().unwrap();
    // The broker is unreachable for the first daemon: its events stay in the outbox.
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let broker = format!("amqp://guest:guest@127.0.0.1:{dead_port}/%2f");
    let (mut child, addr) = crate::spawn_chatd(
        temp.path(),
        &[
            ("CHATD_BRIDGE_AMQP_URL", &broker),
            ("CHATD_BRIDGE_EXCHANGE", &exchange),
        ],
    );
    let cert = temp.path().join("tls/cert.pem");
    let secret = temp.path().join("auth/secret");
    for _ in 0..400 {
        if cert.exists() && secret.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), temp.path()).unwrap();
    let now = chatd::unix_now();
    let token = keys.mint("alice", now, now + 3600);
    let mut alice = None;
    for _ in 0..100 {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut client = Client::connect(addr, &cert).await;
            let ok = client.hello(Some(&token), 1).await;
            (client, ok)
        })
        .await;
        if let Ok((client, ok)) = attempt {
            alice = Some((client, ok.session.unwrap().user));
            break;
        }
    }
    let (mut alice, a) = alice.expect("the daemon did not come up");
    let notes = ConversationId::Notes(a);
    for op in 1..=30 {
        alice.send_text(notes, op, &format!("note {op}")).await;
    }
    // Every note is acknowledged, so committed; the broker has seen none of them.
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;

    let mut config = test_config(temp.path());
    with_bridge(&exchange)(&mut config);
    let daemon = TestDaemon::start_in(temp.path(), config);
    assert_eq!(
        daemon.outbox_head(),
        31,
        "the account and 30 notes are in the outbox"
    );
    let events = consumer.until(31).await;
    assert_eq!(events[&1].body["type"], "user.registered");
    for seq in 2..=31u64 {
        assert_eq!(
            events[&seq].body["message"]["text"],
            format!("note {}", seq - 1)
        );
    }

    // `chatd bridge replay` republishes retained events with their original numbers, beside
    // the running daemon.
    let store = chatd::store::Store::open_read_only(&temp.path().join("db")).unwrap();
    let mut bridge = test_config(temp.path()).bridge;
    bridge.amqp_url = Secret::inline(amqp_url());
    bridge.exchange.clone_from(&exchange);
    let replayed = tokio::task::spawn_blocking(move || {
        chatd::bridge::replay(&store, None, &bridge, 5, Some(8))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(replayed, 4);
    let mut again = Vec::new();
    while again.len() < 4 {
        again.push(consumer.next_seq().await);
    }
    assert_eq!(again, [5, 6, 7, 8]);
    drop(daemon);
    consumer.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_published_after_they_took_effect() {
    let exchange = unique_exchange("admin");
    let mut consumer = Consumer::bind(&exchange).await;
    let daemon = TestDaemon::start_with(with_bridge(&exchange));
    let (_alice, a) = login(&daemon, "alice").await;
    let admin = daemon.admin_addr();
    for action in ["kick", "disable", "enable"] {
        let answer = chatd::admin::client::call(
            admin,
            None,
            "POST",
            &format!("/v1/users/alice/{action}"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(answer["action"], action);
    }
    let backup = tempfile::tempdir().unwrap();
    let dir = backup.path().join("b");
    let body = serde_json::json!({ "dir": dir });
    chatd::admin::client::call(admin, None, "POST", "/v1/backup", Some(&body))
        .await
        .unwrap();
    // alice's registration, then the four actions.
    let seen = consumer.until(5).await;
    let admin_events: Vec<&Received> = seen.values().skip(1).collect();
    let keys: Vec<&str> = admin_events
        .iter()
        .map(|r| r.routing_key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "admin.kick",
            "admin.disable",
            "admin.enable",
            "admin.backup"
        ]
    );
    assert_eq!(admin_events[3].body["detail"], dir.display().to_string());
    assert!(admin_events[3].body.get("user").is_none());
    assert!(dir.join("chatd-backup.json").exists());
    let kick = &admin_events[0].body;
    assert_eq!(kick["type"], "admin.action");
    assert_eq!(kick["user"], a.0);
    assert_eq!(kick["name"], "alice");
    assert_eq!(kick["closed"], 1);
    // Disabled after the kick: nothing was left to close.
    assert_eq!(admin_events[1].body["closed"], 0);
    assert_eq!(acked_head(&daemon), 5);
    consumer.finish().await;
}
