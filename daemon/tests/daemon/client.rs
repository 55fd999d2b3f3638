//! A minimal test client on chat-protocol and quinn: enough to drive the daemon frame by frame
//! (the SDK will replace it for higher-level tests).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::*;

/// How long a test waits for any expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Client {
    pub conn: quinn::Connection,
    /// The session stream: a QUIC stream, or a WebTransport session's.
    send: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    recv: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    decoder: FrameDecoder<ServerFrame>,
    next_id: u32,
    /// Events that arrived while waiting for a response.
    pub events: VecDeque<Event>,
    /// Frames other than responses and events that arrived while waiting.
    pub other: VecDeque<ServerFrame>,
    endpoint: Endpoint,
}

/// What a client's connection lives on.
enum Endpoint {
    Native(quinn::Endpoint),
    /// A WebTransport client and its session.
    Web(web_transport_quinn::Client, web_transport_quinn::Session),
}

pub fn client_config(cert: &Path) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![chat_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

impl Client {
    /// Connects and opens the session stream (no hello yet).
    pub async fn connect(addr: SocketAddr, cert: &Path) -> Client {
        Client::connect_with(addr, cert, None).await
    }

    /// Like `connect`, with a given receive window for the session stream (a small one makes
    /// a client that reads slowly).
    pub async fn connect_with(addr: SocketAddr, cert: &Path, stream_window: Option<u32>) -> Client {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut config = client_config(cert);
        if let Some(window) = stream_window {
            let mut transport = quinn::TransportConfig::default();
            transport
                .stream_receive_window(window.into())
                .receive_window(window.into());
            config.transport_config(Arc::new(transport));
        }
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Client::from_streams(conn, send, recv, endpoint)
    }

    /// Connects and says hello with `token`; returns the client and the session.
    pub async fn login(
        addr: SocketAddr,
        cert: &Path,
        token: &str,
        device: u64,
    ) -> (Client, Session) {
        let mut client = Client::connect(addr, cert).await;
        let ok = client.hello(Some(token), device).await;
        let session = ok
            .session
            .unwrap_or_else(|| panic!("hello did not authenticate: {:?}", client.other));
        (client, session)
    }

    /// A client on a connection of `endpoint` whose session stream is open (no hello yet).
    pub fn from_streams(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        endpoint: quinn::Endpoint,
    ) -> Client {
        Client::on(
            conn,
            Box::new(send),
            Box::new(recv),
            Endpoint::Native(endpoint),
        )
    }

    fn on(
        conn: quinn::Connection,
        send: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        recv: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        endpoint: Endpoint,
    ) -> Client {
        Client {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(),
            next_id: 1,
            events: VecDeque::new(),
            other: VecDeque::new(),
            endpoint,
        }
    }

    /// Connects as a browser does: WebTransport to `url`, trusting the certificate whose
    /// SHA-256 is `hash` (`serverCertificateHashes`), with its first bidirectional stream
    /// as the session stream (no hello yet).
    pub async fn web(url: &str, hash: Vec<u8>) -> Result<Client, web_transport_quinn::ClientError> {
        let client =
            web_transport_quinn::ClientBuilder::new().with_server_certificate_hashes(vec![hash])?;
        let url: url::Url = url.parse().unwrap();
        let session = client.connect(url).await?;
        let (send, recv) = session.open_bi().await.unwrap();
        let conn = quinn::Connection::clone(&session);
        Ok(Client::on(
            conn,
            Box::new(send),
            Box::new(recv),
            Endpoint::Web(client, session),
        ))
    }

    /// The WebTransport session, for a client of [`Client::web`].
    pub fn session(&self) -> Option<&web_transport_quinn::Session> {
        match &self.endpoint {
            Endpoint::Web(_, session) => Some(session),
            Endpoint::Native(_) => None,
        }
    }

    /// Closes the connection and waits until the daemon was told.
    pub async fn close(self) {
        match self.endpoint {
            Endpoint::Native(endpoint) => {
                self.conn.close(0u32.into(), b"bye");
                endpoint.wait_idle().await;
            }
            Endpoint::Web(_client, session) => {
                session.close(0, b"bye");
                let _ = tokio::time::timeout(WAIT, session.closed()).await;
            }
        }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn write(&mut self, frame: &ClientFrame) {
        assert!(self.try_write(frame).await, "the stream is closed");
    }

    /// Writes a frame; `false` when the stream or connection is closed.
    pub async fn try_write(&mut self, frame: &ClientFrame) -> bool {
        use tokio::io::AsyncWriteExt as _;
        let bytes = encode_frame_to_vec(frame).unwrap();
        self.send.write_all(&bytes).await.is_ok()
    }

    /// Sends a ping (if the stream still takes it) so that a packet leaves, then waits for
    /// the connection to end; how it ended. Fails the test after [`WAIT`].
    pub async fn ended_after_a_packet(&mut self) -> quinn::ConnectionError {
        let _ = self
            .try_write(&ClientFrame::Request {
                id: RequestId(99),
                request: Request::Ping,
            })
            .await;
        tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("the connection did not end")
    }

    /// The next frame, or `None` when the stream ended.
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Some(frame);
            }
            use tokio::io::AsyncReadExt as _;
            let mut chunk = vec![0; self.decoder.space().min(64 * 1024)];
            let read = tokio::time::timeout(WAIT, self.recv.read(&mut chunk))
                .await
                .expect("timed out waiting for a frame");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.push(&chunk[..n]).unwrap(),
            }
        }
    }

    pub async fn hello(&mut self, token: Option<&str>, device: u64) -> HelloOk {
        let auth = token.map(|t| Auth {
            token: t.to_owned(),
            resume: None,
        });
        self.hello_with(auth, device).await
    }

    /// Connects and says hello with a token and a resume.
    pub async fn resume(
        addr: SocketAddr,
        cert: &Path,
        token: &str,
        device: u64,
        cursors: Vec<Cursor>,
    ) -> (Client, Session) {
        let mut client = Client::connect(addr, cert).await;
        let auth = Auth {
            token: token.to_owned(),
            resume: Some(Resume { cursors }),
        };
        let ok = client.hello_with(Some(auth), device).await;
        (client, ok.session.expect("resume hello authenticates"))
    }

    pub async fn hello_with(&mut self, auth: Option<Auth>, device: u64) -> HelloOk {
        self.write(&ClientFrame::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            client: "test".into(),
            device: DeviceId(device),
            auth,
        }))
        .await;
        loop {
            match self
                .next_frame()
                .await
                .expect("stream ended before HelloOk")
            {
                ServerFrame::HelloOk(ok) => return ok,
                other => self.other.push_back(other),
            }
        }
    }

    /// Sends a request and waits for its answer; events meanwhile are kept in `events`.
    pub async fn request(&mut self, request: Request) -> Result<Response, ErrorBody> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.write(&ClientFrame::Request { id, request }).await;
        loop {
            match self
                .next_frame()
                .await
                .expect("stream ended before the response")
            {
                ServerFrame::Response { id: got, response } if got == id => return Ok(response),
                ServerFrame::Error {
                    id: Some(got),
                    error,
                } if got == id => return Err(error),
                ServerFrame::Event(event) => self.events.push_back(event),
                other => self.other.push_back(other),
            }
        }
    }

    pub async fn ok(&mut self, request: Request) -> Response {
        let desc = format!("{request:?}");
        self.request(request)
            .await
            .unwrap_or_else(|e| panic!("{desc} failed: {e:?}"))
    }

    /// Creates a room (panics if refused); returns its id.
    pub async fn create_room(&mut self, name: &str, invite_only: bool) -> RoomId {
        match self
            .ok(Request::CreateRoom {
                name: name.into(),
                invite_only,
            })
            .await
        {
            Response::Room(info) => info.room,
            other => panic!("{other:?}"),
        }
    }

    pub async fn code(&mut self, request: Request) -> ErrorCode {
        let desc = format!("{request:?}");
        match self.request(request).await {
            Err(e) => e.code,
            Ok(r) => panic!("{desc} succeeded with {r:?}"),
        }
    }

    /// The next event (buffered ones first).
    pub async fn event(&mut self) -> Event {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        loop {
            match self
                .next_frame()
                .await
                .expect("stream ended while waiting for an event")
            {
                ServerFrame::Event(event) => return event,
                other => self.other.push_back(other),
            }
        }
    }

    /// The next message event, skipping others.
    pub async fn message(&mut self) -> Message {
        loop {
            if let Event::Message(m) = self.event().await {
                return m;
            }
        }
    }

    pub async fn send_text(
        &mut self,
        conversation: ConversationId,
        op: u64,
        text: &str,
    ) -> SendAck {
        match self
            .ok(Request::Send(SendMessage {
                conversation,
                op: OpId(op),
                content_type: ContentType::TEXT,
                reply_to: None,
                body: text.as_bytes().to_vec(),
                mentions: Vec::new(),
            }))
            .await
        {
            Response::Sent(ack) => ack,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The first page of this user's conversations.
    pub async fn conversations(&mut self) -> Vec<ConversationSummary> {
        match self
            .ok(Request::Conversations {
                after: None,
                limit: 100,
            })
            .await
        {
            Response::Conversations(page) => page.conversations,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn history(
        &mut self,
        conversation: ConversationId,
        from: HistoryFrom,
        limit: u16,
    ) -> HistoryPage {
        match self
            .ok(Request::History(HistoryQuery {
                conversation,
                from,
                limit,
                order: Order::OldestFirst,
                thread: None,
            }))
            .await
        {
            Response::History(page) => page,
            other => panic!("unexpected {other:?}"),
        }
    }
}
