//! The session's rules, without sockets or clocks: frames in, queued frames and admissions
//! out, with real budgets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{
    Auth, ClientFrame, ConversationId, Cursor, DeviceId, ErrorCode, Event, GoodbyeCode, Hello,
    PresenceInfo, PresenceStatus, Request, RequestId, Response, Resume, RoomId, Seq, ServerFrame,
    UserId, decode_frame,
};

use super::*;
use crate::budget::{Budget, UserBudget};
use crate::shard::accounts::Authenticated;
use crate::shard::{encode, response};

const ROOM: ConversationId = ConversationId::Room(RoomId(1));
const USER: UserId = UserId(7);

fn limits() -> Limits {
    Limits {
        connection_memory: 1 << 20,
        max_in_flight: 4,
        outgoing_queue: 8,
    }
}

struct Fixture {
    session: Session,
    daemon: Arc<Budget>,
    user: Arc<UserBudget>,
    now: Instant,
}

impl Fixture {
    /// A session before its hello.
    fn new() -> Fixture {
        let daemon = Arc::new(Budget::new(1 << 30));
        Fixture {
            session: Session::new(Arc::clone(&daemon)),
            daemon,
            user: Arc::new(UserBudget::new(1 << 24)),
            now: Instant::now(),
        }
    }

    /// A session after an anonymous hello.
    fn anonymous() -> Fixture {
        let mut f = Fixture::new();
        assert!(matches!(f.frame(hello(None)), Step::HelloOk));
        f
    }

    /// An authenticated session with its user's budget, token valid until `expires_at`.
    fn authenticated(expires_at: u64) -> Fixture {
        let mut f = Fixture::anonymous();
        f.session.started(auth(expires_at)).expect("started");
        f.session.user_budget(Arc::clone(&f.user));
        f
    }

    fn frame(&mut self, frame: ClientFrame) -> Step {
        self.session.frame(frame, self.now)
    }

    /// Admits and passes request `id`.
    fn request(&mut self, id: u32, request: Request) -> Step {
        let reserve = crate::budget::reply_reservation(&request);
        assert_eq!(
            self.session.admit(RequestId(id), reserve, &limits()),
            Admission::Admitted
        );
        self.frame(ClientFrame::Request {
            id: RequestId(id),
            request,
        })
    }

    /// What the writer takes now, decoded.
    fn written(&mut self) -> Vec<ServerFrame> {
        let mut batch = Vec::new();
        let t = self.session.transmit(&mut batch, usize::MAX);
        self.session.written(t.bytes);
        batch
            .iter()
            .map(|b| decode_frame::<ServerFrame>(b).expect("a frame").0)
            .collect()
    }

    /// Everything given back: nothing is charged anywhere.
    fn assert_released(&mut self) {
        self.session.release_all();
        assert_eq!(self.daemon.used(), 0, "the daemon's budget");
        assert_eq!(self.user.bytes.used(), 0, "the user's budget");
    }
}

fn hello(auth: Option<Auth>) -> ClientFrame {
    ClientFrame::Hello(Hello {
        versions: chat_protocol::SUPPORTED_VERSIONS,
        client: "test".into(),
        device: DeviceId(3),
        auth,
    })
}

fn auth(expires_at: u64) -> Authenticated {
    Authenticated {
        user: USER,
        name: "alice".into(),
        expires_at,
        issued_at: None,
        mark: 0,
    }
}

fn event(seq: u64) -> Bytes {
    encode(&ServerFrame::Event(Event::Receipt(
        chat_protocol::Receipt {
            conversation: ROOM,
            user: UserId(seq),
            marker: chat_protocol::Marker::Read,
            seq: Seq(seq),
        },
    )))
}

fn presence_event(user: u64, status: PresenceStatus) -> Bytes {
    encode(&ServerFrame::Event(Event::Presence(PresenceInfo {
        user: UserId(user),
        status,
        last_seen: None,
    })))
}

/// A resume after entry `seq` of ROOM.
fn after(seq: u64) -> Resume {
    Resume {
        cursors: vec![Cursor {
            conversation: ROOM,
            seq: Seq(seq),
        }],
    }
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error { error, .. } => Some(error.code),
        _ => None,
    }
}

