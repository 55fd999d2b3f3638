//! The authorization matrix of docs/PROTOCOL.md section 12, walked against a real daemon:
//! every request, sent by a caller in each state towards one room, gets the answer the
//! table gives. Each row has a room of its own, and every caller acts on a target of its own,
//! so what one cell changes cannot change another.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

/// Who sends the request, relative to the row's room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    NonMember,
    Invited,
    Member,
    Admin,
    Owner,
    Banned,
    Kicked,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::NonMember,
    Caller::Invited,
    Caller::Member,
    Caller::Admin,
    Caller::Owner,
    Caller::Banned,
    Caller::Kicked,
];

/// What a cell expects: success (any response) or an error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Err(ErrorCode),
}

use Expect::{Err as E, Ok as OK};

/// The state a row's per-caller targets are put in before the row is walked.
#[derive(Clone, Copy)]
enum Target {
    /// An account that is not in the room.
    Outsider,
    /// A plain member.
    Member,
    /// A plain member with a message of theirs in the room (`Fresh::message`).
    MemberMessage,
    /// A member the owner banned.
    BannedMember,
    /// An admin the owner banned.
    BannedAdmin,
    /// An id no account has.
    Nobody,
}

/// A name nobody has used yet, and a token for it; the target's message, if it has one.
struct Fresh {
    name: String,
    token: String,
    message: Seq,
}

struct Row {
    name: &'static str,
    target: Target,
    request: fn(RoomId, UserId, &Fresh) -> Request,
    /// In the order of `CALLERS`.
    expect: [Expect; 8],
}

