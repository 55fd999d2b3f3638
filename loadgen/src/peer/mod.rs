//! The brokers chatd is compared with, driven like chatd: NATS core, NATS JetStream and an
//! MQTT 5 broker (Mosquitto), through their kept Rust clients (async-nats, rumqttc).
//!
//! A peer client takes the same commands as a chatd client ([`Command`]): the scheduler's
//! sends, and `JoinRoom` at setup, which subscribes it to its conversation's subject (NATS,
//! `PREFIX.ROOM`) or topic (MQTT, `PREFIX/ROOM`). What it measures goes into the same
//! thread-local metrics, with the same meaning:
//!
//! - **latency** from the scheduled send time, carried in the message;
//! - **ack**: JetStream's publish ack (the message is stored) and MQTT QoS 1's PUBACK are
//!   acknowledgements, timed like chatd's; NATS core and MQTT QoS 0 have none, so a send
//!   counts as acknowledged once the client library took it, and no ack latency is recorded;
//! - **correctness**: the brokers assign no sequence numbers, so each sender numbers its own
//!   messages per conversation, and the checker sees one stream per (conversation, sender)
//!   ([`stream`]): it proves each member got every acknowledged message of every fellow
//!   sender exactly once and in the sender's order, which is what these brokers promise (no
//!   order across senders). Senders do not receive their own messages (NATS `no_echo`, MQTT
//!   5 `no_local`), as chatd does not push a send back to its sender's connection.
//!
//! Churn (disconnect and resume) is chatd's alone: the peers keep nothing to resume from.

mod mqtt;
mod nats;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chat_protocol::{ConversationId, RoomId, Seq};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Command, Context, Shared};
use crate::metrics::{self, Record, record_latency};
use crate::options::Target;

/// Bytes before the filler of a peer message: scheduled time, sender, sender's number.
pub(crate) const HEADER: usize = 8 + 4 + 8;

/// Sends awaiting a broker's acknowledgement, per client (JetStream publish acks; MQTT QoS 1
/// is bounded by the broker's receive maximum as well). Beyond it a client stops taking
/// commands, and its queue fills as a chatd client's does at its in-flight limit.
pub(crate) const IN_FLIGHT: usize = 256;

/// Which peer, and the names this run uses on it.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// NATS, JetStream or MQTT.
    pub target: Target,
    /// MQTT quality of service (0 or 1).
    pub qos: u8,
    /// The run's prefix: subjects are `PREFIX.ROOM`, topics `PREFIX/ROOM`, the JetStream
    /// stream `PREFIX`.
    pub prefix: String,
}

/// The checker's stream of `sender`'s messages in `room`.
pub(crate) fn stream(room: RoomId, sender: u32) -> ConversationId {
    ConversationId::Room(RoomId(room.0 << 32 | u64::from(sender)))
}

/// A send on its way: what its acknowledgement must record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    /// Scheduled time (run clock, ns).
    pub op: u64,
    /// The checker's stream.
    pub stream: ConversationId,
    /// The sender's number for it in that stream.
    pub seq: u64,
}

/// The body of a peer message: its scheduled time, sender and sender's number, then filler
/// up to `size` (at least [`HEADER`]).
pub(crate) fn body(sent: &Sent, sender: u32, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size.max(HEADER));
    body.extend_from_slice(&sent.op.to_le_bytes());
    body.extend_from_slice(&sender.to_le_bytes());
    body.extend_from_slice(&sent.seq.to_le_bytes());
    body.resize(size.max(HEADER), b'.');
    body
}

/// A received body's scheduled time, sender and number; `None` when it is not a body of
/// this run's size (corrupted on the way).
pub(crate) fn parse(body: &[u8], size: usize) -> Option<(u64, u32, u64)> {
    if body.len() != size.max(HEADER) || body[HEADER..].iter().any(|b| *b != b'.') {
        return None;
    }
    let op = u64::from_le_bytes(body[..8].try_into().ok()?);
    let sender = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(body[12..HEADER].try_into().ok()?);
    Some((op, sender, seq))
}

/// The next number of `shared`'s sends in `room` (from 1), and the send to record.
pub(crate) fn next_send(
    numbers: &mut std::collections::HashMap<RoomId, u64>,
    shared: &Shared,
    room: RoomId,
    op: u64,
) -> Sent {
    let seq = numbers.entry(room).or_insert(0);
    *seq += 1;
    Sent {
        op,
        stream: stream(room, shared.id),
        seq: *seq,
    }
}

/// The broker took `sent` (`confirmed`: it acknowledged it; otherwise the client library
/// took it and there is no ack to time).
pub(crate) fn acked(context: &Context, shared: &Shared, sent: Sent, confirmed: bool) {
    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    let now = context.clock.now();
    metrics::with(|m| {
        m.acks += 1;
        if confirmed && context.clock.measured(sent.op) {
            record_latency(&mut m.ack, sent.op, now);
        }
        m.records.push(Record::Acked {
            sender: shared.id,
            conversation: sent.stream,
            seq: Seq(sent.seq),
            // A broker chains nothing.
            chain: None,
        });
    });
}

/// The broker refused `sent`, or the client could not publish it.
pub(crate) fn refused(shared: &Shared) {
    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    metrics::with(|m| m.refused += 1);
}

/// A message arrived in `room`.
pub(crate) fn delivered(context: &Context, shared: &Shared, room: RoomId, body: &[u8]) {
    let now = context.clock.now();
    let parsed = parse(body, context.size);
    metrics::with(|m| {
        let Some((op, sender, seq)) = parsed else {
            m.corrupted += 1;
            return;
        };
        if sender == shared.id {
            m.echoed += 1;
            return;
        }
        m.deliveries += 1;
        if context.clock.measured(op) {
            record_latency(&mut m.delivery, op, now);
        }
        m.records.push(Record::Delivered(
            shared.id,
            stream(room, sender),
            Seq(seq),
            None,
        ));
    });
}

/// Runs client `shared.id` against the peer until the run stops; `ready` as for chatd.
pub(crate) async fn run(
    context: Arc<Context>,
    settings: Settings,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    match settings.target {
        Target::Mqtt => mqtt::run(context, settings, shared, commands, ready).await,
        _ => nats::run(context, settings, shared, commands, ready).await,
    }
}

/// Creates what the run needs on the broker before clients publish: JetStream's stream.
///
/// # Errors
/// The broker cannot be reached or refuses.
pub(crate) async fn prepare(context: &Context, settings: &Settings) -> Result<(), String> {
    if settings.target == Target::Jetstream {
        nats::create_stream(context, settings).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_carries_its_schedule_sender_and_number() {
        let sent = Sent {
            op: 0x0102_0304_0506_0708,
            stream: stream(RoomId(3), 7),
            seq: 42,
        };
        let body = body(&sent, 7, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(parse(&body, 100), Some((0x0102_0304_0506_0708, 7, 42)));
        // Another size, a truncated body or changed filler is corruption.
        assert_eq!(parse(&body, 99), None);
        assert_eq!(parse(&body[..50], 100), None);
        let mut changed = body.clone();
        changed[60] = b'x';
        assert_eq!(parse(&changed, 100), None);
    }

    #[test]
    fn each_sender_of_a_room_is_its_own_stream() {
        assert_ne!(stream(RoomId(1), 2), stream(RoomId(1), 3));
        assert_ne!(stream(RoomId(1), 2), stream(RoomId(2), 2));
        assert_eq!(
            stream(RoomId(1), 2),
            ConversationId::Room(RoomId((1 << 32) | 2))
        );
    }
}