#[test]
fn hello_comes_first_and_once() {
    let mut f = Fixture::new();
    let ping = ClientFrame::Request {
        id: RequestId(1),
        request: Request::Ping,
    };
    assert!(matches!(f.frame(ping), Step::Closed));
    let out = f.written();
    assert_eq!(error_code(&out[0]), Some(ErrorCode::UNEXPECTED_FRAME));
    assert!(
        matches!(&out[1], ServerFrame::Goodbye(g) if g.code == GoodbyeCode::PROTOCOL_VIOLATION)
    );
    f.assert_released();

    let mut f = Fixture::anonymous();
    assert!(matches!(f.frame(hello(None)), Step::Closed));
    f.assert_released();
}

#[test]
fn requests_need_a_session_except_ping_and_accounts() {
    let mut f = Fixture::anonymous();
    assert!(matches!(
        f.request(1, Request::Ping),
        Step::Request {
            user: UserId(0),
            ..
        }
    ));
    let history = Request::Mark {
        conversation: ROOM,
        marker: chat_protocol::Marker::Read,
        seq: Seq(1),
    };
    assert!(matches!(f.request(2, history.clone()), Step::Done));
    assert_eq!(
        error_code(&f.written()[0]),
        Some(ErrorCode::NOT_AUTHENTICATED)
    );
    f.session.started(auth(u64::MAX)).expect("started");
    f.session.user_budget(Arc::clone(&f.user));
    assert!(matches!(
        f.request(3, history),
        Step::Request { user: USER, .. }
    ));
}

#[test]
fn authenticate_is_once_per_connection_and_one_at_a_time() {
    let mut f = Fixture::anonymous();
    let authenticate = || {
        Request::Authenticate(Auth {
            token: "t".into(),
            resume: None,
        })
    };
    assert!(matches!(
        f.request(1, authenticate()),
        Step::Authenticate {
            request: Some(RequestId(1)),
            ..
        }
    ));
    assert!(matches!(f.request(2, authenticate()), Step::Done));
    let out = f.written();
    assert_eq!(error_code(&out[0]), Some(ErrorCode::INVALID_REQUEST));
    // A failure lets the client try again; a success ends the tries.
    f.session.refused();
    assert!(matches!(
        f.request(3, authenticate()),
        Step::Authenticate { .. }
    ));
    f.session.started(auth(u64::MAX)).expect("started");
    f.session.user_budget(Arc::clone(&f.user));
    assert!(matches!(f.request(4, authenticate()), Step::Done));
    let out = f.written();
    assert_eq!(error_code(&out[0]), Some(ErrorCode::ALREADY_AUTHENTICATED));
    f.assert_released();
}

#[test]
fn requests_in_flight_and_their_bytes_are_bounded() {
    let mut f = Fixture::authenticated(u64::MAX);
    for id in 1..=4 {
        f.request(id, Request::Ping);
    }
    // `max_in_flight` unanswered: the next waits for a slot, on this connection.
    assert_eq!(
        f.session.admit(RequestId(5), 64, &limits()),
        Admission::Wait { user: false }
    );
    f.session
        .reply(RequestId(1), response(RequestId(1), Response::Ok));
    // Answered but not yet taken by the writer: still in flight.
    assert!(matches!(
        f.session.admit(RequestId(5), 64, &limits()),
        Admission::Wait { .. }
    ));
    f.written();
    assert_eq!(
        f.session.admit(RequestId(5), 64, &limits()),
        Admission::Admitted
    );
    // The connection's bytes: a reservation beyond what is left waits.
    let small = Limits {
        connection_memory: f.daemon.used() + 10,
        max_in_flight: 100,
        ..limits()
    };
    assert_eq!(
        f.session.admit(RequestId(6), 64, &small),
        Admission::Wait { user: false }
    );
    f.assert_released();
}

