//! The QUIC side of start-up: the limits announced in `HelloOk`, the server configuration,
//! and the UDP sockets (one per shard on the shared port).

use super::*;

/// The limits a daemon with `config` announces in `HelloOk`.
#[must_use]
pub fn wire_limits(config: &Config) -> chat_protocol::Limits {
    let l = &config.limits;
    let secs_ms = |s: u64| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX);
    chat_protocol::Limits {
        max_frame: u32::try_from(chat_protocol::limits::MAX_CLIENT_FRAME).unwrap_or(u32::MAX),
        max_body: u32::try_from(l.max_body).unwrap_or(u32::MAX),
        max_page: chat_protocol::limits::MAX_PAGE,
        send_rate: l.send_rate,
        send_burst: l.send_burst,
        max_in_flight: l.max_in_flight,
        max_rooms_per_user: l.max_rooms_per_user,
        max_room_members: l.max_room_members,
        max_resume_gap: l.max_resume_gap,
        idle_timeout_ms: secs_ms(l.idle_timeout_secs),
        auth_timeout_ms: secs_ms(config.auth.auth_timeout_secs),
        typing_ttl_ms: chat_protocol::limits::TYPING_TTL_MS,
    }
}

/// The quinn server configuration of every shard: TLS from `identity` (and `browsers`), one
/// bidirectional stream per connection (two bidirectional and three unidirectional ones with
/// WebTransport on, see below), the flow-control windows and timeouts of `config`. Public so
/// the bench relay (the floor) runs on exactly the same QUIC and TLS settings.
///
/// # Errors
/// When rustls or quinn refuse the certificate or a value.
pub fn quic_server_config(
    config: &Config,
    identity: &tls::Identity,
    browsers: &tls::Browsers,
) -> Result<Arc<quinn::ServerConfig>, Error> {
    let rustls = tls::server_config(identity, browsers)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls)
        .map_err(|e| Error::Start(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = Duration::from_secs(config.limits.idle_timeout_secs);
    // The stream credit of the handshake is the same for every connection, before its ALPN
    // is known. A WebTransport session needs more than a native one: the CONNECT request and
    // the session stream (bidirectional), the browser's HTTP/3 control and QPACK streams
    // (unidirectional). A native connection gets no more credit after its handshake, and
    // opening a stream beyond its session stream ends it (`conn::io`).
    let (bidi, uni) = if browsers.webtransport {
        (2u32, 3u32)
    } else {
        (1, 0)
    };
    transport
        .max_idle_timeout(Some(
            idle.try_into()
                .map_err(|_| Error::Start("idle timeout too large".into()))?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(config.limits.keep_alive_secs)))
        .max_concurrent_bidi_streams(bidi.into())
        .max_concurrent_uni_streams(uni.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((512u32 * 1024).into())
        .send_window(2 * 1024 * 1024)
        .datagram_receive_buffer_size(Some(64 * 1024));
    server.transport_config(Arc::new(transport));
    // No NEW_TOKEN address-validation tokens (a dependency, web-transport-quinn, turns on
    // quinn's `bloom` feature, whose default sends two per connection and keeps a shared
    // 10 MiB log of used ones): address validation stays the Retry of `conn::accept_loop`.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0).log(Arc::new(quinn::NoneTokenLog));
    server.validation_token_config(tokens);
    // SO_REUSEPORT alone steers by address, and a migrated connection would reach another
    // shard; with routable connection ids the shards' sockets steer by them (`steer`).
    server.migration(!config.cluster.server_id.is_empty());
    Ok(Arc::new(server))
}

/// Binds `count` UDP sockets to `addr` with SO_REUSEPORT (the first one picks the port when
/// `addr` has port 0), with large buffers. Public for the bench relay, as above.
///
/// # Errors
/// When a socket cannot be created or bound.
pub fn bind(addr: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| Error::Bind(addr, e))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| Error::Bind(addr, e))?;
        if addr.is_ipv6() {
            socket
                .set_only_v6(false)
                .map_err(|e| Error::Bind(addr, e))?;
        }
        for (set, get, name) in [
            (
                Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
                Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
                "receive",
            ),
            (
                Socket::set_send_buffer_size,
                Socket::send_buffer_size,
                "send",
            ),
        ] {
            let _ = set(&socket, UDP_BUFFER);
            // Linux reports double the usable size.
            if get(&socket).map_or(0, |n| n / 2) < UDP_BUFFER && sockets.is_empty() {
                tracing::warn!(
                    wanted = UDP_BUFFER,
                    got = get(&socket).unwrap_or(0) / 2,
                    "the kernel caps the UDP {name} buffer; raise the sysctls net.core.rmem_max and net.core.wmem_max"
                );
            }
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::Bind(addr, e))?;
        socket
            .bind(&bound.into())
            .map_err(|e| Error::Bind(bound, e))?;
        let socket: UdpSocket = socket.into();
        if sockets.is_empty() {
            bound = socket.local_addr().map_err(|e| Error::Bind(addr, e))?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}
