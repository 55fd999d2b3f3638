//! # chat-bench — shared fixtures for chatd's benchmarks
//!
//! Builds the representative frames the benchmarks measure, so every benchmark (and anyone
//! reproducing a number from `bench/RESULTS.md`) uses the same inputs. The benchmarks
//! themselves are under `benches/`, the scenario scripts beside this crate (`bench/*.sh`),
//! and the binaries in `src/bin/`: `relay` (the QUIC floor), `bridge` (AMQP bridge
//! throughput), `nonreader` (memory that clients which never read can pin), `flood`
//! (handshake and connection floods) and `faults` (the fault suite).

#![forbid(unsafe_code)]

pub mod live;

/// The command line of a benchmark binary as `--name value` pairs.
///
/// # Panics
/// When a name has no value.
#[must_use]
pub fn flags() -> Vec<(String, String)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.chunks(2)
        .map(|pair| match pair {
            [name, value] => (name.clone(), value.clone()),
            [name] => panic!("{name} needs a value"),
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

use chat_protocol::{
    ContentType, ConversationId, Entry, Event, HistoryPage, Message, OpId, RoomId, Seq,
    ServerFrame, Timestamp, UserId,
};

/// A message as chat apps send it: a room message with a 100-byte UTF-8 body.
#[must_use]
pub fn chat_message(seq: u64) -> Message {
    let text = "Are we still on for the release review at 3pm? I moved it to the big room, bring the numbers.";
    let mut body = text.as_bytes().to_vec();
    body.resize(100, b'.');
    Message {
        conversation: ConversationId::Room(RoomId(1_042)),
        seq: Seq(seq),
        ts: Timestamp(1_795_000_000_000 + seq),
        sender: UserId(12_345),
        op: OpId(0x5eed_0000_0000_0000 | seq),
        content_type: ContentType::TEXT,
        reply_to: None,
        body,
        edited: None,
        deleted: None,
        mentions: Vec::new(),
        reactions: Vec::new(),
        chain: chat_protocol::Chain::default(),
    }
}

/// The frame that fans a message out: `ServerFrame::Event(Event::Message(..))`.
#[must_use]
pub fn message_event(seq: u64) -> ServerFrame {
    ServerFrame::Event(Event::Message(chat_message(seq)))
}

/// A history page of `n` consecutive messages, as a `Response` frame.
#[must_use]
pub fn history_page(n: u64) -> ServerFrame {
    ServerFrame::Response {
        id: chat_protocol::RequestId(9),
        response: chat_protocol::Response::History(HistoryPage {
            conversation: ConversationId::Room(RoomId(1_042)),
            entries: (1..=n)
                .map(|seq| Entry::Message(chat_message(seq)))
                .collect(),
            head: Seq(n),
            more: true,
            prior: Some(chat_protocol::chain::genesis(ConversationId::Room(RoomId(
                1_042,
            )))),
        }),
    }
}