#[test]
fn a_full_user_budget_waits_and_a_full_daemon_budget_refuses() {
    let mut f = Fixture::authenticated(u64::MAX);
    // Another device of the user holds all but 10 bytes of the user's budget.
    let limit = f.user.bytes.limit();
    f.user.bytes.charge(limit - 10);
    assert_eq!(
        f.session.admit(RequestId(1), 64, &limits()),
        Admission::Wait { user: true }
    );
    f.user.release(limit - 10);
    // The daemon's budget is full: refused at once with OVERLOADED, and the refusal is
    // answered (one answer per request).
    let used = f.daemon.used();
    f.daemon.charge(f.daemon.limit() - used);
    assert_eq!(
        f.session.admit(RequestId(2), 64, &limits()),
        Admission::Refused
    );
    f.daemon.release(f.daemon.limit() - used);
    let out = f.written();
    assert!(matches!(
        &out[0],
        ServerFrame::Error { id: Some(RequestId(2)), error } if error.code == ErrorCode::OVERLOADED
            && error.retry_after_ms == Some(OVERLOADED_RETRY_MS)
    ));
    f.assert_released();
}

#[test]
fn an_authenticated_session_reads_nothing_until_its_user_budget_arrives() {
    let mut f = Fixture::anonymous();
    f.session.started(auth(u64::MAX)).expect("started");
    assert_eq!(
        f.session.admit(RequestId(1), 64, &limits()),
        Admission::AwaitBudget
    );
    f.session.user_budget(Arc::clone(&f.user));
    assert!(f.session.signals().room, "the waiting reader is woken");
    assert_eq!(
        f.session.admit(RequestId(1), 64, &limits()),
        Admission::Admitted
    );
    // The user's budget carries what the connection held before it arrived.
    assert_eq!(f.user.bytes.used(), f.daemon.used());
    f.assert_released();
}

#[test]
fn events_beyond_the_queue_lag_the_connection_once() {
    let mut f = Fixture::authenticated(u64::MAX);
    for seq in 1..=8 {
        assert!(f.session.event(&event(seq), Live::Other, &limits()));
    }
    assert!(!f.session.event(&event(9), Live::Other, &limits()));
    assert!(f.session.signals().lagged);
    assert!(!f.session.event(&event(10), Live::Other, &limits()));
    assert!(!f.session.signals().lagged, "lags once");
    let out = f.written();
    assert_eq!(out.len(), 9);
    assert!(matches!(out[8], ServerFrame::Event(Event::Lagged)));
    // Typing beyond the queue is dropped without lagging anyone.
    let mut f = Fixture::authenticated(u64::MAX);
    for seq in 1..=8 {
        f.session.event(&event(seq), Live::Other, &limits());
    }
    assert!(!f.session.event(&event(9), Live::Ephemeral, &limits()));
    assert!(!f.session.signals().lagged);
    f.assert_released();
}

#[test]
fn a_second_sync_is_refused_while_a_catch_up_runs() {
    let mut f = Fixture::authenticated(u64::MAX);
    let resume = after(5);
    let first = f.session.start_catch_up(&resume, 100, 100);
    assert!(first.is_ok());
    let second = f.session.start_catch_up(&resume, 100, 100);
    assert_eq!(
        second.err(),
        Some((ErrorCode::INVALID_REQUEST, "a catch-up is already running"))
    );
    // The first one's last page: a new catch-up may start.
    assert!(f.session.reserve_page(1024, &limits()));
    assert!(f.session.page(1024, Vec::new(), 0, true, &limits()));
    assert!(f.session.start_catch_up(&resume, 100, 100).is_ok());
    f.assert_released();
}

