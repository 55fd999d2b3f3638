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
    let auth_timeout = Duration::from_secs(shard.shared.config().auth.auth_timeout_secs);
    let auth_deadline = Instant::now() + auth_timeout;
    // A browser's WebTransport session, or a native connection: from here on, one path.
    let session = if alpn(&quic).as_deref() == Some(crate::tls::H3) {
        match tokio::time::timeout_at(auth_deadline.into(), web_session(&quic)).await {
            Ok(Some(session)) => session,
            Ok(None) | Err(_) => {
                quic.close(
                    close_code(GoodbyeCode::AUTH_TIMEOUT).into(),
                    b"no WebTransport session",
                );
                shard.conns.borrow_mut().address_left(ip);
                return;
            }
        }
    } else {
        // No more stream credit than the handshake gave (WebTransport's, when it is on): the
        // session stream is the one stream a native connection has.
        quic.set_max_concurrent_bi_streams(1u32.into());
        quic.set_max_concurrent_uni_streams(0u32.into());
        web_transport_quinn::Session::raw(quic)
    };
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
        quic: session.clone(),
        shared: Arc::clone(&shard.shared),
        unauthenticated,
        sends: RefCell::new(None),
        session: RefCell::new(Session::new(Arc::clone(&shard.shared.memory))),
        wake: tokio::sync::Notify::new(),
        slot: tokio::sync::Notify::new(),
    });
    shard.conns.borrow_mut().map.insert(id, Rc::clone(&conn));
    shard.shared.connections[shard.id].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    shard.shared.memory.charge(CONNECTION_COST);
    match tokio::time::timeout_at(auth_deadline.into(), session.accept_bi()).await {
        Ok(Ok((send, recv))) => {
            spawn_local(write_loop(Rc::clone(&shard), Rc::clone(&conn), send));
            spawn_local(lanes(Rc::clone(&shard), Rc::clone(&conn)));
            read_loop(&shard, &conn, recv, auth_deadline).await;
        }
        Ok(Err(_)) => conn.with(Session::release_all),
        Err(_) => {
            conn.with(Session::release_all);
            session.close(close_code(GoodbyeCode::AUTH_TIMEOUT), b"no session stream");
        }
    }
    ended(&shard, &conn, ip);
}

/// The protocol the handshake agreed on.
fn alpn(quic: &quinn::Connection) -> Option<Vec<u8>> {
    quic.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The HTTP/3 side of a browser's connection: its settings and its CONNECT request, answered
/// 200 for the chat protocol's path ([`crate::tls::WEBTRANSPORT_PATH`]) and 404 otherwise.
async fn web_session(quic: &quinn::Connection) -> Option<web_transport_quinn::Session> {
    let request = match web_transport_quinn::Request::accept(quic.clone()).await {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(error = %e, "WebTransport handshake failed");
            return None;
        }
    };
    if request.url.path() != crate::tls::WEBTRANSPORT_PATH {
        tracing::debug!(url = %request.url, "WebTransport session for an unknown path refused");
        let _ = request
            .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
            .await;
        // The answer is written; the client closes once it has read it (or the caller does
        // at the deadline).
        let _ = tokio::time::timeout(REFUSAL_GRACE, quic.closed()).await;
        return None;
    }
    request.ok().await.ok()
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
    if let Some((user, device)) = conn.user() {
        let sessions = &shard.shared.sessions;
        sessions.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if shard.conns.borrow_mut().session_ended(user, id) {
            shard.shared.placement.left(user, shard.id);
        }
        let at = ConnRef {
            link: crate::shard::Link::HERE,
            shard: shard.id,
            conn: id,
        };
        let offline = registry::Op::Offline { user, device, at };
        shard.send(shard.shared.registry_of(user), ShardMsg::Registry(offline));
        let followed = conn.with(Session::unfollow_all);
        requests::unwatch(shard, at, followed);
    }
    conn.goodbye(GoodbyeCode::NORMAL, "session stream closed");
}

/// When the session ends unless the client does something ([`Session::deadline`]).
pub(super) fn session_deadline(conn: &Conn, auth_deadline: Instant) -> Instant {
    let session = conn.session.borrow();
    session.deadline(auth_deadline, Instant::now(), crate::unix_now())
}

/// At the session's deadline: `true` when the session ended (the goodbye is queued), `false`
/// when the deadline moved ([`Session::deadline_reached`]).
pub(super) fn deadline_reached(conn: &Conn, auth_deadline: Instant) -> bool {
    conn.with(|s| s.deadline_reached(auth_deadline, Instant::now(), crate::unix_now()))
}

/// The close code of a goodbye: the QUIC application error code of a native connection, the
/// WebTransport session's close code of a browser's.
pub(super) fn close_code(code: GoodbyeCode) -> u32 {
    u32::from(code.0)
}

