//! The byte-level test vectors of docs/PROTOCOL.md are exactly what this crate encodes and
//! decodes. Every vector below must appear in the document under its name, byte for byte,
//! and the document must hold no vector this file does not know.
//!
//! To print the vectors after a deliberate change of the wire format (a new protocol
//! version): `cargo test -p chat-protocol --test protocol -- --ignored --nocapture print_vectors`.

use chat_protocol::*;

/// One vector: its name in PROTOCOL.md and the frame it encodes.
enum Vector {
    Client(&'static str, ClientFrame),
    Server(&'static str, ServerFrame),
}

const DEVICE: DeviceId = DeviceId(0x0102_0304_0506_0708);
const TS: Timestamp = Timestamp(1_795_000_000_000);
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
const ROOM: RoomId = RoomId(5);
/// A link in vectors that are about encoding, not about the chain (`history-chained` is).
const LINK: chain::Hash = [0xc4; 32];

/// An entry's place in the chain, as the vectors about encoding show it.
fn placed() -> Chain {
    Chain {
        link: LINK,
        kept: None,
    }
}

/// Entries 1..=3 of room 5 as appended, each with its real link: what `history-chained`
/// holds.
fn chained_entries() -> Vec<Entry> {
    let room = ConversationId::Room(ROOM);
    let mut entries = vec![
        Entry::Membership(MembershipEvent {
            conversation: room,
            seq: Seq(1),
            ts: TS,
            actor: ALICE,
            subject: ALICE,
            change: MembershipChange::Created {
                name: "general".into(),
                invite_only: false,
            },
            chain: Chain::default(),
        }),
        Entry::Membership(MembershipEvent {
            conversation: room,
            seq: Seq(2),
            ts: TS,
            actor: BOB,
            subject: BOB,
            change: MembershipChange::Joined,
            chain: Chain::default(),
        }),
        Entry::Message(Message {
            seq: Seq(3),
            reply_to: None,
            ..hello_message()
        }),
    ];
    let mut tip = chain::genesis(room);
    for entry in &mut entries {
        tip = chain::link(&tip, &chain::digest(entry));
        entry.chain_mut().link = tip;
    }
    entries
}

fn request(id: u32, request: Request) -> ClientFrame {
    ClientFrame::Request {
        id: RequestId(id),
        request,
    }
}

fn response(id: u32, response: Response) -> ServerFrame {
    ServerFrame::Response {
        id: RequestId(id),
        response,
    }
}

fn hello_message() -> Message {
    Message {
        conversation: ConversationId::Room(ROOM),
        seq: Seq(43),
        ts: TS,
        sender: ALICE,
        op: OpId(77),
        content_type: ContentType::TEXT,
        reply_to: Some(Seq(42)),
        body: b"hello".to_vec(),
        edited: None,
        deleted: None,
        mentions: Vec::new(),
        reactions: Vec::new(),
        chain: placed(),
    }
}

/// The edit of `hello_message` (event-edit).
fn hello_edit() -> Edit {
    Edit {
        conversation: ConversationId::Room(ROOM),
        seq: Seq(45),
        ts: TS,
        sender: ALICE,
        op: OpId(78),
        target: Seq(43),
        content_type: ContentType::TEXT,
        body: b"hello!".to_vec(),
        chain: placed(),
    }
}

fn vectors() -> Vec<Vector> {
    use Vector::{Client, Server};
    let dm = ConversationId::direct(BOB, ALICE);
    vec![
        Client(
            "hello-anonymous",
            ClientFrame::Hello(Hello {
                versions: SUPPORTED_VERSIONS,
                client: "chat/0.1".into(),
                device: DEVICE,
                auth: None,
            }),
        ),
        Client(
            "hello-token-resume",
            ClientFrame::Hello(Hello {
                versions: VersionRange { min: 2, max: 2 },
                client: "sdk".into(),
                device: DeviceId(9),
                auth: Some(Auth {
                    token: "tok".into(),
                    resume: Some(Resume {
                        cursors: vec![
                            Cursor {
                                conversation: ConversationId::Room(ROOM),
                                seq: Seq(42),
                            },
                            Cursor {
                                conversation: dm,
                                seq: Seq(300),
                            },
                        ],
                    }),
                }),
            }),
        ),
        Client(
            "register",
            request(
                1,
                Request::Register {
                    name: "alice".into(),
                    password: "hunter22".into(),
                },
            ),
        ),
        Client("ping", request(7, Request::Ping)),
        Client(
            "send-text",
            request(
                2,
                Request::Send(SendMessage {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(77),
                    content_type: ContentType::TEXT,
                    reply_to: Some(Seq(42)),
                    body: b"hello".to_vec(),
                    mentions: Vec::new(),
                }),
            ),
        ),
        Client(
            "history-before",
            request(
                3,
                Request::History(HistoryQuery {
                    conversation: dm,
                    from: HistoryFrom::Before(Seq(100)),
                    limit: 50,
                    order: Order::NewestFirst,
                    thread: None,
                }),
            ),
        ),
        Client(
            "mark-read",
            request(
                4,
                Request::Mark {
                    conversation: ConversationId::Room(ROOM),
                    marker: Marker::Read,
                    seq: Seq(43),
                },
            ),
        ),
        Client(
            "typing-datagram",
            ClientFrame::Typing(TypingUpdate {
                conversation: ConversationId::Notes(ALICE),
                active: true,
            }),
        ),
        Server(
            "hello-ok",
            ServerFrame::HelloOk(HelloOk {
                version: 2,
                server: "chatd/0.1.0".into(),
                session: Some(Session {
                    user: ALICE,
                    name: "alice".into(),
                    device: DeviceId(9),
                    expires_at: Timestamp(1_795_086_400_000),
                }),
                limits: Limits {
                    max_frame: 65_536,
                    max_body: 16_384,
                    max_page: 100,
                    send_rate: 20,
                    send_burst: 40,
                    max_in_flight: 64,
                    max_rooms_per_user: 1_000,
                    max_room_members: 10_000,
                    max_resume_gap: 1_000,
                    idle_timeout_ms: 60_000,
                    auth_timeout_ms: 10_000,
                    typing_ttl_ms: 6_000,
                },
                server_time: TS,
            }),
        ),
        Server(
            "sent",
            response(
                2,
                Response::Sent(SendAck {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(77),
                    seq: Seq(43),
                    ts: TS,
                    duplicate: false,
                    chain: Some(Appended {
                        link: LINK,
                        digest: chain::message_digest(&hello_message()),
                    }),
                }),
            ),
        ),
        Server(
            "error-rate-limited",
            ServerFrame::Error {
                id: Some(RequestId(2)),
                error: ErrorBody {
                    code: ErrorCode::RATE_LIMITED,
                    reason: "slow down".into(),
                    retry_after_ms: Some(250),
                },
            },
        ),
        Server(
            "event-message",
            ServerFrame::Event(Event::Message(hello_message())),
        ),
        Server(
            "event-joined",
            ServerFrame::Event(Event::Membership(MembershipEvent {
                conversation: ConversationId::Room(ROOM),
                seq: Seq(44),
                ts: TS,
                actor: BOB,
                subject: BOB,
                change: MembershipChange::Joined,
                chain: placed(),
            })),
        ),
        Server(
            "event-receipt",
            ServerFrame::Event(Event::Receipt(Receipt {
                conversation: dm,
                user: BOB,
                marker: Marker::Delivered,
                seq: Seq(300),
            })),
        ),
        Server(
            "history-page",
            response(
                3,
                Response::History(HistoryPage {
                    conversation: ConversationId::Room(ROOM),
                    entries: vec![
                        Entry::Membership(MembershipEvent {
                            conversation: ConversationId::Room(ROOM),
                            seq: Seq(1),
                            ts: TS,
                            actor: ALICE,
                            subject: ALICE,
                            change: MembershipChange::Created {
                                name: "general".into(),
                                invite_only: false,
                            },
                            chain: placed(),
                        }),
                        Entry::Message(hello_message()),
                    ],
                    head: Seq(44),
                    more: false,
                    prior: Some(LINK),
                }),
            ),
        ),
        Server(
            "event-gap",
            ServerFrame::Event(Event::Gap(Gap {
                conversation: dm,
                from: Seq(301),
                to: Seq(5_000),
            })),
        ),
        Server(
            "event-caught-up",
            ServerFrame::Event(Event::CaughtUp { replayed: 2 }),
        ),
        Server("event-lagged", ServerFrame::Event(Event::Lagged)),
        Server(
            "goodbye",
            ServerFrame::Goodbye(Goodbye {
                code: GoodbyeCode::SHUTTING_DOWN,
                reason: "restart".into(),
            }),
        ),
        Client(
            "sync",
            request(
                6,
                Request::Sync(Resume {
                    cursors: vec![Cursor {
                        conversation: dm,
                        seq: Seq(300),
                    }],
                }),
            ),
        ),
        Client(
            "presence-follow",
            request(
                7,
                Request::Presence {
                    subscribe: vec![BOB],
                    unsubscribe: vec![],
                },
            ),
        ),
        Server(
            "presence-state",
            response(
                7,
                Response::Presence(vec![PresenceInfo {
                    user: BOB,
                    status: PresenceStatus::Offline,
                    last_seen: Some(TS),
                }]),
            ),
        ),
        Server(
            "event-presence",
            ServerFrame::Event(Event::Presence(PresenceInfo {
                user: BOB,
                status: PresenceStatus::Online,
                last_seen: None,
            })),
        ),
        Server(
            "event-typing",
            ServerFrame::Event(Event::Typing(TypingEvent {
                conversation: dm,
                user: BOB,
                active: true,
                expires_in_ms: limits::TYPING_TTL_MS,
            })),
        ),
        Client(
            "edit",
            request(
                9,
                Request::Edit(EditMessage {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(78),
                    target: Seq(43),
                    content_type: ContentType::TEXT,
                    body: b"hello!".to_vec(),
                }),
            ),
        ),
        Client(
            "delete",
            request(
                10,
                Request::Delete(DeleteMessage {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(79),
                    target: Seq(43),
                }),
            ),
        ),
        Server("event-edit", ServerFrame::Event(Event::Edit(hello_edit()))),
        Server(
            "event-deletion",
            ServerFrame::Event(Event::Deletion(Deletion {
                conversation: ConversationId::Room(ROOM),
                seq: Seq(46),
                ts: TS,
                actor: BOB,
                op: OpId(79),
                target: Seq(43),
                erased: vec![Seq(45)],
                chain: placed(),
            })),
        ),
        Server(
            "history-edited",
            response(
                11,
                Response::History(HistoryPage {
                    conversation: ConversationId::Room(ROOM),
                    entries: vec![Entry::Message(Message {
                        edited: Some(Edited {
                            versions: vec![Seq(45)],
                            ts: TS,
                            content_type: ContentType::TEXT,
                            body: b"hello!".to_vec(),
                        }),
                        ..hello_message()
                    })],
                    head: Seq(45),
                    more: true,
                    prior: Some(LINK),
                }),
            ),
        ),
        Server(
            "history-deleted",
            response(
                12,
                Response::History(HistoryPage {
                    conversation: ConversationId::Room(ROOM),
                    entries: vec![
                        Entry::Message(Message {
                            body: Vec::new(),
                            deleted: Some(Deleted {
                                seq: Seq(46),
                                ts: TS,
                                by: BOB,
                            }),
                            chain: Chain {
                                link: LINK,
                                kept: Some(chain::message_digest(&hello_message())),
                            },
                            ..hello_message()
                        }),
                        Entry::Erased(Erased {
                            conversation: ConversationId::Room(ROOM),
                            seq: Seq(45),
                            target: Seq(43),
                            deletion: Seq(46),
                            chain: Chain {
                                link: LINK,
                                kept: Some(chain::digest(&Entry::Edit(hello_edit()))),
                            },
                        }),
                    ],
                    head: Seq(46),
                    more: true,
                    prior: Some(LINK),
                }),
            ),
        ),
        // Edge cases: the longest client name, and one user more than a presence change may
        // name (it decodes; the daemon answers INVALID_REQUEST).
        Client(
            "hello-client-64",
            ClientFrame::Hello(Hello {
                versions: SUPPORTED_VERSIONS,
                client: "c".repeat(limits::MAX_CLIENT_NAME),
                device: DEVICE,
                auth: None,
            }),
        ),
        Client(
            "presence-257",
            request(
                8,
                Request::Presence {
                    subscribe: vec![BOB; limits::MAX_USERS_PER_REQUEST + 1],
                    unsubscribe: Vec::new(),
                },
            ),
        ),
        // Reactions, mentions and threads.
        Client(
            "react",
            request(
                13,
                Request::React(ReactMessage {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(80),
                    target: Seq(43),
                    reaction: "👍".into(),
                    remove: false,
                }),
            ),
        ),
        Server(
            "event-reaction",
            ServerFrame::Event(Event::Reaction(Reaction {
                conversation: ConversationId::Room(ROOM),
                seq: Seq(47),
                ts: TS,
                sender: BOB,
                op: OpId(80),
                target: Seq(43),
                reaction: "👍".into(),
                removed: false,
                chain: placed(),
            })),
        ),
        Client(
            "send-mention",
            request(
                14,
                Request::Send(SendMessage {
                    conversation: ConversationId::Room(ROOM),
                    op: OpId(81),
                    content_type: ContentType::TEXT,
                    reply_to: Some(Seq(43)),
                    body: b"@bob look".to_vec(),
                    mentions: vec![BOB],
                }),
            ),
        ),
        Client(
            "history-thread",
            request(
                15,
                Request::History(HistoryQuery {
                    conversation: ConversationId::Room(ROOM),
                    from: HistoryFrom::After(Seq(0)),
                    limit: 20,
                    order: Order::OldestFirst,
                    thread: Some(Seq(43)),
                }),
            ),
        ),
        Server(
            "history-reacted",
            response(
                16,
                Response::History(HistoryPage {
                    conversation: ConversationId::Room(ROOM),
                    entries: vec![Entry::Message(Message {
                        reactions: vec![Reactions {
                            reaction: "👍".into(),
                            users: vec![BOB, ALICE],
                        }],
                        ..hello_message()
                    })],
                    head: Seq(48),
                    more: true,
                    prior: Some(LINK),
                }),
            ),
        ),
        // The hash chain: a page whose links are real.
        Server(
            "history-chained",
            response(
                17,
                Response::History(HistoryPage {
                    conversation: ConversationId::Room(ROOM),
                    entries: chained_entries(),
                    head: Seq(3),
                    more: false,
                    prior: Some(chain::genesis(ConversationId::Room(ROOM))),
                }),
            ),
        ),
    ]
}

#[test]
fn the_chained_vector_follows_its_chain() {
    let room = ConversationId::Room(ROOM);
    let mut verifier = chain::Verifier::new(room);
    for entry in chained_entries() {
        assert_eq!(verifier.check_entry(&entry), Ok(()));
    }
    // And what PROTOCOL.md says of it.
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let (seq, head) = verifier.tip();
    assert_eq!(seq, 3);
    let stated = [
        ("link(0)", hex(&chain::genesis(room))),
        ("link(3)", hex(&head)),
    ];
    for (what, value) in stated {
        assert!(
            doc.contains(&format!("`{what}` = `{value}`")),
            "PROTOCOL.md 13.38 gives {what} as {value}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Vector {
    fn name(&self) -> &'static str {
        match self {
            Vector::Client(name, _) | Vector::Server(name, _) => name,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Vector::Client(_, f) => encode_frame_to_vec(f).unwrap(),
            Vector::Server(_, f) => encode_frame_to_vec(f).unwrap(),
        }
    }

    /// Decodes `bytes` as this vector's direction and compares with its frame.
    fn decodes_from(&self, bytes: &[u8]) -> bool {
        match self {
            Vector::Client(_, f) => decode_datagram::<ClientFrame>(bytes).as_ref() == Ok(f),
            Vector::Server(_, f) => decode_datagram::<ServerFrame>(bytes).as_ref() == Ok(f),
        }
    }

    fn debug(&self) -> String {
        match self {
            Vector::Client(_, f) => format!("{f:?}"),
            Vector::Server(_, f) => format!("{f:?}"),
        }
    }
}

/// The vectors in PROTOCOL.md: every fenced block opened with "```hex vector=NAME".
fn document_vectors() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```hex vector=") else {
            continue;
        };
        let hex: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .flat_map(|l| l.split('#').next().unwrap_or("").chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = hex::decode(&hex).unwrap_or_else(|e| panic!("vector {name}: bad hex: {e}"));
        found.push((name.to_owned(), bytes));
    }
    found
}

/// Space-separated hex, 16 bytes a line.
fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn protocol_md_vectors_match_the_crate() {
    let document = document_vectors();
    let known = vectors();
    // The document parser is what could silently find fewer: every vector of the crate is in
    // PROTOCOL.md, and the document has no vector the crate lacks.
    assert_eq!(document.len(), known.len());
    for vector in &known {
        let in_doc: Vec<_> = document
            .iter()
            .filter(|(name, _)| name == vector.name())
            .collect();
        assert_eq!(
            in_doc.len(),
            1,
            "vector {} must appear exactly once in PROTOCOL.md",
            vector.name()
        );
        let doc_bytes = &in_doc[0].1;
        let encoded = vector.encode();
        assert_eq!(
            hex_lines(doc_bytes),
            hex_lines(&encoded),
            "vector {}: PROTOCOL.md differs from what the crate encodes",
            vector.name()
        );
        assert!(
            vector.decodes_from(doc_bytes),
            "vector {}: does not decode to {}",
            vector.name(),
            vector.debug()
        );
    }
    for (name, _) in &document {
        assert!(
            known.iter().any(|v| v.name() == name),
            "PROTOCOL.md has unknown vector {name}"
        );
    }
}

#[test]
fn protocol_md_lists_every_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let errors = codes::ERROR_CODES
        .iter()
        .map(|(code, name, _)| (code.0, *name));
    let goodbyes = codes::GOODBYE_CODES
        .iter()
        .map(|(code, name, _)| (code.0, *name));
    for (code, name) in errors.chain(goodbyes) {
        let row = format!("| {code} | `{name}` |");
        assert!(
            doc.contains(&row),
            "PROTOCOL.md lacks the row starting {row}"
        );
    }
}

#[test]
#[ignore = "prints the vectors for PROTOCOL.md; run by hand after a deliberate wire change"]
fn print_vectors() {
    for vector in vectors() {
        println!(
            "{}\n{}\n```hex vector={}\n{}\n```\n",
            vector.name(),
            vector.debug(),
            vector.name(),
            hex_lines(&vector.encode())
        );
    }
}
