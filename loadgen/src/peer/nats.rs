//! NATS core and JetStream clients (async-nats, the NATS project's own Rust client).
//!
//! One task per client: it publishes what the scheduler asks, reads its subscription, and
//! (JetStream) awaits the publish acks, at most [`IN_FLIGHT`] at once. Core publishes are
//! fire-and-forget. Members receive on core subscriptions in both modes: with JetStream the
//! stream stores what is published on the run's subjects and acknowledges it once stored
//! (`sync_interval: always` on the server: once fsync'd), while the subscribers get it as the
//! server routes it, not after the fsync. The client reconnects by itself (async-nats); a
//! lost connection is counted, and what it lost the checker finds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chat_protocol::{ConversationId, Request, Response, RoomId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{IN_FLIGHT, Sent, Settings};
use crate::client::{Command, Context, Shared};
use crate::metrics;
use crate::options::Target;

/// Messages a subscription holds before async-nats drops them as a slow consumer (counted as
/// lagged).
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// The stream's bound: the oldest messages go beyond it (a run stores far less).
const STREAM_MAX_BYTES: i64 = 4 << 30;

type AckFuture = Pin<Box<dyn Future<Output = (Sent, Result<(), String>)> + Send>>;

async fn connect(context: &Context, name: String) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .no_echo()
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => metrics::with(|m| m.disconnects += 1),
                async_nats::Event::SlowConsumer(_) => metrics::with(|m| m.lagged += 1),
                async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                    metrics::with(|m| m.refused += 1);
                }
                _ => {}
            }
        })
        .connect(format!("nats://{}", context.servers[0]))
        .await
        .map_err(|e| format!("connect to NATS at {}: {e}", context.servers[0]))
}

/// Creates the run's file stream over `PREFIX.>` (the server decides when a store is
/// durable: bench/ runs it with `sync_interval: always`).
pub(super) async fn create_stream(context: &Context, settings: &Settings) -> Result<(), String> {
    let client = connect(context, format!("chat-loadgen-{}", settings.prefix)).await?;
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: settings.prefix.clone(),
        subjects: vec![format!("{}.>", settings.prefix)],
        storage: jetstream::stream::StorageType::File,
        max_bytes: STREAM_MAX_BYTES,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create the JetStream stream {}: {e}", settings.prefix))?;
    client.drain().await.map_err(|e| e.to_string())
}

pub(super) async fn run(
    context: Arc<Context>,
    settings: Settings,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let started = Instant::now();
    let client = match connect(&context, format!("chat-loadgen-{}", shared.id)).await {
        Ok(client) => client,
        Err(e) => {
            metrics::with(|m| m.connect_failures += 1);
            let _ = ready.send(Err(e));
            return;
        }
    };
    metrics::connected(started);
    let _ = ready.send(Ok(()));
    let js = (settings.target == Target::Jetstream).then(|| jetstream::new(client.clone()));
    let mut stop = context.stop.clone();
    let mut subscription: Option<(RoomId, async_nats::Subscriber)> = None;
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut numbers = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            (room, message) = next_message(&mut subscription) => {
                super::delivered(&context, &shared, room, &message.payload);
            }
            Some((sent, result)) = acks.next(), if !acks.is_empty() => match result {
                Ok(()) => super::acked(&context, &shared, sent, true),
                Err(_) => super::refused(&shared),
            },
            command = commands.recv(), if acks.len() < IN_FLIGHT => match command {
                None => break,
                Some(Command::Send { conversation: ConversationId::Room(room), op }) => {
                    let sent = super::next_send(&mut numbers, &shared, room, op.0);
                    let subject = format!("{}.{}", settings.prefix, room.0);
                    let body = super::body(&sent, shared.id, context.size).into();
                    metrics::with(|m| m.sends += 1);
                    match &js {
                        None => match client.publish(subject, body).await {
                            Ok(()) => super::acked(&context, &shared, sent, false),
                            Err(_) => super::refused(&shared),
                        },
                        Some(js) => match js.publish(subject, body).await {
                            Ok(ack) => acks.push(Box::pin(async move {
                                (sent, ack.await.map(drop).map_err(|e| e.to_string()))
                            })),
                            Err(_) => super::refused(&shared),
                        },
                    }
                }
                Some(Command::Send { .. }) => super::refused(&shared),
                Some(Command::Request { request: Request::JoinRoom { room }, reply }) => {
                    let answer = if subscription.is_some() {
                        Err("a peer client is in one conversation".into())
                    } else {
                        subscribe(&client, &settings, room).await.map(|subscriber| {
                            subscription = Some((room, subscriber));
                            Response::Ok
                        })
                    };
                    let _ = reply.send(answer);
                }
                Some(Command::Request { reply, .. }) => {
                    let _ = reply.send(Err("not a request a NATS client makes".into()));
                }
            },
        }
    }
    drop(subscription);
    let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
}

/// Subscribes to `room`'s subject, and waits until the server has it: a request to a
/// subject nobody serves comes back (503, no responders) only after the server processed
/// everything this connection sent before it, the subscription included.
async fn subscribe(
    client: &async_nats::Client,
    settings: &Settings,
    room: RoomId,
) -> Result<async_nats::Subscriber, String> {
    let subscriber = client
        .subscribe(format!("{}.{}", settings.prefix, room.0))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let probe = format!("{}-probe.{}", settings.prefix, room.0);
    match client.request(probe, bytes::Bytes::new()).await {
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(subscriber),
        Err(e) => Err(format!("subscribe: the server did not answer: {e}")),
        Ok(_) => Err("subscribe: a probe subject has a responder".into()),
    }
}

/// The next message of the subscription (never, without one).
async fn next_message(
    subscription: &mut Option<(RoomId, async_nats::Subscriber)>,
) -> (RoomId, async_nats::Message) {
    if let Some((room, subscriber)) = subscription
        && let Some(message) = subscriber.next().await
    {
        return (*room, message);
    }
    // No subscription yet, or a closed one (the client is shutting down): nothing comes.
    std::future::pending().await
}
