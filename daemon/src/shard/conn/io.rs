//! The connection's I/O: admission of new connections, the session stream's reader (with
//! the in-flight and byte-budget admission of each request) and writer, datagrams, and the
//! deadlines that end a session.

use super::*;

/// Accepts connections until the endpoint closes.
///
/// A new connection is refused while the shard is full, the daemon's memory budget cannot
/// take another connection, the daemon has `max_unauthenticated` connections that have not
/// authenticated, or its address has `max_connections_per_address` on this shard. Beyond
/// `retry_above` unauthenticated connections, it must first prove its address (QUIC Retry),
/// so a flood from spoofed addresses costs a stateless packet each, no handshake.
pub(crate) async fn accept_loop(shard: Rc<Shard>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let config = shard.shared.config();
        let limits = &config.limits;
        let ip = incoming.remote_address().ip();
        let unauthenticated = shard
            .shared
            .unauthenticated
            .load(std::sync::atomic::Ordering::Acquire);
        let conns = shard.conns.borrow();
        if conns.stopping.is_some()
            || conns.map.len() >= limits.max_connections_per_shard
            || !shard.shared.memory.fits(CONNECTION_COST)
            || unauthenticated >= limits.max_unauthenticated
            || conns.per_address.get(&ip).copied().unwrap_or(0)
                >= limits.max_connections_per_address
        {
            drop(conns);
            shard
                .shared
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        drop(conns);
        if unauthenticated >= limits.retry_above && incoming.may_retry() {
            shard
                .shared
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Fails only for an incoming that was validated already (may_retry said no).
            let _ = incoming.retry();
            continue;
        }
        *shard.conns.borrow_mut().per_address.entry(ip).or_insert(0) += 1;
        let unauthenticated = Unauthenticated::new(&shard.shared);
        spawn_local(serve(Rc::clone(&shard), incoming, ip, unauthenticated));
    }
}

pub(super) async fn serve(
    shard: Rc<Shard>,
    incoming: quinn::Incoming,
    ip: std::net::IpAddr,
    unauthenticated: Unauthenticated,
) {
    let quic = match incoming.await {
        Ok(quic) => quic,
        Err(e) => {
            shard.conns.borrow_mut().address_left(ip);
            shard.metrics().handshakes_failed.increment(1);
            return tracing::debug!(error = %e, "handshake failed");
        }
    };
    shard.metrics().handshakes.increment(1);
    let id = {
        let mut conns = shard.conns.borrow_mut();
        let id = ConnId(conns.next);
        conns.next += 1;
        id
    };
    let conn = Rc::new(Conn {
        id,
        shard: shard.id,
        since: Instant::now(),
        quic: quic.clone(),
        shared: Arc::clone(&shard.shared),
        unauthenticated,
        user: RefCell::new(None),
        sends: RefCell::new(None),
        state: RefCell::default(),
        out: RefCell::default(),
        wake: tokio::sync::Notify::new(),
        slot: tokio::sync::Notify::new(),
        typing: std::cell::Cell::new((Instant::now(), 0)),
    });
    shard.conns.borrow_mut().map.insert(id, Rc::clone(&conn));
    shard.shared.connections[shard.id].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    shard.shared.memory.charge(CONNECTION_COST);
    let auth_timeout = Duration::from_secs(shard.shared.config().auth.auth_timeout_secs);
    match tokio::time::timeout(auth_timeout, quic.accept_bi()).await {
        Ok(Ok((send, recv))) => {
            spawn_local(write_loop(Rc::clone(&shard), Rc::clone(&conn), send));
            spawn_local(datagram_loop(Rc::clone(&shard), Rc::clone(&conn)));
            read_loop(&shard, &conn, recv, Instant::now() + auth_timeout).await;
        }
        Ok(Err(_)) => conn.release_all(),
        Err(_) => {
            conn.release_all();
            quic.close(close_code(GoodbyeCode::AUTH_TIMEOUT), b"no session stream");
        }
    }
    ended(&shard, &conn, ip);
}