#[test]
fn live_events_during_a_catch_up_follow_it_without_what_it_replayed() {
    let mut f = Fixture::authenticated(u64::MAX);
    let resume = after(5);
    f.session.start_catch_up(&resume, 100, 100).expect("starts");
    // 7 and 8 are pushed live while the replay reads 6 and 7.
    for seq in [7, 8] {
        assert!(
            f.session
                .event(&event(seq), Live::Entry((ROOM, Seq(seq))), &limits())
        );
    }
    assert!(f.written().is_empty(), "held back");
    assert!(f.session.reserve_page(1024, &limits()));
    let page = vec![
        (Some((ROOM, Seq(6))), event(6)),
        (Some((ROOM, Seq(7))), event(7)),
    ];
    assert!(f.session.page(1024, page, 2, true, &limits()));
    let seqs: Vec<Option<u64>> = f
        .written()
        .into_iter()
        .map(|frame| match frame {
            ServerFrame::Event(Event::Receipt(r)) => Some(r.seq.0),
            ServerFrame::Event(Event::CaughtUp { replayed: 2 }) => None,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, [Some(6), Some(7), Some(8), None]);
    assert!(
        f.session
            .event(&event(9), Live::Entry((ROOM, Seq(9))), &limits())
    );
    f.written();
    // Another catch-up reads 10 and 11 before 11's fan-out arrives: that late push is dropped.
    let resume = after(9);
    f.session.start_catch_up(&resume, 100, 100).expect("starts");
    assert!(f.session.reserve_page(1024, &limits()));
    let page = vec![
        (Some((ROOM, Seq(10))), event(10)),
        (Some((ROOM, Seq(11))), event(11)),
    ];
    assert!(f.session.page(1024, page, 2, true, &limits()));
    assert!(
        !f.session
            .event(&event(11), Live::Entry((ROOM, Seq(11))), &limits())
    );
    assert!(
        f.session
            .event(&event(12), Live::Entry((ROOM, Seq(12))), &limits())
    );
    assert_eq!(f.written().len(), 4, "10, 11, CaughtUp, 12");
    f.assert_released();
}

#[test]
fn a_presence_answer_is_not_overtaken_by_a_later_change() {
    let mut f = Fixture::authenticated(u64::MAX);
    let followed = [UserId(2), UserId(3)];
    assert_eq!(f.session.follow(&followed, &[], 10), Ok(Vec::new()));
    f.session.presence_asked(RequestId(1), followed.to_vec());
    // User 2 goes offline right after its registry shard answered; user 3's registry shard
    // answers later, so the change reaches the connection before the gathered answer.
    let change = presence_event(2, PresenceStatus::Offline);
    assert!(
        f.session
            .event(&change, Live::Presence(UserId(2)), &limits())
    );
    // Events about users nobody asked about are not held.
    let other = presence_event(4, PresenceStatus::Online);
    assert!(
        f.session
            .event(&other, Live::Presence(UserId(4)), &limits())
    );
    let answer = response(
        RequestId(1),
        Response::Presence(vec![PresenceInfo {
            user: UserId(2),
            status: PresenceStatus::Online,
            last_seen: None,
        }]),
    );
    f.session.reply(RequestId(1), answer);
    let out = f.written();
    let order: Vec<&str> = out
        .iter()
        .map(|frame| match frame {
            ServerFrame::Event(Event::Presence(p)) if p.user == UserId(4) => "other",
            ServerFrame::Response { .. } => "answer",
            ServerFrame::Event(Event::Presence(p)) if p.user == UserId(2) => "change",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(order, ["other", "answer", "change"]);
    f.assert_released();
}

#[test]
fn following_is_bounded() {
    let mut f = Fixture::authenticated(u64::MAX);
    let users: Vec<UserId> = (1..=3).map(UserId).collect();
    assert!(f.session.follow(&users, &[], 2).is_err());
    assert_eq!(f.session.follow(&users[..2], &[], 2), Ok(Vec::new()));
    assert_eq!(
        f.session.follow(&users[2..], &users[..1], 2),
        Ok(vec![UserId(1)])
    );
    let mut left = f.session.unfollow_all();
    left.sort_unstable();
    assert_eq!(left, [UserId(2), UserId(3)]);
}

#[test]
fn deadlines_follow_the_authentication_state() {
    let mut f = Fixture::anonymous();
    let auth_deadline = f.now + Duration::from_secs(10);
    assert_eq!(
        f.session.deadline(auth_deadline, f.now, 1_000),
        auth_deadline
    );
    assert!(!f.session.deadline_reached(auth_deadline, f.now, 1_000));
    let late = auth_deadline + Duration::from_millis(1);
    assert!(f.session.deadline_reached(auth_deadline, late, 1_000));
    let out = f.written();
    assert_eq!(error_code(&out[0]), Some(ErrorCode::AUTH_TIMEOUT));

    let mut f = Fixture::authenticated(1_060);
    assert_eq!(
        f.session.deadline(auth_deadline, f.now, 1_000),
        f.now + Duration::from_secs(60)
    );
    // The authentication deadline no longer applies once authenticated.
    assert!(!f.session.deadline_reached(auth_deadline, late, 1_059));
    assert!(f.session.deadline_reached(auth_deadline, late, 1_060));
    assert!(matches!(
        f.written().last(),
        Some(ServerFrame::Goodbye(g)) if g.code == GoodbyeCode::TOKEN_EXPIRED
    ));
    f.assert_released();
}

#[test]
fn typing_is_rate_limited_per_second() {
    let mut f = Fixture::anonymous();
    assert_eq!(f.session.typing(f.now), None, "only with a session");
    let mut f = Fixture::authenticated(u64::MAX);
    for _ in 0..TYPING_PER_SECOND {
        assert_eq!(f.session.typing(f.now), Some(USER));
    }
    assert_eq!(f.session.typing(f.now + Duration::from_millis(999)), None);
    assert_eq!(f.session.typing(f.now + Duration::from_secs(1)), Some(USER));
}

#[test]
fn nothing_is_queued_or_charged_after_the_goodbye() {
    let mut f = Fixture::authenticated(u64::MAX);
    f.session.goodbye(GoodbyeCode::NORMAL, "bye");
    assert!(!f.session.event(&event(1), Live::Other, &limits()));
    f.session
        .reply(RequestId(1), response(RequestId(1), Response::Ok));
    let out = f.written();
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], ServerFrame::Goodbye(_)));
    f.assert_released();
    assert_eq!(
        f.session.admit(RequestId(2), 64, &limits()),
        Admission::Closed
    );
}

