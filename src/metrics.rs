//! Metrics shared by every component: the one table of metric families (name, type, help),
//! the registry of their series, the Prometheus text exposition (format 0.0.4) and the
//! HTTP endpoint (axum) that serves it on `/metrics`.
//!
//! A series is a metric name plus label pairs. Increments take an uncontended mutex, which
//! costs tens of nanoseconds: far below the cost of the events being counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: what `# HELP` and `# TYPE` say about it.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn f(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Every metric hark records, in one place so that names, types and help text cannot drift
/// apart between the code that records and the page that documents (a unit test checks
/// that every `"hark_…"` name in `src/` is here).
pub const FAMILIES: &[Family] = &[
    // --- admission (relay and trigger) ---
    f(
        "hark_events_received_total",
        Kind::Counter,
        "Frames the trigger (or tail/record) received from its sources.",
    ),
    f(
        "hark_events_admitted_total",
        Kind::Counter,
        "Events that passed admission (trust, freshness, dedupe).",
    ),
    f(
        "hark_events_duplicate_total",
        Kind::Counter,
        "Events dropped because their uuid was already seen within the dedupe window.",
    ),
    f(
        "hark_events_refused_total",
        Kind::Counter,
        "Events a subscriber refused, by reason.",
    ),
    f(
        "hark_relay_refused_total",
        Kind::Counter,
        "Events the relay refused, by reason.",
    ),
    f(
        "hark_http_submissions_total",
        Kind::Counter,
        "Submissions over the relay's HTTP API (POST /v1/submit and webhooks), by ack status.",
    ),
    f(
        "hark_http_hooks_refused_total",
        Kind::Counter,
        "Webhook deliveries refused for a missing or wrong secret (401), by hook.",
    ),
    f(
        "hark_http_hooks_unusable_total",
        Kind::Counter,
        "Verified webhook deliveries that cannot be an event (not JSON, a number beyond a double: 400), by hook.",
    ),
    f(
        "hark_http_rate_limited_total",
        Kind::Counter,
        "HTTP API requests refused by the per-client rate limit (429).",
    ),
    f(
        "hark_relay_gap_events_total",
        Kind::Counter,
        "Events missing from a relay's sequence (gaps seen from seqs and heartbeats), by relay.",
    ),
    f(
        "hark_relay_up",
        Kind::Gauge,
        "1 while heartbeats from the relay arrive, 0 once they stopped, by relay.",
    ),
    f(
        "hark_source_reconnects_total",
        Kind::Counter,
        "Subscriber connections that dropped and were made again (a peer that went away, or one that sent a message over the 64 MiB limit), by endpoint.",
    ),
    f(
        "hark_amqp_deliveries_total",
        Kind::Counter,
        "Messages delivered by an AMQP broker (redeliveries included), by broker.",
    ),
    f(
        "hark_amqp_rejected_total",
        Kind::Counter,
        "AMQP messages rejected without requeue because they cannot become an event (not UTF-8 JSON, no routing key), by broker and reason; dead-lettered where the queue has a dead-letter exchange.",
    ),
    f(
        "hark_amqp_connected",
        Kind::Gauge,
        "1 while the AMQP source is connected and consuming, 0 while it reconnects, by broker.",
    ),
    f(
        "hark_amqp_reconnects_total",
        Kind::Counter,
        "AMQP connections that failed or were lost and were tried again (with backoff), by broker.",
    ),
    f(
        "hark_amqp_out_published_total",
        Kind::Counter,
        "Messages an AMQP sink published and the broker confirmed, by sink (results, relay).",
    ),
    f(
        "hark_amqp_out_dropped_total",
        Kind::Counter,
        "Messages an AMQP sink dropped because 1,000 were already waiting for the broker, by sink.",
    ),
    f(
        "hark_amqp_out_retried_total",
        Kind::Counter,
        "Messages an AMQP sink sends again because the broker refused them (nacked) or their confirm was lost with the connection (unconfirmed), by sink and reason.",
    ),
    // --- relay ---
    f(
        "hark_relay_received_total",
        Kind::Counter,
        "Messages the relay received, by source (submit, fedmsg).",
    ),
    f(
        "hark_relay_published_total",
        Kind::Counter,
        "Events the relay published, by format (laniakea, fedmsg).",
    ),
    f(
        "hark_relay_publish_failures_total",
        Kind::Counter,
        "Events the relay could not send on its publish socket (refused without a journal; fetched through replay with one).",
    ),
    f(
        "hark_relay_journal_errors_total",
        Kind::Counter,
        "Journal writes that failed (submissions are refused meanwhile).",
    ),
    f(
        "hark_relay_replay_requests_total",
        Kind::Counter,
        "Replay requests the relay answered from its journal.",
    ),
    // --- trigger: replay ---
    f(
        "hark_replayed_frames_total",
        Kind::Counter,
        "Frames fetched from relays' replay sockets to fill gaps.",
    ),
    f(
        "hark_unrecoverable_events_total",
        Kind::Counter,
        "Missed events that no relay could replay any more, by relay.",
    ),
    // --- trigger: rules and jobs ---
    f(
        "hark_rules_loaded",
        Kind::Gauge,
        "Rules in the rule set the daemon is using.",
    ),
    f(
        "hark_rule_reload_errors_total",
        Kind::Counter,
        "Rule files (or rules) that failed to load; the last good version is kept.",
    ),
    f(
        "hark_rule_matches_total",
        Kind::Counter,
        "Events a rule matched, by rule.",
    ),
    f(
        "hark_coalesced_events_total",
        Kind::Counter,
        "Events absorbed into a job that was already waiting, by rule.",
    ),
    f(
        "hark_fallback_runs_total",
        Kind::Counter,
        "Jobs started by a rule's fallback schedule, by rule.",
    ),
    f(
        "hark_job_retries_total",
        Kind::Counter,
        "Job attempts that failed and were scheduled again, by rule.",
    ),
    f(
        "hark_jobs_total",
        Kind::Counter,
        "Jobs that ended, by rule and outcome.",
    ),
    f(
        "hark_job_duration_seconds",
        Kind::Histogram,
        "How long job commands ran, by rule.",
    ),
    f(
        "hark_last_success_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last job of the rule that succeeded, by rule.",
    ),
    f(
        "hark_last_failure_timestamp_seconds",
        Kind::Gauge,
        "Unix time the last job of the rule ended in failure (after its retries), by rule.",
    ),
    f(
        "hark_queue_depth",
        Kind::Gauge,
        "Jobs pending (filed, not started).",
    ),
    f("hark_jobs_running", Kind::Gauge, "Jobs running now."),
    // --- trigger: store and results ---
    f(
        "hark_store_errors_total",
        Kind::Counter,
        "State store operations that failed.",
    ),
    f(
        "hark_store_commit_failures_total",
        Kind::Counter,
        "Transactions the state store could not commit (the burst is held and retried).",
    ),
    f(
        "hark_results_dropped_total",
        Kind::Counter,
        "_hark.job.* notices dropped because the results relay was unreachable.",
    ),
];

pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

#[derive(Debug, Clone)]
struct Histogram {
    /// Upper bounds, ascending and finite; `+Inf` is implied.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

/// Series by family name, then by rendered label body (`k="v",...`).
#[derive(Debug, Default)]
struct Series {
    scalars: BTreeMap<String, BTreeMap<String, f64>>,
    histograms: BTreeMap<String, BTreeMap<String, Histogram>>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Series>>,
}

fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

fn label_body(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(&escape_label(v));
        out.push('"');
    }
    out
}

/// Prometheus spells the special floats its own way; Rust's `inf`/`NaN` would not parse.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

fn braces(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!("{{{body}}}")
    }
}

/// The series `body` of family `name`; the family's name is copied only the first time
/// (every increment used to allocate it, under the lock).
fn series<'a, V>(
    families: &'a mut BTreeMap<String, BTreeMap<String, V>>,
    name: &str,
    body: String,
) -> std::collections::btree_map::Entry<'a, String, V> {
    if !families.contains_key(name) {
        families.insert(name.to_string(), BTreeMap::new());
    }
    families.get_mut(name).expect("inserted above").entry(body)
}

impl Registry {
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        let body = label_body(labels);
        if let Ok(mut s) = self.inner.lock() {
            *series(&mut s.scalars, name, body).or_insert(0.0) += by;
        }
    }

    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let body = label_body(labels);
        if let Ok(mut s) = self.inner.lock() {
            *series(&mut s.scalars, name, body).or_insert(0.0) = value;
        }
    }

    /// The value of a series; histograms answer for their `_bucket` (with `le`), `_sum` and
    /// `_count` series as the exposition shows them. 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Ok(s) = self.inner.lock() else {
            return 0.0;
        };
        if let Some(v) = s.scalars.get(name).and_then(|m| m.get(&label_body(labels))) {
            return *v;
        }
        let hist = |family: &str, labels: &[(&str, &str)]| {
            s.histograms
                .get(family)
                .and_then(|m| m.get(&label_body(labels)))
                .cloned()
        };
        if let Some(family) = name.strip_suffix("_bucket") {
            let le = labels.iter().find(|(k, _)| *k == "le").map(|(_, v)| *v);
            let rest: Vec<(&str, &str)> =
                labels.iter().filter(|(k, _)| *k != "le").copied().collect();
            let (Some(h), Some(le)) = (hist(family, &rest), le) else {
                return 0.0;
            };
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let upto = h.bounds.iter().take_while(|b| **b <= le).count();
            let n = if le == f64::INFINITY {
                h.counts.len()
            } else {
                upto
            };
            return h.counts[..n].iter().sum::<u64>() as f64;
        }
        if let Some(family) = name.strip_suffix("_sum") {
            return hist(family, labels).map_or(0.0, |h| h.sum);
        }
        if let Some(family) = name.strip_suffix("_count") {
            return hist(family, labels).map_or(0.0, |h| h.counts.iter().sum::<u64>() as f64);
        }
        0.0
    }

    /// Record `value` in a histogram with the given upper bounds; the first observation of
    /// a series fixes its bounds.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64, buckets: &[f64]) {
        let body = label_body(labels);
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        let h = series(&mut s.histograms, name, body).or_insert_with(|| {
            let mut bounds: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            let counts = vec![0; bounds.len() + 1];
            Histogram {
                bounds,
                counts,
                sum: 0.0,
            }
        });
        let slot = h.bounds.iter().take_while(|b| value > **b).count();
        h.counts[slot] += 1;
        h.sum += value;
    }

    /// The Prometheus text exposition: every family with `# HELP` and `# TYPE`, families
    /// in name order, histogram buckets in ascending `le` with `+Inf` last.
    pub fn render(&self) -> String {
        let Ok(s) = self.inner.lock() else {
            return String::new();
        };
        let mut names: Vec<&str> = s
            .scalars
            .keys()
            .chain(s.histograms.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut out = String::new();
        for name in names {
            let known = family(name);
            if let Some(fam) = known {
                let help = fam.help.replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            if let Some(series) = s.histograms.get(name) {
                let _ = writeln!(out, "# TYPE {name} histogram");
                for (body, h) in series {
                    let sep = if body.is_empty() { "" } else { "," };
                    let mut cumulative = 0u64;
                    for (i, count) in h.counts.iter().enumerate() {
                        cumulative += count;
                        let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| value(*b));
                        let _ =
                            writeln!(out, "{name}_bucket{{{body}{sep}le=\"{le}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{name}_sum{} {}", braces(body), value(h.sum));
                    let _ = writeln!(out, "{name}_count{} {cumulative}", braces(body));
                }
            }
            if let Some(series) = s.scalars.get(name) {
                // A series recorded under a name not in FAMILIES still renders, as untyped,
                // rather than vanish; the unit test keeps that from happening in hark.
                let kind = known.map_or("untyped", |f| f.kind.as_str());
                if !s.histograms.contains_key(name) {
                    let _ = writeln!(out, "# TYPE {name} {kind}");
                }
                for (body, v) in series {
                    let _ = writeln!(out, "{name}{} {}", braces(body), value(*v));
                }
            }
        }
        out
    }
}

/// Connections served at once; more wait in the listen queue, so a client that opens many
/// and sends nothing cannot pile up tasks.
const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life (hyper reads headers with no timeout of its own): a scrape
/// takes milliseconds, and Prometheus reconnects when a kept-alive connection closes.
const CONNECTION_LIFETIME: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(30)
};
/// On stop, how long requests in flight may finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The metrics HTTP endpoint. Binding is separate from serving so that a daemon learns
/// that its address is unusable before it says it is ready.
pub struct Endpoint {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    pub fn bind(addr: &str) -> anyhow::Result<Endpoint> {
        let context = || format!("cannot serve metrics on {addr}");
        let listener = std::net::TcpListener::bind(addr).with_context(context)?;
        let local = listener.local_addr().with_context(context)?;
        // tokio takes the socket over as it is; it must not block.
        listener.set_nonblocking(true).with_context(context)?;
        Ok(Endpoint {
            listener,
            addr: local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `registry` with axum on a thread and a current-thread runtime of its own: the
    /// relay has no async runtime, and a scrape renders under the registry's mutex, which
    /// must not stall the trigger's event loop. Stops when the returned handle is dropped.
    pub fn spawn(self, registry: Registry) -> anyhow::Result<Serving> {
        tracing::info!("metrics on http://{}/metrics", self.local_addr());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the metrics endpoint runtime")?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(self.listener)
                .context("handing the metrics socket to tokio")?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || rt.block_on(serve(listener, registry, stopped)))
            .context("starting the metrics endpoint thread")?;
        Ok(Serving {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use axum::http::{header, StatusCode};
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = registry.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: metrics are on /metrics\n",
            )
        })
        // One request per connection, as Prometheus is happy with: a kept-alive connection
        // would otherwise meet CONNECTION_LIFETIME in the middle of some later scrape.
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                response
            },
        ));
    let (graceful, deadline) = shutdown(stopped, STOP_GRACE);
    let server = axum::serve(Limited::new(listener), app).with_graceful_shutdown(graceful);
    tokio::select! {
        _ = server => {}
        _ = deadline => {}
    }
}

