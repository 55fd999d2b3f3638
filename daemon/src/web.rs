//! The web listener (`[web]`): HTTP/1.1 on TCP for browsers, on its own `web` thread
//! ([`crate::http`]). It answers:
//!
//! - `GET /webtransport.json`: where the daemon's WebTransport endpoint is (the QUIC address,
//!   path [`crate::tls::WEBTRANSPORT_PATH`]) and, with the development certificate, the
//!   SHA-256 hash of the short-lived certificate browsers get ([`crate::tls::BrowserCert`]),
//!   for `new WebTransport(url, { serverCertificateHashes })`. A page fetches it again before
//!   each connection: the certificate is rotated, and this thread is what rotates it.
//!
//! - the web app (`GET /`, `/app.js`, `/app.css`): `web/`, built with esbuild into
//!   `web/dist/app.js` and embedded in the binary, so `make run` and one URL are all a
//!   newcomer needs (`make test` checks that the embedded build is the sources' build).
//!
//! Nothing here needs a secret or changes state: the hash and the address are what any
//! client learns in a handshake, the app is public.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::http::{Service, failure, json};
use crate::tls::BrowserCert;

/// Starts the web listener's thread serving `listener`: it publishes `browsers` for the QUIC
/// endpoint at `quic`.
pub(crate) fn start(
    listener: std::net::TcpListener,
    browsers: &crate::tls::Browsers,
    quic: SocketAddr,
) -> std::io::Result<crate::http::Listener> {
    let web = Web {
        webtransport: browsers.webtransport,
        browser: browsers.cert.clone(),
        quic,
    };
    let web = crate::http::Listener::start("web", listener, web)?;
    tracing::info!(addr = %web.addr(), "web listener up: http://{}/", web.addr());
    Ok(web)
}

/// The web app's files: path, content type, bytes.
const APP: [(&str, &str, &[u8]); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/app.css"),
    ),
];

/// The app's own files only; its WebTransport session may go to any https origin (the QUIC
/// endpoint is one, on another scheme and possibly another host).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' https:; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// How often the browser certificate is checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// What the web listener serves.
struct Web {
    /// Whether the endpoint takes WebTransport sessions.
    webtransport: bool,
    /// The short-lived certificate browsers get while it is in use.
    browser: Option<Arc<BrowserCert>>,
    /// The QUIC endpoint's address.
    quic: SocketAddr,
}

impl Web {
    /// `/webtransport.json`.
    fn endpoint(&self) -> serde_json::Value {
        let path = crate::tls::WEBTRANSPORT_PATH;
        // An unspecified address (0.0.0.0) names no host: the page uses its own.
        let url =
            (!self.quic.ip().is_unspecified()).then(|| format!("https://{}{path}", self.quic));
        let browser = self.browser.as_ref().filter(|cert| cert.in_use());
        let hashes: Vec<serde_json::Value> = browser
            .iter()
            .map(|cert| {
                serde_json::json!({
                    "algorithm": "sha-256",
                    "value": base64::engine::general_purpose::STANDARD.encode(cert.hash()),
                })
            })
            .collect();
        let valid_until = browser.map(|cert| {
            cert.not_after()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        serde_json::json!({
            "webtransport": self.webtransport,
            "url": url,
            "port": self.quic.port(),
            "path": path,
            "serverCertificateHashes": hashes,
            "validUntil": valid_until,
        })
    }
}

/// One file of the app, with the headers that keep it to itself.
fn app_file(content_type: &str, bytes: &'static [u8]) -> Response<Full<Bytes>> {
    let mut response = crate::http::reply(StatusCode::OK, content_type, Bytes::from_static(bytes));
    let headers = response.headers_mut();
    for (name, value) in [
        (
            hyper::header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ),
        (hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (hyper::header::REFERRER_POLICY, "no-referrer"),
        // A new build of the daemon serves a new app: no stale copy.
        (hyper::header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

impl Service for Web {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/webtransport.json") => {
                let mut response = json(StatusCode::OK, &self.endpoint());
                let headers = response.headers_mut();
                headers.insert(
                    hyper::header::CACHE_CONTROL,
                    hyper::header::HeaderValue::from_static("no-store"),
                );
                // Public facts (an address, a certificate's hash): pages served elsewhere
                // may read them too.
                headers.insert(
                    hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    hyper::header::HeaderValue::from_static("*"),
                );
                response
            }
            (&Method::GET | &Method::HEAD, path) => {
                let path = if path == "/index.html" { "/" } else { path };
                match APP.iter().find(|(p, _, _)| *p == path) {
                    Some((_, content_type, bytes)) => app_file(content_type, bytes),
                    None => failure(StatusCode::NOT_FOUND, "no such page"),
                }
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "the web listener only serves GET",
            ),
        }
    }

    async fn background(self: Arc<Self>) {
        let Some(cert) = self.browser.clone() else {
            return;
        };
        let mut check = tokio::time::interval(ROTATION_CHECK);
        loop {
            check.tick().await;
            match cert.rotate_if_due(SystemTime::now()) {
                Ok(true) => tracing::info!(
                    hash = %hex::encode(cert.hash()),
                    "rotated the browser certificate (WebTransport serverCertificateHashes)"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot rotate the browser certificate"),
            }
        }
    }
}
