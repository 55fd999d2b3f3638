//! Bridge throughput: how many events per second chatd's AMQP bridge publishes with
//! publisher confirms, against a baseline measured in the same run — lapin alone publishing
//! the same payloads to the same broker in the same confirm windows (no outbox reads, no
//! cursor writes). Both exchanges have a durable queue bound, so the broker really routes
//! and stores every message. The bridge runs twice over the same outbox: JSON payloads as
//! stored, then bincode payloads converted at publish time.
//!
//! `cargo run --release -p chat-bench --bin bridge -- [--events N]` (bench/bridge.sh wraps
//! it and writes bench/RESULTS.md). Needs RabbitMQ on 127.0.0.1:5672; targets only
//! 127.0.0.1 and stops by itself.
#![allow(
    clippy::print_stdout,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chat_protocol::{ContentType, ConversationId, RoomId, Seq, UserId};
use chatd::config::Payload;
use chatd::store::outbox::{Event, MessageBody};
use chatd::store::writer::{Batch, Completion, OutboxHead, WriteError};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const WINDOW: usize = 256;

struct Ignore;
impl Completion for Ignore {
    fn complete(self, result: Result<(), WriteError>) {
        result.expect("outbox write");
    }
}

fn event(i: u64) -> Event {
    Event::MessageCreated {
        conversation: ConversationId::Room(RoomId(1 + i % 16)).into(),
        message: MessageBody::new(
            Seq(i + 1),
            UserId(1 + i % 100),
            i,
            ContentType::TEXT,
            None,
            "a chat message of about a hundred bytes, which is what most chat messages are, roughly".as_bytes(),
        ),
        offline_recipients: vec![UserId(7), UserId(9)],
        mentions: Vec::new(),
    }
}

/// Declares `exchange` with a durable queue bound to everything.
async fn declare(channel: &lapin::Channel, exchange: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            exchange.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            exchange.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn cleanup(channel: &lapin::Channel, exchange: &str) {
    let _ = channel
        .queue_delete(exchange.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// lapin alone: the same payloads, windows of `WINDOW` confirms.
async fn baseline(payloads: &[(String, Vec<u8>)], exchange: &str) -> f64 {
    let connection = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&channel, exchange).await;
    let started = Instant::now();
    for window in payloads.chunks(WINDOW) {
        let mut confirms = Vec::with_capacity(window.len());
        for (seq, (key, json)) in window.iter().enumerate() {
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(seq.to_string().as_str().into());
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        json,
                        properties,
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    cleanup(&channel, exchange).await;
    rate
}

fn main() {
    let events: u64 = std::env::args()
        .skip_while(|a| a != "--events")
        .nth(1)
        .map_or(20_000, |n| n.parse().expect("--events N"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = std::process::id();
    let (base_exchange, chatd_exchange) = (
        format!("chatd.bench.baseline.{run}"),
        format!("chatd.bench.bridge.{run}"),
    );

    // The outbox of a daemon that ran while the broker was away: `events` messages.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let payloads = {
        let store = chatd::store::Store::open(&db).unwrap();
        let head = Arc::new(OutboxHead::default());
        let (writer, thread) = chatd::store::writer::spawn::<Ignore>(
            store.clone(),
            chatd::config::Durability::Buffered,
            256,
            16_384,
            Arc::clone(&head),
            Arc::new(chatd::metrics::Metrics::new(1)),
        )
        .unwrap();
        for chunk in (0..events).collect::<Vec<_>>().chunks(64) {
            let mut batch = Batch::default();
            for i in chunk {
                batch.event(event(*i));
            }
            assert!(
                writer.submit(batch, Ignore).is_ok(),
                "the queue is deep enough"
            );
        }
        drop(writer);
        thread.join().unwrap();
        assert_eq!(head.seq.load(Ordering::Acquire), events);
        store
            .outbox_after(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, json)| {
                let record: chatd::store::outbox::Record = serde_json::from_slice(&json).unwrap();
                (record.event.routing_key(), json)
            })
            .collect::<Vec<_>>()
    };

    let base = runtime.block_on(baseline(&payloads, &base_exchange));

    // chatd: start on that data with the broker back, time until the bridge confirmed all.
    let setup = runtime.block_on(async {
        let connection = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        declare(&channel, &chatd_exchange).await;
        (connection, channel)
    });
    let json = publish_all(dir.path(), &chatd_exchange, Payload::Json, events);
    // The same outbox again from the start, converted to the bincode payload at publish time.
    chatd::store::Store::open(&db)
        .unwrap()
        .set_bridge_cursor(0)
        .unwrap();
    let bincode = publish_all(dir.path(), &chatd_exchange, Payload::Bincode, events);
    runtime.block_on(cleanup(&setup.1, &chatd_exchange));

    println!(
        "{{\"events\": {events}, \"window\": {WINDOW}, \"baseline_per_sec\": {base:.0}, \"bridge_per_sec\": {json:.0}, \"ratio\": {:.3}, \"bincode_per_sec\": {bincode:.0}, \"bincode_ratio\": {:.3}}}",
        json / base,
        bincode / base
    );
}

/// Starts chatd on the outbox in `dir` with the broker up; returns the events per second
/// until the bridge has all `events` confirmed (start-up included).
fn publish_all(dir: &std::path::Path, exchange: &str, payload: Payload, events: u64) -> f64 {
    let mut config = chatd::config::Config {
        data_dir: dir.to_owned(),
        shards: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..chatd::config::Config::default()
    };
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.web.enabled = false;
    config.bridge.amqp_url = chatd::config::Secret::inline(URL);
    config.bridge.exchange = exchange.to_owned();
    config.bridge.max_unconfirmed = WINDOW;
    config.bridge.payload = payload;
    let started = Instant::now();
    let daemon = chatd::Daemon::start(config).unwrap();
    while daemon.bridge_stats().confirmed.load(Ordering::Acquire) < events {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the bridge stalled"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    daemon.stop();
    rate
}