/// The connection is over: it leaves the shard's tables and counts, its session (if any)
/// leaves the placement, the registry and the presence it followed, and the writer says
/// goodbye if nobody did yet (the client ended or reset its stream), so no connection
/// outlives its session.
fn ended(shard: &Rc<Shard>, conn: &Rc<Conn>, ip: std::net::IpAddr) {
    let id = conn.id;
    {
        let mut conns = shard.conns.borrow_mut();
        conns.map.remove(&id);
        conns.address_left(ip);
    }
    conn.unauthenticated.done();
    shard.shared.connections[shard.id].fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    shard.shared.memory.release(CONNECTION_COST);
    if let Some((user, device)) = conn.session() {
        let sessions = &shard.shared.sessions;
        sessions.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if shard.conns.borrow_mut().session_ended(user, id) {
            shard.shared.placement.left(user, shard.id);
        }
        let at = ConnRef {
            shard: shard.id,
            conn: id,
        };
        let offline = registry::Op::Offline { user, device, at };
        shard.send(shard.shared.registry_of(user), ShardMsg::Registry(offline));
        let followed = std::mem::take(&mut conn.state.borrow_mut().presence);
        requests::unwatch(shard, at, followed.into_iter().collect());
    }
    conn.goodbye(GoodbyeCode::NORMAL, "session stream closed");
}

/// When the session ends unless the client does something: the authentication deadline
/// while unauthenticated, the token's expiry once authenticated.
pub(super) fn session_deadline(conn: &Conn, auth_deadline: Instant) -> Instant {
    match conn.state.borrow().session.as_ref() {
        None => auth_deadline,
        Some(session) => token_expiry(session.expires_at),
    }
}

/// At the session's deadline: an unauthenticated connection times out (`AUTH_TIMEOUT`), an
/// authenticated one's token has expired (`TOKEN_EXPIRED`); either way the goodbye is
/// queued and `true` returned. `false` when the deadline moved: the hello authenticated
/// the connection after the wait began (its lookup came back), and an idle client that sends
/// nothing more must not be taken for one that never authenticated.
pub(super) fn deadline_reached(conn: &Conn, auth_deadline: Instant) -> bool {
    let state = conn.state.borrow();
    match state.session.as_ref() {
        None if Instant::now() >= auth_deadline => {
            drop(state);
            conn.push(
                encode(&error_frame(None, ErrorCode::AUTH_TIMEOUT, "")),
                Kind::Control,
            );
            conn.goodbye(
                GoodbyeCode::AUTH_TIMEOUT,
                "authentication did not complete in time",
            );
            true
        }
        Some(session) if crate::unix_now() >= session.expires_at => {
            drop(state);
            conn.goodbye(GoodbyeCode::TOKEN_EXPIRED, "the session's token expired");
            true
        }
        _ => false,
    }
}

/// When a session authenticated by a token expiring at `expires_at` (seconds since the
/// epoch) must end, on this process's monotonic clock.
pub(super) fn token_expiry(expires_at: u64) -> Instant {
    let left = expires_at.saturating_sub(crate::unix_now());
    let now = Instant::now();
    now.checked_add(Duration::from_secs(left))
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}

pub(super) fn close_code(code: GoodbyeCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(u32::from(code.0))
}

pub(super) async fn read_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mut recv: quinn::RecvStream,
    auth_deadline: Instant,
) {
    let mut decoder = FrameDecoder::<ClientFrame>::new();
    loop {
        let chunk = tokio::select! {
            chunk = recv.read_chunk(decoder.space(), true) => chunk,
            () = tokio::time::sleep_until(session_deadline(conn, auth_deadline).into()) => {
                if deadline_reached(conn, auth_deadline) {
                    return;
                }
                continue;
            }
        };
        let bytes = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => return,
        };
        if let Err(e) = decoder.push(&bytes) {
            return violation(conn, &e);
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let ClientFrame::Request { id, request } = &frame {
                        let reserve = budget::reply_reservation(request);
                        match admit(conn, reserve, auth_deadline).await {
                            Admission::Closed => return,
                            Admission::Admitted => {
                                let mut state = conn.state.borrow_mut();
                                state.reserved.entry(*id).or_default().push(reserve);
                            }
                            Admission::Overloaded => {
                                overloaded(shard, conn, *id);
                                continue;
                            }
                        }
                    }
                    if !frame_arrived(shard, conn, frame) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return violation(conn, &e),
            }
        }
        if conn.out.borrow().closing.is_some() {
            return;
        }
    }
}

/// Whether the next request may be read.
pub(super) enum Admission {
    /// Its answer's reservation is charged to every budget.
    Admitted,
    /// The daemon's budget is full: the request is refused with `OVERLOADED`.
    Overloaded,
    /// The connection closed while waiting.
    Closed,
}