#[test]
fn an_emptied_queue_keeps_no_room_for_a_past_burst() {
    let mut f = Fixture::authenticated(u64::MAX);
    let limits = Limits {
        outgoing_queue: 256,
        ..limits()
    };
    for seq in 1..=200 {
        assert!(f.session.event(&event(seq), Live::Other, &limits));
    }
    assert!(f.session.frames.capacity() >= 200);
    assert_eq!(f.written().len(), 200);
    assert!(
        f.session.frames.capacity() <= IDLE_FRAMES,
        "{}",
        f.session.frames.capacity()
    );
    f.assert_released();
}

#[test]
fn no_common_version_is_refused_in_version_1_frames_that_any_client_reads() {
    let refusals = |f: &mut Fixture| {
        let mut batch = Vec::new();
        let t = f.session.transmit(&mut batch, usize::MAX);
        f.session.written(t.bytes);
        assert_eq!(batch.len(), 2, "an error and a goodbye");
        for bytes in &batch {
            assert_eq!(bytes[chat_protocol::LENGTH_PREFIX], 1, "a version-1 frame");
        }
        let frames: Vec<ServerFrame> = batch
            .iter()
            .map(|b| decode_frame::<ServerFrame>(b).expect("readable").0)
            .collect();
        assert!(matches!(
            &frames[0],
            ServerFrame::Error { id: None, error } if error.code == ErrorCode::UNSUPPORTED_VERSION
        ));
        assert!(matches!(
            &frames[1],
            ServerFrame::Goodbye(g) if g.code == GoodbyeCode::UNSUPPORTED_VERSION
        ));
    };
    // A hello whose range does not hold this daemon's version.
    for (min, max) in [(1, 1), (3, 9)] {
        let mut f = Fixture::new();
        let hello = ClientFrame::Hello(Hello {
            versions: chat_protocol::VersionRange { min, max },
            client: "elsewhen".into(),
            device: DeviceId(3),
            auth: None,
        });
        assert!(matches!(f.frame(hello), Step::Closed));
        refusals(&mut f);
    }
    // A first frame of a version this daemon does not decode at all.
    let mut f = Fixture::new();
    f.session.violation(&DecodeError::UnsupportedVersion(1));
    refusals(&mut f);
}
