//! Browsers: a WebTransport session on the QUIC endpoint speaks the chat protocol as a native
//! connection does (same streams, datagrams, goodbyes), trusting the short-lived certificate
//! whose hash the web listener publishes.

use base64::Engine as _;
use chat_protocol::*;
use sha2::{Digest as _, Sha256};

use crate::TestDaemon;
use crate::admin::http;
use crate::client::Client;

/// `/webtransport.json` of the daemon's web listener.
async fn endpoint(daemon: &TestDaemon) -> serde_json::Value {
    endpoint_at(daemon.web_addr()).await
}

/// `/webtransport.json` of the web listener at `web`.
async fn endpoint_at(web: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = http(web, "GET", "/webtransport.json", None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A self-signed certificate and its key, written to `dir` as `NAME.pem` and `NAME.key`;
/// returns the two paths and the certificate's SHA-256.
fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    (cert, key, Sha256::digest(pair.cert.der().as_ref()).to_vec())
}

/// The published URL and the first certificate hash.
fn url_and_hash(endpoint: &serde_json::Value) -> (String, Vec<u8>) {
    let hash = &endpoint["serverCertificateHashes"][0];
    assert_eq!(hash["algorithm"], "sha-256");
    let value = base64::engine::general_purpose::STANDARD
        .decode(hash["value"].as_str().unwrap())
        .unwrap();
    (endpoint["url"].as_str().unwrap().to_owned(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_chats_with_a_native_client() {
    let daemon = TestDaemon::start();
    let published = endpoint(&daemon).await;
    assert_eq!(published["webtransport"], true);
    let (url, hash) = url_and_hash(&published);
    assert_eq!(url, format!("https://{}/chat/1", daemon.addr));

    let mut ann = Client::web(&url, hash.clone()).await.unwrap();
    let a = ann
        .hello(Some(&daemon.token("ann")), 1)
        .await
        .session
        .unwrap();
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);

    // Browser to terminal and back, on the session stream.
    let sent = ann.send_text(dm, 1, "from the browser").await;
    let got = bob.message().await;
    assert_eq!(
        (got.seq, got.sender, &got.body[..]),
        (sent.seq, a.user, &b"from the browser"[..])
    );
    let reply = bob.send_text(dm, 2, "from the terminal").await;
    let got = ann.message().await;
    assert_eq!(
        (got.seq, got.sender, &got.body[..]),
        (reply.seq, b.user, &b"from the terminal"[..])
    );

    // Typing on the datagram lanes, both ways: the session's datagrams carry the same frames.
    let typing = |active| {
        encode_frame_to_vec(&ClientFrame::Typing(TypingUpdate {
            conversation: dm,
            active,
        }))
        .unwrap()
    };
    let wait = std::time::Duration::from_millis(200);
    let session = ann.session().unwrap().clone();
    let mut reached_bob = false;
    for _ in 0..50 {
        session.send_datagram(typing(true).into()).unwrap();
        if let Ok(Ok(bytes)) = tokio::time::timeout(wait, bob.conn.read_datagram()).await {
            let frame = decode_datagram::<ServerFrame>(&bytes).unwrap();
            assert!(
                matches!(frame, ServerFrame::Event(Event::Typing(t)) if t.user == a.user && t.active)
            );
            reached_bob = true;
            break;
        }
    }
    assert!(
        reached_bob,
        "no typing datagram from the browser reached bob"
    );
    let mut reached_ann = false;
    for _ in 0..50 {
        bob.conn.send_datagram(typing(false).into()).unwrap();
        if let Ok(Ok(bytes)) = tokio::time::timeout(wait, session.read_datagram()).await {
            let frame = decode_datagram::<ServerFrame>(&bytes).unwrap();
            assert!(
                matches!(frame, ServerFrame::Event(Event::Typing(t)) if t.user == b.user && !t.active)
            );
            reached_ann = true;
            break;
        }
    }
    assert!(
        reached_ann,
        "no typing datagram from bob reached the browser"
    );

    // The browser got the short-lived certificate, not the native clients' one.
    let presented = ann
        .conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    assert_eq!(Sha256::digest(presented[0].as_ref()).to_vec(), hash);
    let native = chatd::tls::load_identity(&Default::default(), &daemon.dir).unwrap();
    assert_ne!(native.fingerprint(), hex::encode(&hash));

    // An operator sees which connection is a browser's.
    let (status, body) = http(daemon.admin_addr(), "GET", "/v1/connections", None).await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut transports: Vec<(String, String)> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap().to_owned();
            (field("name"), field("transport"))
        })
        .collect();
    transports.sort();
    assert_eq!(
        transports,
        [
            ("ann".into(), "webtransport".into()),
            ("bob".into(), "quic".into())
        ]
    );

    ann.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_for_another_path_is_refused_and_a_second_stream_ends_it() {
    let daemon = TestDaemon::start();
    let (url, hash) = url_and_hash(&endpoint(&daemon).await);
    let other = url.replace("/chat/1", "/chat/9");
    let refused = Client::web(&other, hash.clone()).await.err().unwrap();
    assert!(refused.to_string().contains("404"), "{refused}");

    let mut ann = Client::web(&url, hash).await.unwrap();
    ann.hello(Some(&daemon.token("ann")), 1)
        .await
        .session
        .unwrap();
    let session = ann.session().unwrap().clone();
    // The HTTP/3 handshake took the bidirectional credit beyond the session stream; the
    // unidirectional credit left (HTTP/3's QPACK streams, which this client does not open)
    // makes a second stream possible, and it ends the session.
    let no_credit = tokio::time::timeout(std::time::Duration::from_millis(300), session.open_bi());
    assert!(
        no_credit.await.is_err(),
        "a second bidirectional stream was granted"
    );
    let mut send = session.open_uni().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let mut goodbyes = Vec::new();
    while let Some(frame) = ann.next_frame().await {
        if let ServerFrame::Goodbye(g) = frame {
            goodbyes.push(g.code);
        }
    }
    assert_eq!(goodbyes, [GoodbyeCode::PROTOCOL_VIOLATION]);
    let closed = session.closed().await.to_string();
    assert!(closed.contains('4'), "closed with {closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_a_configured_certificate_as_it_is_and_nothing_when_webtransport_is_off() {
    // A configured certificate: nothing to pin, the page trusts it as any site's.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, configured) = certificate(dir.path(), "site");
    let daemon = TestDaemon::start_with(|config| {
        config.tls.cert = cert.clone();
        config.tls.key = key.clone();
    });
    let published = endpoint(&daemon).await;
    assert_eq!(published["serverCertificateHashes"], serde_json::json!([]));
    let url = published["url"].as_str().unwrap();
    let mut ann = Client::web(url, configured).await.unwrap();
    assert!(
        ann.hello(Some(&daemon.token("ann")), 1)
            .await
            .session
            .is_some()
    );
    ann.close().await;

    // WebTransport off: the handshake offers no h3, and nothing is published to pin.
    let daemon = TestDaemon::start_with(|config| config.web.webtransport = false);
    let published = endpoint(&daemon).await;
    assert_eq!(published["webtransport"], false);
    assert_eq!(published["serverCertificateHashes"], serde_json::json!([]));
    let native = chatd::tls::load_identity(&Default::default(), &daemon.dir).unwrap();
    let hash = hex::decode(native.fingerprint()).unwrap();
    let refused = Client::web(published["url"].as_str().unwrap(), hash).await;
    assert!(
        refused.is_err(),
        "a WebTransport session without webtransport"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_browsers_between_certificates_and_a_failed_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let development = crate::test_config(dir.path());
    let mut daemon = chatd::Daemon::start(development.clone()).unwrap();
    let web = daemon.web_addr().unwrap();
    let (url, hash) = url_and_hash(&endpoint_at(web).await);
    let keys = chatd::token::Keys::load(&Default::default(), dir.path()).unwrap();
    let now = chatd::unix_now();
    let token = keys.mint("ann", now, now + 3600);
    let session = |hash: Vec<u8>| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let mut ann = Client::web(&url, hash).await?;
            assert!(ann.hello(Some(&token), 1).await.session.is_some());
            ann.close().await;
            Ok::<(), web_transport_quinn::ClientError>(())
        }
    };
    session(hash.clone()).await.unwrap();

    // A certificate whose key is another's: the reload fails and nothing changes.
    let (site, site_key, site_hash) = certificate(dir.path(), "site");
    let (_, other_key, _) = certificate(dir.path(), "other");
    let mut broken = development.clone();
    (broken.tls.cert, broken.tls.key) = (site.clone(), other_key);
    assert!(daemon.reload(broken).is_err());
    assert_eq!(url_and_hash(&endpoint_at(web).await).1, hash);
    session(hash.clone()).await.unwrap();

    // A configured certificate: browsers get it, and nothing is published to pin.
    let mut configured = development.clone();
    (configured.tls.cert, configured.tls.key) = (site, site_key);
    daemon.reload(configured).unwrap();
    let published = endpoint_at(web).await;
    assert_eq!(published["serverCertificateHashes"], serde_json::json!([]));
    session(site_hash).await.unwrap();
    assert!(
        session(hash.clone()).await.is_err(),
        "the browser certificate after the switch"
    );

    // Back to the development certificate: the browser certificate again.
    daemon.reload(development).unwrap();
    assert_eq!(url_and_hash(&endpoint_at(web).await).1, hash);
    session(hash).await.unwrap();
    daemon.stop_fast_and_close();
}
