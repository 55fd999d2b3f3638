//! The AMQP bridge: a dedicated thread (`bridge`) with its own tokio runtime that publishes
//! the outbox to RabbitMQ in event-seq order, with publisher confirms.
//!
//! It publishes up to `max_unconfirmed` events, waits for their confirms, and only then moves
//! its persisted cursor (`Cf::Meta`). A lost connection, a nack or a daemon crash leaves the
//! cursor where it was, and the events after it are published again: at-least-once, in order,
//! never a gap; consumers deduplicate on the seq (docs/EVENTS.md). While the broker is away
//! chat goes on and the backlog waits on disk; the bridge reconnects with backoff and logs the
//! backlog every 10 seconds. Confirmed events older than `retention_secs` are pruned.
//!
//! Bodies are the outbox's JSON as stored, or with `payload = "bincode"` the record converted
//! to `chat_protocol::events::EventRecord`. `amqps://` URLs connect over rustls, trusting the
//! system's CAs and those in `tls_ca`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::events;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::config::{BridgeConfig, Payload};
use crate::store::outbox::Record;
use crate::store::writer::OutboxHead;
use crate::store::{self, Store, Stores};

/// What the bridge reports, for logs, tests and operators. With partitions, one publisher
/// per partition adds to the same counters.
#[derive(Default)]
pub struct BridgeStats {
    /// The events the broker confirmed: the last event seq it confirmed, added up over the
    /// partitions (on a single node, the confirmed cursor).
    pub confirmed: AtomicU64,
    /// Publishers whose broker connection is up.
    connected: AtomicUsize,
    /// Publishers: one per partition.
    publishers: AtomicUsize,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
}

impl BridgeStats {
    /// How many partitions the bridge publishes (0 on a node holding none).
    pub fn publishers(&self) -> usize {
        self.publishers.load(Ordering::Acquire)
    }

    /// Whether every publisher's broker connection is up.
    pub fn connected(&self) -> bool {
        let publishers = self.publishers.load(Ordering::Acquire);
        publishers > 0 && self.connected.load(Ordering::Acquire) == publishers
    }
}

/// The running bridge thread: a publisher per partition held.
pub(crate) struct Bridge {
    control: BridgeControl,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the bridge thread is told.
enum Command {
    /// Publish partition `partition`'s outbox from `store`, woken by `head`.
    Add {
        partition: usize,
        store: Store,
        head: Arc<OutboxHead>,
    },
    /// Stop publishing partition `partition`; answered once its publisher has ended (and let
    /// go of the store).
    Remove {
        partition: usize,
        done: std::sync::mpsc::Sender<()>,
    },
    /// Stop every publisher and end.
    Stop,
}

/// Adds and removes the bridge's publishers as partitions come and go. Cheap to clone.
#[derive(Clone)]
pub(crate) struct BridgeControl {
    commands: tokio::sync::mpsc::Sender<Command>,
}

/// How long [`BridgeControl::remove`] waits for a publisher to end.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

impl BridgeControl {
    /// Starts publishing partition `partition`'s outbox (from a thread outside the bridge's
    /// runtime).
    pub(crate) fn add(&self, partition: usize, store: Store, head: Arc<OutboxHead>) {
        let command = Command::Add {
            partition,
            store,
            head,
        };
        if self.commands.blocking_send(command).is_err() {
            tracing::error!(
                partition,
                "the bridge has stopped: the partition is not published"
            );
        }
    }

