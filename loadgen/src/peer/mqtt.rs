//! An MQTT 5 client (rumqttc, the rumqtt project's client), QoS 0 or 1.
//!
//! rumqttc splits a client in two: an `AsyncClient` that queues requests and an `EventLoop`
//! that must be polled to do anything. Each simulated client is therefore two tasks: the
//! command task publishes what the scheduler asks and subscribes at setup; the event task
//! polls the event loop, and matches what the broker says to the sends it concerns. rumqttc
//! writes publishes in the order they were queued and names each as it goes out
//! (`Outgoing::Publish(packet id)`), so the event task pairs them with the command task's
//! queue of sends in that order, and a PUBACK with the send of its packet id.
//!
//! Subscriptions are `no_local` (the sender does not get its own messages back). A lost
//! connection is counted (the step fails on it); rumqttc reconnects on the next poll, and the
//! event task subscribes again (a clean start keeps nothing); what was lost meanwhile the
//! checker finds. The publishes rumqttc writes again after a reconnect are not paired with
//! their sends again: past a lost connection, ack latencies are not to be trusted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_protocol::{ConversationId, Request, Response, RoomId};
use parking_lot::Mutex;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};

use super::{IN_FLIGHT, Sent, Settings};
use crate::client::{Command, Context, Shared};
use crate::metrics;

/// What the two tasks of a client share.
#[derive(Default)]
struct State {
    /// Publishes queued to rumqttc and not yet written, in order.
    queued: VecDeque<Sent>,
    /// QoS 1 publishes written and not yet acknowledged, by packet id.
    unacked: HashMap<u16, Sent>,
    /// The subscription asked for, and who waits for its SUBACK.
    subscribing: Option<(RoomId, oneshot::Sender<Result<Response, String>>)>,
    /// The room subscribed to.
    room: Option<RoomId>,
}

fn filter(settings: &Settings, room: RoomId, qos: QoS) -> Filter {
    let mut filter = Filter::new(format!("{}/{}", settings.prefix, room.0), qos);
    filter.nolocal = true;
    filter
}

pub(super) async fn run(
    context: Arc<Context>,
    settings: Settings,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let qos = if settings.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut options = MqttOptions::new(
        format!("{}-{}", settings.prefix, shared.id),
        context.servers[0].ip().to_string(),
        context.servers[0].port(),
    );
    options.set_keep_alive(Duration::from_secs(60));
    options.set_clean_start(true);
    // rumqttc leaves Nagle's algorithm on: with the peer's delayed ACKs, a small publish can
    // wait 40 ms. Every other client here (quinn, async-nats) writes at once.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    // The request queue bounds what waits for the broker: a full one holds the command task,
    // and the scheduler's queue fills behind it.
    let (client, mut events) = AsyncClient::new(options, IN_FLIGHT);
    let started = Instant::now();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => {
                metrics::with(|m| m.connect_failures += 1);
                let _ = ready.send(Err(format!(
                    "connect to MQTT at {}: {e}",
                    context.servers[0]
                )));
                return;
            }
        }
    }
    metrics::connected(started);
    let _ = ready.send(Ok(()));
    let state = Arc::new(Mutex::new(State::default()));
    let event_task = tokio::spawn(event_loop(
        Arc::clone(&context),
        settings.clone(),
        Arc::clone(&shared),
        events,
        client.clone(),
        Arc::clone(&state),
        qos,
    ));
    let mut stop = context.stop.clone();
    let mut numbers = HashMap::new();
    loop {
        let command = tokio::select! {
            _ = stop.changed() => break,
            command = commands.recv() => command,
        };
        match command {
            None => break,
            Some(Command::Send {
                conversation: ConversationId::Room(room),
                op,
            }) => {
                let sent = super::next_send(&mut numbers, &shared, room, op.0);
                state.lock().queued.push_back(sent);
                metrics::with(|m| m.sends += 1);
                let topic = format!("{}/{}", settings.prefix, room.0);
                let body = super::body(&sent, shared.id, context.size);
                if client.publish(topic, qos, false, body).await.is_err() {
                    // Never queued: the event loop is gone; this send is the last queued.
                    state.lock().queued.pop_back();
                    super::refused(&shared);
                }
            }
            Some(Command::Send { .. }) => super::refused(&shared),
            Some(Command::Request {
                request: Request::JoinRoom { room },
                reply,
            }) => {
                {
                    let mut state = state.lock();
                    if state.room.is_some() || state.subscribing.is_some() {
                        let _ = reply.send(Err("a peer client is in one conversation".into()));
                        continue;
                    }
                    state.subscribing = Some((room, reply));
                }
                let _ = client.subscribe_many([filter(&settings, room, qos)]).await;
            }
            Some(Command::Request { reply, .. }) => {
                let _ = reply.send(Err("not a request an MQTT client makes".into()));
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), event_task).await;
}

#[allow(clippy::too_many_arguments)]
async fn event_loop(
    context: Arc<Context>,
    settings: Settings,
    shared: Arc<Shared>,
    mut events: EventLoop,
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    qos: QoS,
) {
    let mut stop: watch::Receiver<bool> = context.stop.clone();
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let Some(sent) = state.lock().queued.pop_front() else {
                    continue;
                };
                if qos == QoS::AtMostOnce {
                    super::acked(&context, &shared, sent, false);
                } else {
                    state.lock().unacked.insert(pkid, sent);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let Some(sent) = state.lock().unacked.remove(&ack.pkid) else {
                    continue;
                };
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                        super::acked(&context, &shared, sent, true);
                    }
                    _ => super::refused(&shared),
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let room = state.lock().room;
                if let Some(room) = room {
                    super::delivered(&context, &shared, room, &publish.payload);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let mut state = state.lock();
                let granted = suback
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if let Some((room, reply)) = state.subscribing.take() {
                    if granted {
                        state.room = Some(room);
                        let _ = reply.send(Ok(Response::Ok));
                    } else {
                        let _ = reply.send(Err(format!("subscribe refused: {suback:?}")));
                    }
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                // A reconnect: a clean start kept no subscription.
                let room = state.lock().room;
                if let Some(room) = room
                    && !connack.session_present
                {
                    let _ = client.try_subscribe_many([filter(&settings, room, qos)]);
                }
            }
            Ok(_) => {}
            Err(_) => {
                metrics::with(|m| m.disconnects += 1);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
