//! Metrics shared by every component: the one table of metric families (name, type, help),
//! the registry of their series, the Prometheus text exposition (format 0.0.4) and the tiny
//! HTTP endpoint that serves it on `/metrics`.
//!
//! A series is a metric name plus label pairs. Increments take an uncontended mutex, which
//! costs tens of nanoseconds: far below the cost of the events being counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        "hark_relay_gap_events_total",
        Kind::Counter,
        "Events missing from a relay's sequence (gaps seen from seqs and heartbeats), by relay.",
    ),
    f(
        "hark_relay_up",
        Kind::Gauge,
        "1 while heartbeats from the relay arrive, 0 once they stopped, by relay.",
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
        "Events the relay published, by format (native, fedmsg).",
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

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_body(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
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

impl Registry {
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        if let Ok(mut s) = self.inner.lock() {
            *s.scalars
                .entry(name.to_string())
                .or_default()
                .entry(label_body(labels))
                .or_insert(0.0) += by;
        }
    }

    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        if let Ok(mut s) = self.inner.lock() {
            s.scalars
                .entry(name.to_string())
                .or_default()
                .insert(label_body(labels), value);
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
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        let h = s
            .histograms
            .entry(name.to_string())
            .or_default()
            .entry(label_body(labels))
            .or_insert_with(|| {
                let mut bounds: Vec<f64> =
                    buckets.iter().copied().filter(|b| b.is_finite()).collect();
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

/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections answered at once; more are closed unanswered, so a client that opens many
/// and sends nothing cannot pile up threads.
const MAX_CONNECTIONS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics HTTP endpoint. Binding is separate from serving so that a daemon learns
/// that its address is unusable before it says it is ready.
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    pub fn bind(addr: &str) -> anyhow::Result<Endpoint> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        Ok(Endpoint { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `registry` on a thread of its own (the relay has no async runtime, and a
    /// scrape renders under the registry's mutex: neither belongs on an event loop). The
    /// endpoint stops when the returned handle is dropped.
    pub fn spawn(self, registry: Registry) -> anyhow::Result<Serving> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let Endpoint { listener, addr } = self;
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || accept_loop(listener, registry, flag))
            .context("starting the metrics endpoint thread")?;
        Ok(Serving {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

pub struct Serving {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // accept() has no timeout: one connection of our own wakes it to see the flag.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, registry: Registry, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(sock) = conn else {
            // EMFILE and the like: do not spin on an error that persists.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (registry, mine) = (registry.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _ = answer(sock, &registry);
                mine.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What a request head asks for: the status line and body to send.
fn route(head: &str, registry: &Registry) -> (&'static str, &'static str, String, bool) {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let version = match version {
        Some("HTTP/1.0") => "HTTP/1.0",
        Some("HTTP/1.1") => "HTTP/1.1",
        _ => return ("HTTP/1.1", "400 Bad Request", "bad request\n".into(), true),
    };
    let Some(target) = target.filter(|_| parts.next().is_none()) else {
        return (version, "400 Bad Request", "bad request\n".into(), true);
    };
    let head_only = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            return (
                version,
                "405 Method Not Allowed",
                "only GET and HEAD\n".into(),
                true,
            )
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        (version, "200 OK", registry.render(), head_only)
    } else {
        (
            version,
            "404 Not Found",
            "not found: metrics are on /metrics\n".into(),
            head_only,
        )
    }
}

fn answer(mut sock: TcpStream, registry: &Registry) -> std::io::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            break;
        }
    }
    if buf.is_empty() {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf);
    let (version, status, body, head_only) = route(&head, registry);
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "{version} {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    sock.write_all(response.as_bytes())?;
    if !head_only {
        sock.write_all(body.as_bytes())?;
    }
    sock.flush()?;
    let _ = sock.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn request(registry: &Registry, head: &str) -> (String, String) {
        let (version, status, body, head_only) = route(head, registry);
        (
            format!("{version} {status}"),
            if head_only { String::new() } else { body },
        )
    }

    #[test]
    fn only_metrics_is_served() {
        let r = Registry::default();
        r.set("hark_queue_depth", &[], 2.0);
        let (status, body) = request(&r, "GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(body.contains("hark_queue_depth 2\n"), "{body}");
        let (status, _) = request(&r, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let (status, body) = request(&r, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert!(!body.contains("hark_queue_depth"), "{body}");
        let (status, _) = request(&r, "GET /metricsx HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, body) = request(&r, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
        let (status, _) = request(&r, "POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, _) = request(&r, "hello\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn endpoint_answers_http_1_0_and_1_1_and_stops_when_dropped() {
        let r = Registry::default();
        r.inc(
            "hark_jobs_total",
            &[("rule", "a"), ("outcome", "succeeded")],
        );
        let endpoint = Endpoint::bind("127.0.0.1:0").expect("bind a free port");
        let addr = endpoint.local_addr();
        let serving = endpoint.spawn(r).expect("spawn");
        for (request, version) in [
            ("GET /metrics HTTP/1.0\r\n\r\n", "HTTP/1.0"),
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1"),
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1"),
        ] {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(request.as_bytes()).expect("send");
            let mut got = String::new();
            s.read_to_string(&mut got).expect("read to close");
            assert!(got.starts_with(version), "{got}");
            if request.contains("/nope") {
                assert!(got.starts_with("HTTP/1.1 404 "), "{got}");
            } else {
                assert!(
                    got.contains("\r\nContent-Type: text/plain; version=0.0.4"),
                    "{got}"
                );
                assert!(
                    got.ends_with("hark_jobs_total{rule=\"a\",outcome=\"succeeded\"} 1\n"),
                    "{got}"
                );
            }
        }
        drop(serving);
        assert!(
            TcpListener::bind(addr).is_ok(),
            "the port is free again once dropped"
        );
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