const NA: Expect = E(ErrorCode::NOT_AUTHENTICATED);
const NM: Expect = E(ErrorCode::NOT_MEMBER);
const FB: Expect = E(ErrorCode::FORBIDDEN);
const UU: Expect = E(ErrorCode::UNKNOWN_USER);
const AA: Expect = E(ErrorCode::ALREADY_AUTHENTICATED);
const AM: Expect = E(ErrorCode::ALREADY_MEMBER);
const NU: Expect = E(ErrorCode::NOT_AUTHOR);

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "Ping",
            target: Target::Outsider,
            request: |_, _, _| Request::Ping,
            expect: [OK; 8],
        },
        Row {
            name: "Register",
            target: Target::Outsider,
            request: |_, _, fresh| Request::Register {
                name: fresh.name.clone(),
                password: "correct horse".into(),
            },
            expect: [OK; 8],
        },
        Row {
            name: "LookupUsers",
            target: Target::Outsider,
            request: |_, user, _| Request::LookupUsers(vec![UserRef::Id(user)]),
            expect: [NA, OK, OK, OK, OK, OK, OK, OK],
        },
        Row {
            name: "CreateRoom",
            target: Target::Outsider,
            request: |_, _, fresh| Request::CreateRoom {
                name: fresh.name.clone(),
                invite_only: false,
            },
            expect: [NA, OK, OK, OK, OK, OK, OK, OK],
        },
        Row {
            name: "Conversations",
            target: Target::Outsider,
            request: |_, _, _| Request::Conversations {
                after: None,
                limit: 10,
            },
            expect: [NA, OK, OK, OK, OK, OK, OK, OK],
        },
        Row {
            name: "Sync",
            target: Target::Outsider,
            request: |_, _, _| {
                Request::Sync(Resume {
                    cursors: Vec::new(),
                })
            },
            expect: [NA, OK, OK, OK, OK, OK, OK, OK],
        },
        Row {
            name: "JoinRoom",
            target: Target::Outsider,
            request: |room, _, _| Request::JoinRoom { room },
            expect: [NA, OK, OK, AM, AM, AM, E(ErrorCode::BANNED), OK],
        },
        Row {
            name: "LeaveRoom",
            target: Target::Outsider,
            request: |room, _, _| Request::LeaveRoom { room },
            expect: [NA, NM, NM, OK, OK, FB, NM, NM],
        },
        Row {
            name: "Invite",
            target: Target::Outsider,
            request: |room, user, _| Request::Invite { room, user },
            expect: [NA, NM, NM, FB, OK, OK, NM, NM],
        },
        Row {
            name: "Invite a user that does not exist",
            target: Target::Nobody,
            request: |room, user, _| Request::Invite { room, user },
            expect: [NA, UU, UU, UU, UU, UU, UU, UU],
        },
        Row {
            name: "Kick a member",
            target: Target::Member,
            request: |room, user, _| Request::Kick { room, user },
            expect: [NA, NM, NM, FB, OK, OK, NM, NM],
        },
        Row {
            name: "Ban a member",
            target: Target::Member,
            request: |room, user, _| Request::Ban { room, user },
            expect: [NA, NM, NM, FB, OK, OK, NM, NM],
        },
        Row {
            name: "Ban a user that does not exist",
            target: Target::Nobody,
            request: |room, user, _| Request::Ban { room, user },
            expect: [NA, UU, UU, UU, UU, UU, UU, UU],
        },
        Row {
            name: "Unban a banned member",
            target: Target::BannedMember,
            request: |room, user, _| Request::Unban { room, user },
            expect: [NA, NM, NM, FB, OK, OK, NM, NM],
        },
        Row {
            name: "Unban a banned admin",
            target: Target::BannedAdmin,
            request: |room, user, _| Request::Unban { room, user },
            expect: [NA, NM, NM, FB, FB, OK, NM, NM],
        },
        Row {
            name: "SetRole of a member to admin",
            target: Target::Member,
            request: |room, user, _| Request::SetRole {
                room,
                user,
                role: Role::Admin,
            },
            expect: [NA, NM, NM, FB, FB, OK, NM, NM],
        },
        Row {
            name: "Members",
            target: Target::Outsider,
            request: |room, _, _| Request::Members {
                room,
                after: None,
                limit: 10,
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "FindRoom",
            target: Target::Outsider,
            request: |_, _, _| Request::FindRoom {
                name: "matrix".into(),
            },
            expect: [NA, OK, OK, OK, OK, OK, OK, OK],
        },
        Row {
            name: "Send",
            target: Target::Outsider,
            request: |room, _, _| {
                Request::Send(SendMessage {
                    conversation: ConversationId::Room(room),
                    op: OpId(7),
                    content_type: ContentType::TEXT,
                    reply_to: None,
                    body: b"hi".to_vec(),
                    mentions: Vec::new(),
                })
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "Edit a member's message",
            target: Target::MemberMessage,
            request: |room, _, fresh| {
                Request::Edit(EditMessage {
                    conversation: ConversationId::Room(room),
                    op: OpId(8),
                    target: fresh.message,
                    content_type: ContentType::TEXT,
                    body: b"edited".to_vec(),
                })
            },
            expect: [NA, NM, NM, NU, NU, NU, NM, NM],
        },
        Row {
            name: "Delete a member's message",
            target: Target::MemberMessage,
            request: |room, _, fresh| {
                Request::Delete(DeleteMessage {
                    conversation: ConversationId::Room(room),
                    op: OpId(9),
                    target: fresh.message,
                })
            },
            expect: [NA, NM, NM, NU, OK, OK, NM, NM],
        },
        Row {
            name: "React to a member's message",
            target: Target::MemberMessage,
            request: |room, _, fresh| {
                Request::React(ReactMessage {
                    conversation: ConversationId::Room(room),
                    op: OpId(10),
                    target: fresh.message,
                    reaction: "👍".into(),
                    remove: false,
                })
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "History of a member's message's thread",
            target: Target::MemberMessage,
            request: |room, _, fresh| {
                Request::History(HistoryQuery {
                    conversation: ConversationId::Room(room),
                    from: HistoryFrom::After(Seq(0)),
                    limit: 10,
                    order: Order::OldestFirst,
                    thread: Some(fresh.message),
                })
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "Send mentioning a member",
            target: Target::Member,
            request: |room, user, _| {
                Request::Send(SendMessage {
                    conversation: ConversationId::Room(room),
                    op: OpId(11),
                    content_type: ContentType::TEXT,
                    reply_to: None,
                    body: b"look".to_vec(),
                    mentions: vec![user],
                })
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "History",
            target: Target::Outsider,
            request: |room, _, _| {
                Request::History(HistoryQuery {
                    conversation: ConversationId::Room(room),
                    from: HistoryFrom::Latest,
                    limit: 10,
                    order: Order::NewestFirst,
                    thread: None,
                })
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "Mark",
            target: Target::Outsider,
            request: |room, _, _| Request::Mark {
                conversation: ConversationId::Room(room),
                marker: Marker::Read,
                seq: Seq(1),
            },
            expect: [NA, NM, NM, OK, OK, OK, NM, NM],
        },
        Row {
            name: "Presence of a member",
            target: Target::Member,
            request: |_, user, _| Request::Presence {
                subscribe: vec![user],
                unsubscribe: Vec::new(),
            },
            expect: [NA, FB, FB, OK, OK, OK, FB, FB],
        },
        Row {
            name: "Authenticate",
            target: Target::Outsider,
            request: |_, _, fresh| {
                Request::Authenticate(Auth {
                    token: fresh.token.clone(),
                    resume: None,
                })
            },
            expect: [OK, AA, AA, AA, AA, AA, AA, AA],
        },
    ]
}

/// Connects `name` (authenticated) on its own connection.
async fn user(daemon: &TestDaemon, name: &str) -> (Client, UserId) {
    let (client, session) = Client::login(daemon.addr, &daemon.cert, &daemon.token(name), 1).await;
    (client, session.user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_in_every_role_gets_the_documented_answer() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let mut failures = Vec::new();
    for (r, row) in rows().iter().enumerate() {
        // The row's room, named "matrix" for the first row (FindRoom looks it up), and its
        // cast: one caller per state, one target per caller.
        let (mut owner, _) = user(&daemon, &format!("owner{r}")).await;
        let room_name = if r == 0 {
            "matrix".to_owned()
        } else {
            format!("room{r}")
        };
        let room = owner.create_room(&room_name, false).await;
        let mut callers = Vec::new();
        for caller in CALLERS {
            let client = match caller {
                Caller::Owner => None,
                Caller::Anonymous => {
                    let mut c = Client::connect(daemon.addr, &daemon.cert).await;
                    c.hello(None, 1).await;
                    Some(c)
                }
                _ => {
                    let (mut c, id) =
                        user(&daemon, &format!("c{r}{caller:?}").to_lowercase()).await;
                    match caller {
                        Caller::Invited => {
                            owner.ok(Request::Invite { room, user: id }).await;
                        }
                        Caller::Member | Caller::Admin | Caller::Banned | Caller::Kicked => {
                            c.ok(Request::JoinRoom { room }).await;
                        }
                        _ => {}
                    }
                    match caller {
                        Caller::Admin => {
                            owner
                                .ok(Request::SetRole {
                                    room,
                                    user: id,
                                    role: Role::Admin,
                                })
                                .await;
                        }
                        Caller::Banned => {
                            owner.ok(Request::Ban { room, user: id }).await;
                        }
                        Caller::Kicked => {
                            owner.ok(Request::Kick { room, user: id }).await;
                        }
                        _ => {}
                    }
                    Some(c)
                }
            };
            // This caller's target.
            let mut message = Seq(0);
            let target = match row.target {
                Target::Nobody => UserId(1_000_000 + r as u64),
                _ => {
                    let (mut t, id) =
                        user(&daemon, &format!("t{r}{caller:?}").to_lowercase()).await;
                    match row.target {
                        Target::Member
                        | Target::MemberMessage
                        | Target::BannedMember
                        | Target::BannedAdmin => {
                            t.ok(Request::JoinRoom { room }).await;
                        }
                        _ => {}
                    }
                    if matches!(row.target, Target::MemberMessage) {
                        message = t.send_text(ConversationId::Room(room), 1, "mine").await.seq;
                    }
                    if matches!(row.target, Target::BannedAdmin) {
                        let admin = Request::SetRole {
                            room,
                            user: id,
                            role: Role::Admin,
                        };
                        owner.ok(admin).await;
                    }
                    if matches!(row.target, Target::BannedMember | Target::BannedAdmin) {
                        owner.ok(Request::Ban { room, user: id }).await;
                    }
                    id
                }
            };
            callers.push((caller, client, target, message));
        }
        for (i, (caller, client, target, message)) in callers.iter_mut().enumerate() {
            let name = format!("f{r}x{i}");
            let fresh = Fresh {
                token: daemon.token(&name),
                name,
                message: *message,
            };
            let request = (row.request)(room, *target, &fresh);
            let sender = client.as_mut().unwrap_or(&mut owner);
            let got = match sender.request(request).await {
                Ok(_) => OK,
                Err(e) => E(e.code),
            };
            if got != row.expect[i] {
                failures.push(format!(
                    "{}, as {caller:?}: expected {:?}, got {got:?}",
                    row.name, row.expect[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