/// How an axum server on a runtime of its own stops: the graceful-shutdown signal, given
/// when `stopped` fires (a dropped sender is a stop too), and a deadline `grace` later
/// that ends it with requests still in flight. Shared with the relay's HTTP API.
pub(crate) fn shutdown(
    stopped: tokio::sync::oneshot::Receiver<()>,
    grace: Duration,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        let _ = rx.await;
    };
    let deadline = async move {
        let _ = stopped.await;
        let _ = tx.send(());
        tokio::time::sleep(grace).await;
    };
    (graceful, deadline)
}

/// Running endpoint; dropping it stops serving and closes the port.
pub struct Serving {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Bounded: the server gives requests in flight STOP_GRACE, then its runtime ends.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener that serves at most MAX_CONNECTIONS at once, each for at most
/// CONNECTION_LIFETIME.
struct Limited {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Limited {
    fn new(listener: tokio::net::TcpListener) -> Limited {
        Limited {
            listener,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            // The semaphore is never closed, so this only waits.
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Conn {
                        stream,
                        expires: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _slot: permit,
                    };
                    return (conn, peer);
                }
                // EMFILE and the like: do not spin on an error that persists.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection holding its slot, failing its I/O once it has lived too long.
struct Conn {
    stream: tokio::net::TcpStream,
    expires: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.expires.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "metrics connection too old")
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return std::task::Poll::Ready(Err(timed_out()));
        }
        std::pin::Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return std::task::Poll::Ready(Err(timed_out()));
        }
        std::pin::Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn renders_labelled_series() {
        let r = Registry::default();
        r.inc("hark_relay_refused_total", &[("reason", "bad-signature")]);
        r.inc("hark_relay_refused_total", &[("reason", "bad-signature")]);
        r.set("hark_queue_depth", &[], 3.0);
        assert_eq!(
            r.get("hark_relay_refused_total", &[("reason", "bad-signature")]),
            2.0
        );
        let text = r.render();
        assert!(
            text.contains("hark_relay_refused_total{reason=\"bad-signature\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("hark_queue_depth 3\n"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative() {
        let r = Registry::default();
        r.observe("d", &[("rule", "x")], 0.5, &[0.1, 1.0]);
        r.observe("d", &[("rule", "x")], 5.0, &[0.1, 1.0]);
        assert_eq!(r.get("d_bucket", &[("rule", "x"), ("le", "0.1")]), 0.0);
        assert_eq!(r.get("d_bucket", &[("rule", "x"), ("le", "1")]), 1.0);
        assert_eq!(r.get("d_bucket", &[("rule", "x"), ("le", "+Inf")]), 2.0);
        assert_eq!(r.get("d_count", &[("rule", "x")]), 2.0);
        assert_eq!(r.get("d_sum", &[("rule", "x")]), 5.5);
    }

    #[test]
    fn buckets_render_in_numeric_order_with_inf_last() {
        let r = Registry::default();
        // As strings "10" < "2.5" < "5": the old map of series strings rendered them so.
        r.observe(
            "hark_job_duration_seconds",
            &[("rule", "r")],
            3.0,
            &[10.0, 2.5, 5.0],
        );
        let text = r.render();
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("hark_job_duration_seconds_bucket"))
            .filter_map(|l| l.split(",le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(les, ["2.5", "5", "10", "+Inf"], "{text}");
        assert!(
            text.contains("hark_job_duration_seconds_bucket{rule=\"r\",le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hark_job_duration_seconds_sum{rule=\"r\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("hark_job_duration_seconds_count{rule=\"r\"} 1\n"),
            "{text}"
        );
        let type_line = text.find("# TYPE hark_job_duration_seconds histogram\n");
        let first_bucket = text.find("hark_job_duration_seconds_bucket");
        assert!(type_line < first_bucket && type_line.is_some(), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let r = Registry::default();
        r.inc("hark_rule_matches_total", &[("rule", "a\\b\"c\nd")]);
        let text = r.render();
        assert!(
            text.contains("hark_rule_matches_total{rule=\"a\\\\b\\\"c\\nd\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            r.get("hark_rule_matches_total", &[("rule", "a\\b\"c\nd")]),
            1.0
        );
    }

    #[test]
    fn special_values_are_spelled_as_prometheus_does() {
        let r = Registry::default();
        r.set("hark_queue_depth", &[], f64::INFINITY);
        r.set("hark_jobs_running", &[], f64::NAN);
        let text = r.render();
        assert!(text.contains("hark_queue_depth +Inf\n"), "{text}");
        assert!(text.contains("hark_jobs_running NaN\n"), "{text}");
    }

    /// Every `"hark_…"` literal in src/ is a family in the table (or a histogram's series
    /// of one), so no metric goes out without HELP and the right TYPE.
    #[test]
    fn every_metric_name_in_the_sources_is_in_the_table() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut names = std::collections::BTreeSet::new();
        for path in files {
            let text = std::fs::read_to_string(&path).expect("source file is UTF-8");
            for (at, _) in text.match_indices("\"hark_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert((name, path.display().to_string()));
            }
        }
        assert!(names.len() > 20, "found too few metric names: {names:?}");
        let missing: Vec<_> = names
            .iter()
            .filter(|(n, _)| n != "hark_")
            .filter(|(n, _)| {
                family(n).is_none()
                    && !["_bucket", "_sum", "_count"].iter().any(|s| {
                        n.strip_suffix(s)
                            .and_then(family)
                            .is_some_and(|f| f.kind == Kind::Histogram)
                    })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "metric names not in FAMILIES: {missing:?}"
        );
    }

    #[test]
    fn the_table_follows_the_naming_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for fam in FAMILIES {
            assert!(seen.insert(fam.name), "{} twice", fam.name);
            assert!(fam.name.starts_with("hark_"), "{}", fam.name);
            assert_eq!(
                fam.kind == Kind::Counter,
                fam.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                fam.name
            );
            assert!(
                !fam.help.is_empty() && !fam.help.contains('\n'),
                "{}",
                fam.name
            );
        }
    }

    /// A registry touched with every family renders HELP and TYPE for each, with the
    /// table's type, before its first sample.
    #[test]
    fn every_family_renders_help_and_type() {
        let r = Registry::default();
        for fam in FAMILIES {
            match fam.kind {
                Kind::Counter => r.inc(fam.name, &[("rule", "x")]),
                Kind::Gauge => r.set(fam.name, &[], 1.0),
                Kind::Histogram => r.observe(fam.name, &[("rule", "x")], 0.2, &[0.1, 1.0]),
            }
        }
        let text = r.render();
        for fam in FAMILIES {
            let help = format!("# HELP {} {}\n", fam.name, fam.help);
            let ty = format!("# TYPE {} {}\n", fam.name, fam.kind.as_str());
            let (Some(h), Some(t)) = (text.find(&help), text.find(&ty)) else {
                panic!("{} lacks HELP or TYPE:\n{text}", fam.name);
            };
            let sample = text[t..].lines().nth(1).expect("a sample after TYPE");
            assert!(
                h < t && sample.starts_with(fam.name),
                "{}:\n{text}",
                fam.name
            );
        }
        assert!(!text.contains("untyped"), "{text}");
    }

    /// One raw exchange with the endpoint, read until it closes the connection.
    fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read to close");
        got
    }

    #[test]
    fn only_metrics_is_served_over_http_1_0_and_1_1_and_it_stops_when_dropped() {
        let r = Registry::default();
        r.inc(
            "hark_jobs_total",
            &[("rule", "a"), ("outcome", "succeeded")],
        );
        let endpoint = Endpoint::bind("127.0.0.1:0").expect("bind a free port");
        let addr = endpoint.local_addr();
        let serving = endpoint.spawn(r).expect("spawn");
        let sample = "hark_jobs_total{rule=\"a\",outcome=\"succeeded\"} 1\n";
        // No "Connection: close" asked for: the endpoint closes after each response anyway.
        let close = "";
        for (request, status) in [
            (
                "GET /metrics HTTP/1.0\r\n\r\n".to_string(),
                "HTTP/1.0 200 OK\r\n",
            ),
            (
                format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}\r\n"),
                "HTTP/1.1 200 OK\r\n",
            ),
            (
                format!("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n{close}\r\n"),
                "HTTP/1.1 200 OK\r\n",
            ),
        ] {
            let got = exchange(addr, &request);
            assert!(got.starts_with(status), "{request:?}: {got}");
            assert!(
                got.to_ascii_lowercase()
                    .contains("\r\ncontent-type: text/plain; version=0.0.4"),
                "{got}"
            );
            assert!(got.ends_with(sample), "{got}");
        }
        for request in [
            "GET / HTTP/1.1",
            "GET /metricsx HTTP/1.1",
            "GET /metrics/ HTTP/1.1",
        ] {
            let got = exchange(addr, &format!("{request}\r\nHost: x\r\n{close}\r\n"));
            assert!(
                got.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{request}: {got}"
            );
            assert!(!got.contains("hark_jobs_total"), "{got}");
        }
        let got = exchange(
            addr,
            &format!("HEAD /metrics HTTP/1.1\r\nHost: x\r\n{close}\r\n"),
        );
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\n"),
            "{got}"
        );
        let got = exchange(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}\r\n"),
        );
        assert!(got.starts_with("HTTP/1.1 405 "), "{got}");
        let got = exchange(addr, "hello\r\n\r\n");
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 400 "), "{got}");
        drop(serving);
        assert!(
            TcpListener::bind(addr).is_ok(),
            "the port is free again once dropped"
        );
    }

    /// Clients that connect and never finish a request hold a slot only for the connection
    /// lifetime (1 s under test): a scrape behind a full house of them still gets through.
    #[test]
    fn stalled_clients_cannot_hold_the_endpoint() {
        let r = Registry::default();
        r.set("hark_queue_depth", &[], 1.0);
        let endpoint = Endpoint::bind("127.0.0.1:0").expect("bind a free port");
        let addr = endpoint.local_addr();
        let _serving = endpoint.spawn(r).expect("spawn");
        let stalled: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .expect("half a request");
                s
            })
            .collect();
        let started = std::time::Instant::now();
        let got = exchange(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(got.ends_with("hark_queue_depth 1\n"), "{got}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        for mut s in stalled {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut rest = Vec::new();
            // Closed by the endpoint (EOF or reset), not by our 10 s timeout.
            let r = s.read_to_end(&mut rest);
            assert!(
                !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
                "{r:?}"
            );
        }
    }

    #[test]
    fn binding_a_port_in_use_fails_and_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = Endpoint::bind(&addr).err().expect("the port is taken");
        assert!(format!("{err:#}").contains(&addr), "{err:#}");
        let err = Endpoint::bind("not an address").err().expect("bad address");
        assert!(format!("{err:#}").contains("not an address"), "{err:#}");
    }
}