/// Waits until the connection has fewer than `max_in_flight` unanswered requests and
/// `reserve` more bytes fit its budget and its user's, then charges them: a client that does
/// not read its answers (or whose other devices do not) stops being read, and QUIC flow
/// control slows it, so what it pins stays within its budgets. The daemon's budget is not
/// waited for: when it is full the request is refused.
pub(super) async fn admit(conn: &Conn, reserve: usize, auth_deadline: Instant) -> Admission {
    loop {
        // Read on every pass (a reload may change the budget) and not held across awaits.
        let (connection_memory, max_in_flight) = {
            let config = conn.shared.config();
            (config.limits.connection_memory, config.limits.max_in_flight)
        };
        // A reservation never exceeds one page (`budget::reply_reservation`), far below any
        // budget; clamped anyway, so a request can always be read once the connection is
        // empty.
        let reserve = reserve.min(connection_memory);
        if conn.out.borrow().released {
            // The writer ended the connection: nothing may be charged any more.
            return Admission::Closed;
        }
        // The session's deadline holds while the reader waits here too: a client that stops
        // reading must still time out unauthenticated, or end when its token expires.
        let deadline = session_deadline(conn, auth_deadline);
        let user = conn.user.borrow().clone();
        if user.is_none() && conn.state.borrow().session.is_some() {
            // Authenticated: the user's shared budget is on its way from their registry
            // shard; nothing is read until it is here.
            tokio::select! {
                () = conn.slot.notified() => continue,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if deadline_reached(conn, auth_deadline) {
                        return Admission::Closed;
                    }
                    continue;
                }
                _ = conn.quic.closed() => return Admission::Closed,
            }
        }
        let freed = user.as_ref().map(|u| u.freed.notified());
        let mut freed = std::pin::pin!(freed);
        if let Some(freed) = freed.as_mut().as_pin_mut() {
            // Registered before the check, so a release in between is not missed.
            freed.enable();
        }
        let (in_flight, bytes) = (conn.state.borrow().in_flight, conn.out.borrow().bytes);
        let connection_fits =
            in_flight < max_in_flight && bytes.saturating_add(reserve) <= connection_memory;
        let user_fits = match user.as_ref() {
            None => true,
            Some(user) => connection_fits && user.bytes.try_charge(reserve),
        };
        if connection_fits && user_fits {
            if !conn.shared.memory.try_charge(reserve) {
                if let Some(user) = user.as_ref() {
                    user.release(reserve);
                }
                return Admission::Overloaded;
            }
            conn.out.borrow_mut().bytes += reserve;
            return Admission::Admitted;
        }
        // When the connection's own budget is what is missing, its writer frees it; when it
        // is the user's, any of the user's connections may.
        let wait_for_user = connection_fits;
        tokio::select! {
            () = conn.slot.notified() => {}
            () = async {
                match freed.as_mut().as_pin_mut() {
                    Some(freed) => freed.await,
                    None => std::future::pending().await,
                }
            }, if wait_for_user => {}
            () = tokio::time::sleep_until(deadline.into()) => {
                if deadline_reached(conn, auth_deadline) {
                    return Admission::Closed;
                }
            }
            _ = conn.quic.closed() => return Admission::Closed,
        }
    }
}

/// Refuses a request because the daemon's memory budget is full. The answer is small and
/// charged as it is; the client is told when to try again.
pub(super) fn overloaded(shard: &Shard, conn: &Conn, id: RequestId) {
    conn.state.borrow_mut().in_flight += 1;
    let frame = encode(&ServerFrame::Error {
        id: Some(id),
        error: ErrorBody {
            code: ErrorCode::OVERLOADED,
            reason: "the daemon's memory budget is full".to_owned(),
            retry_after_ms: Some(OVERLOADED_RETRY_MS),
        },
    });
    reply(shard, conn.id, id, frame);
}

/// What a client refused for memory is told to wait before trying again.
pub(super) const OVERLOADED_RETRY_MS: u32 = 1_000;

