//! The relay's HTTP API (`hark relay --http ADDR`, `http.listen`; on loopback in `hark
//! serve`): health and readiness, history over the journal (native `/v1/events` and
//! datagrepper-compatible `/raw` and `/id`), submissions (`POST /v1/submit`) and forge
//! webhooks through the relay's own submit path, the live stream (`/v1/stream`, SSE) and
//! the bus page (`/`). axum on a thread and a runtime of its own,
//! as for the metrics endpoint: the relay itself has no async runtime. Everything that
//! touches SQLite runs in `spawn_blocking`.

pub mod api;
pub mod client;
pub mod datagrepper;
pub mod hooks;
pub mod limit;
pub mod listen;
pub mod page;
pub mod stream;
pub mod submit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::journal::Journal;
use crate::metrics::Registry;

/// How long requests in flight get once the server is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Read-only journal connections kept for reuse.
const POOLED_JOURNALS: usize = 4;

/// What the HTTP server needs, resolved from config and flags.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// PEM certificate chain and key: HTTPS; `None`: plain HTTP (loopback, or behind a
    /// reverse proxy that terminates TLS).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The relay's journal, for history; `None`: the history endpoints answer 404.
    pub journal: Option<PathBuf>,
    /// The relay's name, for answers.
    pub relay: String,
    /// Largest request body accepted (413 beyond).
    pub max_body: usize,
    /// A request (its head included) must be read and answered within this.
    pub request_timeout: Duration,
    /// POST requests per second per client address (0: no limit), and the burst.
    pub rate_limit: u32,
    pub rate_burst: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Forge webhooks, loaded.
    pub hooks: Arc<Vec<hooks::Hook>>,
}

/// Shared by every request.
pub struct State {
    pub opts: HttpOptions,
    /// Set once the relay's journal is open and its sockets are bound.
    pub ready: Arc<AtomicBool>,
    pub metrics: Registry,
    /// The relay's submit path; `None` without a relay's ZeroMQ context.
    pub bridge: Option<Arc<submit::Bridge>>,
    /// The relay's published events, for `/v1/stream`.
    pub feed: Option<stream::Feed>,
    pub limiter: limit::Limiter,
    journals: Mutex<Vec<Journal>>,
}

/// An error answer: a status and a clear message, as JSON `{"error": ...}`.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

impl State {
    /// Run `f` on a read-only journal connection on the blocking pool.
    pub async fn with_journal<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Journal) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let Some(path) = self.opts.journal.clone() else {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "no history: this relay keeps no journal (relay.journal)",
            ));
        };
        let state = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let pooled = state.journals.lock().ok().and_then(|mut p| p.pop());
            let journal = match pooled {
                Some(j) => j,
                None => Journal::open_read_only(&path).map_err(|e| {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the journal cannot be read: {e}"),
                    )
                })?,
            };
            let result = f(&journal);
            if let Ok(mut pool) = state.journals.lock() {
                if pool.len() < POOLED_JOURNALS {
                    pool.push(journal);
                }
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the query failed: {e}"),
            )),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The running server; dropping it stops serving and closes the port.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Bind, load TLS files, and serve on a thread of its own. Errors (an address in use,
    /// an unreadable certificate) come back here, before the relay says it is ready.
    /// `relay` is the relay's ZeroMQ context (its submit ROUTER is bound on
    /// [`submit::INPROC_SUBMIT`] there).
    pub fn start(
        opts: HttpOptions,
        relay: Option<zmq::Context>,
        ready: Arc<AtomicBool>,
        metrics: Registry,
    ) -> anyhow::Result<HttpServer> {
        let context = || format!("cannot serve HTTP on {}", opts.listen);
        let std_listener = std::net::TcpListener::bind(&opts.listen).with_context(context)?;
        std_listener.set_nonblocking(true).with_context(context)?;
        let addr = std_listener.local_addr().with_context(context)?;
        let tls = match &opts.tls {
            Some((cert, key)) => Some(listen::tls_config(cert, key)?),
            None => None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("relay-http")
            .enable_io()
            .enable_time()
            .build()
            .context("starting the HTTP runtime")?;
        let listener = {
            let _guard = rt.enter();
            let tcp = tokio::net::TcpListener::from_std(std_listener).with_context(context)?;
            listen::Listener::start(tcp, tls.clone())?
        };
        tracing::info!(
            "HTTP API on {}://{addr}/",
            if tls.is_some() { "https" } else { "http" }
        );
        let state = Arc::new(State {
            limiter: limit::Limiter::new(opts.rate_limit, opts.rate_burst),
            opts,
            ready,
            metrics,
            feed: relay.as_ref().map(stream::Feed::start).transpose()?,
            bridge: relay.map(|ctx| Arc::new(submit::Bridge::new(ctx))),
            journals: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("relay-http".into())
            .spawn(move || {
                rt.block_on(serve(listener, state, stopped));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("starting the HTTP thread")?;
        Ok(HttpServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: listen::Listener,
    state: Arc<State>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let trusted_proxies = Arc::new(state.opts.trusted_proxies.clone());
    let header_deadline = state.opts.request_timeout;
    let app = api::router(state);
    let (graceful, deadline) = crate::metrics::shutdown(stopped, STOP_GRACE);
    let server = listen::serve(listener, app, header_deadline, trusted_proxies, graceful);
    tokio::select! {
        _ = server => {}
        _ = deadline => {}
    }
}