pub(super) async fn read_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mut recv: web_transport_quinn::RecvStream,
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
            return conn.with(|s| s.violation(&e));
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let ClientFrame::Request { id, request } = &frame {
                        let reserve = budget::reply_reservation(request);
                        match admit(conn, *id, reserve, auth_deadline).await {
                            Admission::Admitted => {}
                            Admission::Refused => continue,
                            _ => return,
                        }
                    }
                    if !frame_arrived(shard, conn, frame) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return conn.with(|s| s.violation(&e)),
            }
        }
        if conn.session.borrow().closing().is_some() {
            return;
        }
    }
}

/// Waits until request `id` may be read ([`Session::admit`]): `Admitted` (its answer's
/// reservation is charged), `Refused` (answered `OVERLOADED`), or `Closed` (the connection
/// ended, or its session's deadline passed while waiting).
pub(super) async fn admit(
    conn: &Conn,
    id: RequestId,
    reserve: usize,
    auth_deadline: Instant,
) -> Admission {
    loop {
        // Registered before the check, so a release in between is not missed.
        let user = conn.session.borrow().user_budget_ref().cloned();
        let freed = user.as_ref().map(|u| u.freed.notified());
        let mut freed = std::pin::pin!(freed);
        if let Some(freed) = freed.as_mut().as_pin_mut() {
            freed.enable();
        }
        let limits = conn.limits();
        let wait_for_user = match conn.with(|s| s.admit(id, reserve, &limits)) {
            Admission::Wait { user } => user,
            // Authenticated: the user's shared budget is on its way from their registry
            // shard; nothing is read until it is here.
            Admission::AwaitBudget => false,
            done => return done,
        };
        // The session's deadline holds while the reader waits here too: a client that stops
        // reading must still time out unauthenticated, or end when its token expires. When
        // the connection's own budget is what is missing, its writer frees it; when it is the
        // user's, any of the user's connections may.
        let deadline = session_deadline(conn, auth_deadline);
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
            () = closed(conn) => return Admission::Closed,
        }
    }
}

/// Reads the ephemeral lane, and ends a session that opens a second stream. Datagrams carry
/// typing updates only; anything else, or a datagram that does not decode, is dropped (the
/// lane is unreliable by design). A stream beyond the session stream (which the handshake's
/// stream credit allows when WebTransport is on) is a protocol violation.
pub(super) async fn lanes(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        let datagram = tokio::select! {
            d = conn.quic.read_datagram() => d,
            s = conn.quic.accept_bi() => {
                if s.is_ok() {
                    conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "a session has one stream");
                }
                return;
            }
            s = conn.quic.accept_uni() => {
                if s.is_ok() {
                    conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "a session has one stream");
                }
                return;
            }
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
pub(super) async fn write_loop(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut send: web_transport_quinn::SendStream,
) {
    let mut batch: Vec<Bytes> = Vec::new();
    let closing = loop {
        let Transmit { bytes, closing } = conn.with(|s| s.transmit(&mut batch, 64));
        if batch.is_empty() {
            if let Some(code) = closing {
                break Some(code);
            }
            // An idle connection keeps no room for a burst it had.
            batch.shrink_to(IDLE_FRAMES);
            // A parked catch-up page waits for room in budgets that other connections (of
            // the user, of the daemon) may free, or for the read pool: look again now and
            // then (parking wakes this loop, so the timer starts).
            let parked = conn.session.borrow().parked();
            tokio::select! {
                () = conn.wake.notified() => continue,
                () = tokio::time::sleep(PARKED_RETRY), if parked => {
                    resume_parked(&shard, &conn);
                    continue;
                }
                _ = closed(&conn) => break None,
            }
        }
        // Once the connection is closing, what is left gets `GOODBYE_GRACE` to be written: a
        // peer that grants no flow-control credit cannot hold the connection open.
        let written = tokio::select! {
            result = send.write_all_chunks(&mut batch) => result.is_ok(),
            () = closing_grace_over(&conn) => {
                break conn.session.borrow().closing();
            }
        };
        if !written {
            break None;
        }
        batch.clear();
        // Written: quinn holds the bytes now, within its flow-control windows.
        conn.with(|s| s.written(bytes));
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
    conn.with(Session::release_all);
}

/// Completes when the QUIC connection is closed, by either side (for a WebTransport session
/// too: the session's own `closed` waits for its close capsule to be delivered).
pub(super) async fn closed(conn: &Conn) {
    let _ = quinn::Connection::closed(&conn.quic).await;
}

/// How long a refused WebTransport request's answer may take to be read.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// How long a closing connection's last frames (its goodbye) may take to be written.
pub(super) const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Completes `GOODBYE_GRACE` after the connection started closing.
pub(super) async fn closing_grace_over(conn: &Conn) {
    loop {
        if conn.session.borrow().closing().is_some() {
            return tokio::time::sleep(GOODBYE_GRACE).await;
        }
        conn.wake.notified().await;
    }
}

/// How often a parked catch-up page looks for room when nothing else wakes its writer.
pub(super) const PARKED_RETRY: Duration = Duration::from_millis(50);