/// A frame that cannot be decoded: tell the client why and close this connection only. An
/// unknown version byte on the first frame is a version mismatch (section 7); on a later
/// frame, after version 1 was agreed, it is an invalid frame like any other.
pub(super) fn violation(conn: &Conn, e: &DecodeError) {
    let agreed = conn.state.borrow().hello.is_some();
    let (code, goodbye) = match e {
        DecodeError::TooLarge { .. } => {
            (ErrorCode::FRAME_TOO_LARGE, GoodbyeCode::PROTOCOL_VIOLATION)
        }
        DecodeError::UnsupportedVersion(_) if !agreed => (
            ErrorCode::UNSUPPORTED_VERSION,
            GoodbyeCode::UNSUPPORTED_VERSION,
        ),
        _ => (ErrorCode::MALFORMED_FRAME, GoodbyeCode::PROTOCOL_VIOLATION),
    };
    let mut reason = e.to_string();
    reason.truncate(chat_protocol::limits::MAX_REASON);
    conn.push(encode(&error_frame(None, code, &reason)), Kind::Control);
    conn.goodbye(goodbye, "protocol violation");
}

pub(super) fn unexpected(conn: &Conn, what: &str) -> bool {
    conn.push(
        encode(&error_frame(None, ErrorCode::UNEXPECTED_FRAME, what)),
        Kind::Control,
    );
    conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "protocol violation");
    false
}

/// Reads the ephemeral lane: datagrams carry typing updates only; anything else, or a
/// datagram that does not decode, is dropped (the lane is unreliable by design).
pub(super) async fn datagram_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        let datagram = tokio::select! {
            d = conn.quic.read_datagram() => d,
            _ = conn.quic.closed() => return,
        };
        let Ok(bytes) = datagram else { return };
        if let Ok(ClientFrame::Typing(update)) =
            chat_protocol::decode_datagram::<ClientFrame>(&bytes)
        {
            typing_arrived(&shard, &conn, update);
        }
    }
}

/// Writes queued frames in batches. Ends after the goodbye (finishing the stream and closing
/// the connection with its code), or when the stream or connection fails (then it closes the
/// connection, so nothing lingers).
pub(super) async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>, mut send: quinn::SendStream) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    let closing = loop {
        let (closing, replies, bytes) = {
            let mut out = conn.out.borrow_mut();
            let (mut replies, mut bytes) = (0u32, 0usize);
            while batch.len() < 64 {
                let Some((frame, kind)) = out.frames.pop_front() else {
                    break;
                };
                match kind {
                    Kind::Event => out.events -= 1,
                    Kind::Reply => replies += 1,
                    Kind::Control => {}
                }
                bytes += budget::cost(&frame);
                batch.push(frame);
            }
            (out.closing, replies, bytes)
        };
        if replies > 0 {
            let mut state = conn.state.borrow_mut();
            state.in_flight = state.in_flight.saturating_sub(replies);
            drop(state);
            conn.slot.notify_one();
        }
        if batch.is_empty() {
            if let Some(code) = closing {
                break Some(code);
            }
            // A parked catch-up page waits for room in budgets that other connections (of
            // the user, of the daemon) may free, or for the read pool: look again now and
            // then (parking wakes this loop, so the timer starts).
            let parked = conn.state.borrow().replay_parked.is_some();
            tokio::select! {
                () = conn.wake.notified() => continue,
                () = tokio::time::sleep(PARKED_RETRY), if parked => {
                    resume_parked(&shard, &conn);
                    continue;
                }
                _ = conn.quic.closed() => break None,
            }
        }
        // Once the connection is closing, what is left gets `GOODBYE_GRACE` to be written: a
        // peer that grants no flow-control credit cannot hold the connection open.
        let written = tokio::select! {
            result = send.write_all_chunks(&mut batch) => result.is_ok(),
            () = closing_grace_over(&conn) => {
                break conn.out.borrow().closing;
            }
        };
        if !written {
            break None;
        }
        batch.clear();
        // Written: quinn holds the bytes now, within its flow-control windows.
        conn.release(bytes);
        resume_parked(&shard, &conn);
    };
    let code = match closing {
        Some(code) => {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            code
        }
        None => GoodbyeCode::NORMAL,
    };
    conn.quic.close(close_code(code), b"goodbye");
    conn.release_all();
}

/// How long a closing connection's last frames (its goodbye) may take to be written.
pub(super) const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Completes `GOODBYE_GRACE` after the connection started closing.
pub(super) async fn closing_grace_over(conn: &Conn) {
    loop {
        if conn.out.borrow().closing.is_some() {
            return tokio::time::sleep(GOODBYE_GRACE).await;
        }
        conn.wake.notified().await;
    }
}

/// How often a parked catch-up page looks for room when nothing else wakes its writer.
pub(super) const PARKED_RETRY: Duration = Duration::from_millis(50);