    /// Stops publishing partition `partition` and waits (up to 10 s) until its publisher has
    /// ended; what it had not published waits in the partition's outbox for its next holder.
    pub(crate) fn remove(&self, partition: usize) {
        let (done, ended) = std::sync::mpsc::channel();
        if self
            .commands
            .blocking_send(Command::Remove { partition, done })
            .is_ok()
            && ended.recv_timeout(REMOVE_WAIT).is_err()
        {
            tracing::error!(partition, "the partition's publisher did not end in time");
        }
    }
}

/// A running publisher's switch.
struct Running {
    stop: Arc<tokio::sync::Notify>,
    stopping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

impl Bridge {
    /// Starts the bridge thread: a publisher for each partition `stores` holds, with its
    /// outbox's head in `heads`.
    pub(crate) fn start(
        stores: &Stores,
        config: BridgeConfig,
        heads: &[Arc<OutboxHead>],
        stats: Arc<BridgeStats>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Bridge> {
        // A CA file that cannot be used stops the start, not every connection attempt later.
        read_tls_ca(&config).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("bridge.tls_ca {}: {e}", config.tls_ca.display()),
            )
        })?;
        let partitioned = stores.map().count() > 1;
        let (commands, mut told) = tokio::sync::mpsc::channel(4 * stores.map().count() + 4);
        let initial: Vec<_> = (stores.held().into_iter())
            .map(|(p, store)| Command::Add {
                partition: p,
                store,
                head: Arc::clone(&heads[p]),
            })
            .collect();
        let thread = std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "the bridge cannot start its runtime");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let mut running = std::collections::BTreeMap::new();
                    let start = |partition: usize, store: Store, head: Arc<OutboxHead>| {
                        let (stop, stopping) = (Arc::default(), Arc::default());
                        let publisher = Publisher {
                            store,
                            partition: partitioned.then_some(partition),
                            config: config.clone(),
                            head,
                            stats: Arc::clone(&stats),
                            metrics: Arc::clone(&metrics),
                            stop: Arc::clone(&stop),
                            stopping: Arc::clone(&stopping),
                        };
                        stats.publishers.fetch_add(1, Ordering::AcqRel);
                        let task = tokio::task::spawn_local(publisher.run());
                        Running {
                            stop,
                            stopping,
                            task,
                        }
                    };
                    let mut pending = initial.into_iter();
                    loop {
                        let command = match pending.next() {
                            Some(command) => command,
                            None => told.recv().await.unwrap_or(Command::Stop),
                        };
                        match command {
                            Command::Add {
                                partition,
                                store,
                                head,
                            } => {
                                if let Some(old) = running.remove(&partition) {
                                    Running::stop(old).await;
                                }
                                running.insert(partition, start(partition, store, head));
                            }
                            Command::Remove { partition, done } => {
                                if let Some(old) = running.remove(&partition) {
                                    old.stop().await;
                                }
                                let _ = done.send(());
                            }
                            Command::Stop => break,
                        }
                    }
                    for (_, publisher) in running {
                        publisher.stop().await;
                    }
                });
            })?;
        Ok(Bridge {
            control: BridgeControl { commands },
            thread: Some(thread),
        })
    }

    /// What adds and removes publishers.
    pub(crate) fn control(&self) -> BridgeControl {
        self.control.clone()
    }

    /// Tells the bridge to stop (what is not confirmed yet goes out after the next start);
    /// returns its thread, to be joined.
    pub(crate) fn stop(mut self) -> Option<std::thread::JoinHandle<()>> {
        if self.control.commands.try_send(Command::Stop).is_err() {
            // A full queue: the thread also stops once every sender is gone.
            tracing::debug!("the bridge's command queue is full; it stops when it drains");
        }
        self.thread.take()
    }
}

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("storage: {0}")]
    Store(#[from] store::Error),
    #[error("the broker refused event {0}")]
    Nacked(u64),
    #[error("the connection is no longer up")]
    Lost,
    #[error("{0} took too long")]
    TimedOut(&'static str),
    #[error("outbox entry {0} does not parse: {1}")]
    Corrupt(u64, String),
    #[error("bridge.tls_ca {0}")]
    Tls(String),
}

struct Publisher {
    store: Store,
    /// The partition whose outbox this publishes (`None`: a single node's).
    partition: Option<usize>,
    config: BridgeConfig,
    head: Arc<OutboxHead>,
    stats: Arc<BridgeStats>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: Arc<tokio::sync::Notify>,
    stopping: Arc<AtomicBool>,
}

/// Backoff between connection attempts.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest wait for a connection, and for publishing one window of events and its confirms.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the backlog is logged while it is not empty, and the outbox pruned.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Publisher {
    /// Publishes until stopped; then takes its partition out of the stats.
    async fn run(self) {
        let confirmed = self.publish_all().await;
        self.stats.confirmed.fetch_sub(confirmed, Ordering::AcqRel);
        self.stats.publishers.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connects and publishes, again after every failure, until stopped; returns the
    /// confirmed cursor it added to the stats.
    async fn publish_all(&self) -> u64 {
        let mut confirmed = match self.store.bridge_cursor() {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, "the bridge cannot read its cursor; not publishing");
                return 0;
            }
        };
        self.stats.confirmed.fetch_add(confirmed, Ordering::AcqRel);
        let mut delay = FIRST_DELAY;
        let mut reported = Instant::now();
        while !self.stopping.load(Ordering::Acquire) {
            match open(&self.config).await {
                Ok((connection, channel)) => {
                    let before = confirmed;
                    self.stats.connections.fetch_add(1, Ordering::AcqRel);
                    self.stats.connected.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(
                        exchange = %self.config.exchange,
                        partition = self.partition,
                        backlog = self.backlog(confirmed),
                        "bridge connected to the broker"
                    );
                    let ended = self.publish(&connection, &channel, &mut confirmed).await;
                    self.stats.connected.fetch_sub(1, Ordering::AcqRel);
                    // Back off from scratch only after progress: a broker that accepts the
                    // connection but refuses an event is not retried every 100 ms.
                    if confirmed > before {
                        delay = FIRST_DELAY;
                    }
                    match ended {
                        Ok(()) => {
                            let _ = connection.close(200, "chatd stopping".into()).await;
                            return confirmed;
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            partition = self.partition,
                            backlog = self.backlog(confirmed),
                            "bridge lost the broker; the backlog waits in the outbox"
                        ),
                    }
                }
                Err(e) => {
                    if reported.elapsed() >= REPORT_EVERY {
                        reported = Instant::now();
                        tracing::warn!(
                            error = %e,
                            partition = self.partition,
                            backlog = self.backlog(confirmed),
                            "bridge backlog: the broker is unreachable"
                        );
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.notified() => {}
            }
            delay = (delay * 2).min(MAX_DELAY);
        }
        confirmed
    }

    /// Committed events not yet confirmed.
    fn backlog(&self, confirmed: u64) -> u64 {
        self.head
            .seq
            .load(Ordering::Acquire)
            .saturating_sub(confirmed)
    }

    /// Publishes until stopped (`Ok`) or the session fails.
    async fn publish(
        &self,
        connection: &Connection,
        channel: &Channel,
        confirmed: &mut u64,
    ) -> Result<(), Failure> {
        let mut last_prune = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            // Noticed while idle too, so the backlog of the next commits is not held up.
            if !connection.status().connected() {
                return Err(Failure::Lost);
            }
            if last_prune.elapsed() >= REPORT_EVERY {
                last_prune = Instant::now();
                self.prune(*confirmed)?;
            }
            let head = self.head.seq.load(Ordering::Acquire);
            if head <= *confirmed {
                // Wait for the next commit with events (or check again: a wake-up may have
                // come before this wait started).
                tokio::select! {
                    () = self.head.notify.notified() => {}
                    () = self.stop.notified() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let entries = self
                .store
                .outbox_after(*confirmed, self.config.max_unconfirmed)?;
            if entries.is_empty() {
                // Numbered but not readable yet (cannot happen: the head moves after the
                // write); do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let before = *confirmed;
            let mut acked = *confirmed;
            let started = Instant::now();
            // A stop does not wait for a window (what is unconfirmed goes out next time).
            let outcome = tokio::select! {
                outcome = publish_window(channel, &self.config, self.partition, &entries, &mut acked) => Some(outcome),
                () = self.stop.notified() => None,
            };
            // Everything acknowledged before a nack or a failure counts.
            if acked > before {
                self.metrics.bridge.confirmed.increment(acked - before);
                *confirmed = acked;
                self.store.set_bridge_cursor(*confirmed)?;
                self.stats
                    .confirmed
                    .fetch_add(acked - before, Ordering::AcqRel);
            }
            match outcome {
                None => return Ok(()),
                Some(Ok(())) => {
                    crate::metrics::seconds(
                        &self.metrics.bridge.publish_seconds,
                        started.elapsed(),
                    );
                }
                Some(Err(e)) => {
                    if matches!(e, Failure::Nacked(_)) {
                        self.metrics.bridge.nacked.increment(1);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Deletes confirmed events older than the retention time.
    fn prune(&self, confirmed: u64) -> Result<(), Failure> {
        let retention_ms = self.config.retention_secs.saturating_mul(1000);
        let cutoff = crate::shard::now_ms().0.saturating_sub(retention_ms);
        let mut last_old = None;
        let mut after = 0;
        'scan: loop {
            let entries = self.store.outbox_after(after, 1024)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = *last;
            for (seq, json) in &entries {
                let record: Record = serde_json::from_slice(json)
                    .map_err(|e| Failure::Corrupt(*seq, e.to_string()))?;
                if *seq > confirmed || record.ts.0 >= cutoff {
                    break 'scan;
                }
                last_old = Some(*seq);
            }
        }
        if let Some(seq) = last_old {
            self.store.prune_outbox(seq)?;
            tracing::debug!(up_to = seq, "pruned the outbox");
        }
        Ok(())
    }
}

/// Connects, enables confirms, declares the exchange; bounded by [`CONNECT_TIMEOUT`] (a
/// connection cut in the middle of the handshake must not hang the bridge).
async fn open(config: &BridgeConfig) -> Result<(Connection, Channel), Failure> {
    tokio::time::timeout(CONNECT_TIMEOUT, try_open(config))
        .await
        .unwrap_or(Err(Failure::TimedOut("connecting")))
}

async fn try_open(config: &BridgeConfig) -> Result<(Connection, Channel), Failure> {
    let properties = ConnectionProperties::default().with_connection_name("chatd-bridge".into());
    // Read at every connect: a renewed CA file is picked up without a restart.
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: read_tls_ca(config)
            .map_err(|e| Failure::Tls(format!("{}: {e}", config.tls_ca.display())))?,
    };
    let connection = Connection::connect_with_config(
        config.amqp_url.expose(),
        properties,
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

/// The extra CA certificates (PEM) of an `amqps` bridge, if configured.
fn read_tls_ca(config: &BridgeConfig) -> std::io::Result<Option<String>> {
    if config.tls_ca.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(&config.tls_ca)?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no PEM certificate in the file",
        ));
    }
    Ok(Some(pem))
}

/// Publishes a window of outbox entries and waits for the confirms in order, moving `acked`
/// to each confirmed seq; stops at the first nack or failure.
async fn publish_window(
    channel: &Channel,
    config: &BridgeConfig,
    partition: Option<usize>,
    entries: &[(u64, Vec<u8>)],
    acked: &mut u64,
) -> Result<(), Failure> {
    // One deadline for the window, sends included: a send on a connection that died under
    // it may never complete.
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let mut confirms = Vec::with_capacity(entries.len());
    for (seq, json) in entries {
        let record: Record =
            serde_json::from_slice(json).map_err(|e| Failure::Corrupt(*seq, e.to_string()))?;
        let binary;
        let body = match config.payload {
            Payload::Json => json.as_slice(),
            Payload::Bincode => {
                let event = record.to_binary().map_err(|e| Failure::Corrupt(*seq, e))?;
                binary = events::encode_event(&event);
                binary.as_slice()
            }
        };
        let publish = channel.basic_publish(
            config.exchange.as_str().into(),
            record.event.routing_key().as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties(&record, config.payload, partition),
        );
        let confirm = tokio::time::timeout_at(deadline, publish)
            .await
            .map_err(|_| Failure::TimedOut("publishing"))??;
        confirms.push((*seq, confirm));
    }
    for (seq, confirm) in confirms {
        let confirmation = tokio::time::timeout_at(deadline, confirm)
            .await
            .map_err(|_| Failure::TimedOut("the broker's confirms"))??;
        match confirmation {
            Confirmation::Nack(_) => return Err(Failure::Nacked(seq)),
            Confirmation::Ack(_) | Confirmation::NotRequested => *acked = seq,
        }
    }
    Ok(())
}

/// `chatd bridge replay`: republishes the outbox entries `from..=to` still retained (with
/// their original seq) and returns how many went out, each confirmed. Works beside a running
/// daemon, on a read-only view of its database.
///
/// # Errors
/// The broker or the outbox cannot be read or refuses an event.
pub fn replay(
    store: &Store,
    partition: Option<usize>,
    config: &BridgeConfig,
    from: u64,
    to: Option<u64>,
) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (connection, channel) = open(config).await.map_err(|e| e.to_string())?;
        let mut after = from.saturating_sub(1);
        let mut published = 0;
        loop {
            let mut entries = store
                .outbox_after(after, config.max_unconfirmed)
                .map_err(|e| e.to_string())?;
            entries.retain(|(seq, _)| to.is_none_or(|to| *seq <= to));
            if entries.is_empty() {
                break;
            }
            publish_window(&channel, config, partition, &entries, &mut after)
                .await
                .map_err(|e| e.to_string())?;
            published += entries.len() as u64;
        }
        let _ = connection.close(200, "replay done".into()).await;
        Ok(published)
    })
}

/// The AMQP properties of an event: persistent, its payload's content type, its seq as
/// `message_id` and header; with partitions, its partition as a header too, and
/// `message_id` `PARTITION:SEQ` (each partition numbers its own events).
fn properties(record: &Record, payload: Payload, partition: Option<usize>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-chatd-seq"),
        AMQPValue::LongLongInt(i64::try_from(record.seq).unwrap_or(i64::MAX)),
    );
    let message_id = match partition {
        Some(p) => {
            let p16 = u16::try_from(p).unwrap_or(u16::MAX);
            headers.insert(
                ShortString::from("x-chatd-partition"),
                AMQPValue::ShortUInt(p16),
            );
            format!("{p}:{}", record.seq)
        }
        None => record.seq.to_string(),
    };
    let kind = record
        .event
        .routing_key()
        .splitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(
            match payload {
                Payload::Json => "application/json",
                Payload::Bincode => events::BINCODE_CONTENT_TYPE,
            }
            .into(),
        )
        .with_message_id(message_id.as_str().into())
        .with_type(kind.as_str().into())
        .with_app_id("chatd".into())
        .with_timestamp(record.ts.0 / 1000)
        .with_headers(headers)
}
