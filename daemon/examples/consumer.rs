//! An example consumer of chatd's AMQP events (docs/EVENTS.md): binds a queue to the exchange
//! and prints every event once, deduplicating redeliveries by the event sequence number.
//!
//! ```sh
//! cargo run -p chatd --example consumer -- --bind 'message.created.#' --bind 'room.created'
//! ```
//!
//! With `--queue NAME` the queue is durable and survives the consumer; with `--state FILE`
//! the highest processed seq (per partition, from a node with `cluster.partitions`) is kept
//! in FILE, so a restarted consumer skips what it already printed. Events are acknowledged
//! after they are printed (at-least-once). JSON payloads are printed as they arrive, bincode
//! ones (`[bridge] payload = "bincode"`) decoded with
//! `chat_protocol::events`.
#![allow(clippy::print_stdout, missing_docs)]

use std::path::PathBuf;

use chat_protocol::events;
use clap::Parser;
use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

#[derive(Parser)]
struct Args {
    /// The broker.
    #[arg(
        long,
        env = "CHATD_BRIDGE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// The exchange chatd publishes to.
    #[arg(long, default_value = "chatd.events")]
    exchange: String,
    /// A durable queue to use; default: an exclusive queue that goes with the consumer.
    #[arg(long)]
    queue: Option<String>,
    /// Routing key patterns to bind (default: everything).
    #[arg(long = "bind", default_value = "#")]
    patterns: Vec<String>,
    /// File keeping the highest processed seq across runs.
    #[arg(long)]
    state: Option<PathBuf>,
    /// With an `amqps://` URL: a PEM file of CA certificates trusted besides the system's.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut highest = match &args.state {
        Some(path) => read_state(&std::fs::read_to_string(path).unwrap_or_default()),
        None => Highest::new(),
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: args
            .tls_ca
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose()?,
    };
    let connection = lapin::Connection::connect_with_config(
        &args.url,
        lapin::ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            args.exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let options = match &args.queue {
        Some(_) => QueueDeclareOptions::durable(),
        None => QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
    };
    let name = args.queue.clone().unwrap_or_default();
    let queue = channel
        .queue_declare(name.as_str().into(), options, FieldTable::default())
        .await?;
    for pattern in &args.patterns {
        channel
            .queue_bind(
                queue.name().clone(),
                args.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            "chatd-example-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "consuming {} from {} (after {})",
        args.patterns.join(", "),
        args.exchange,
        write_state(&highest).trim().replace('\n', ", "),
    );
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        // `SEQ`, or `PARTITION:SEQ` from a node with partitions (each numbers its own).
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let (partition, seq) = match id.as_deref().unwrap_or("").split_once(':') {
            Some((p, seq)) => (p.parse().ok(), seq.parse().unwrap_or(0)),
            None => (
                None,
                id.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            ),
        };
        // Events arrive in seq order per partition; a seq at or below the highest seen is a
        // redelivery.
        let last = highest.entry(partition).or_default();
        if seq > *last {
            *last = seq;
            let content_type = delivery
                .properties
                .content_type()
                .as_ref()
                .map(ToString::to_string);
            // A bincode payload is decoded and printed in Rust's debug form.
            let body = if content_type.as_deref() == Some(events::BINCODE_CONTENT_TYPE) {
                match events::decode_event(&delivery.data) {
                    Ok(event) => format!("{event:?}"),
                    Err(e) => format!("undecodable: {e}"),
                }
            } else {
                String::from_utf8_lossy(&delivery.data).into_owned()
            };
            let event = partition.map_or(seq.to_string(), |p| format!("{p}:{seq}"));
            println!("{event}\t{}\t{body}", delivery.routing_key);
            if let Some(path) = &args.state {
                std::fs::write(path, write_state(&highest))?;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// The highest seq processed, per partition (`None`: a single node's events).
type Highest = std::collections::BTreeMap<Option<u16>, u64>;

/// The state file: a line `SEQ` for a single node's events, `PARTITION SEQ` per partition.
fn read_state(text: &str) -> Highest {
    text.lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [seq] => Some((None, seq.parse().ok()?)),
                [p, seq] => Some((Some(p.parse().ok()?), seq.parse().ok()?)),
                _ => None,
            },
        )
        .collect()
}

fn write_state(highest: &Highest) -> String {
    highest
        .iter()
        .map(|(p, seq)| match p {
            Some(p) => format!("{p} {seq}\n"),
            None => format!("{seq}\n"),
        })
        .collect()
}
