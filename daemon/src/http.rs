//! The daemon's HTTP/1.1 listeners (the admin listener, the web listener): each on its own
//! thread with a current-thread runtime, served by hyper, bounded the same way: at most
//! [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's backlog) and request
//! headers within [`HEADER_TIMEOUT`]. What a listener answers is its [`Service`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

/// Connections one listener serves at once.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener answers, and what runs beside its connections.
pub(crate) trait Service: Send + Sync + Sized + 'static {
    /// Set up the listener's thread (before its runtime starts).
    fn enter(&self) {}

    /// The answer to one request.
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>>;

    /// Runs on the listener's thread while it serves (upkeep, timers); it never needs to
    /// return.
    fn background(self: Arc<Self>) -> impl Future<Output = ()>;
}

/// Binds a listener's address (before the daemon reports ready, so a taken port fails the
/// start).
///
/// # Errors
/// When the address cannot be bound.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A running listener thread.
pub(crate) struct Listener {
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Listener {
    /// Starts thread `name` serving `listener` with `service`.
    pub(crate) fn start<S: Service>(
        name: &str,
        listener: std::net::TcpListener,
        service: S,
    ) -> std::io::Result<Listener> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::clone(&stop);
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                service.enter();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        return tracing::error!(error = %e, listener = thread_name, "an HTTP listener cannot start its runtime");
                    }
                };
                runtime.block_on(serve(listener, Arc::new(service), &stopped));
                // Work still running on the blocking pool (a compaction, a backup) is not
                // waited for: the stop must not hang on it (its thread ends with the process).
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Listener {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener (requests in progress are dropped).
    pub(crate) fn stop(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.stop.notify_one();
        self.thread.take()
    }
}

async fn serve<S: Service>(
    listener: std::net::TcpListener,
    service: Arc<S>,
    stop: &tokio::sync::Notify,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(error = %e, "an HTTP listener cannot start"),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let local = tokio::task::LocalSet::new();
    // Its own task: it runs while every connection slot is taken too.
    local.spawn_local(Arc::clone(&service).background());
    local
        .run_until(async {
            loop {
                let permit = tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = stop.notified() => return,
                };
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            crate::logging::throttled!(warn, error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = stop.notified() => return,
                };
                let service = Arc::clone(&service);
                tokio::task::spawn_local(async move {
                    let handler = hyper::service::service_fn(move |request| {
                        let service = Arc::clone(&service);
                        async move { Ok::<_, Infallible>(service.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                        .await;
                    drop(permit);
                });
            }
        })
        .await;
}

/// A response with a body.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// A JSON error: `{"error": reason}`.
pub(crate) fn failure(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": reason }))
}
