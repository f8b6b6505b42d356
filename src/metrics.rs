//! Counters shared by every component, rendered in the Prometheus text format.
//!
//! A series is a metric name plus label pairs. Increments take an uncontended mutex, which
//! costs tens of nanoseconds: far below the cost of the events being counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, f64>>>,
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let body: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{name}{{{}}}", body.join(","))
}

impl Registry {
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        if let Ok(mut map) = self.inner.lock() {
            *map.entry(series(name, labels)).or_insert(0.0) += by;
        }
    }

    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(series(name, labels), value);
        }
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(&series(name, labels)).copied())
            .unwrap_or(0.0)
    }

    /// Record `value` in a histogram with the given upper bounds (Prometheus convention:
    /// cumulative `_bucket{le=...}` series plus `_sum` and `_count`).
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64, buckets: &[f64]) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        for bound in buckets
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_string()))
        {
            let le: f64 = bound.parse().unwrap_or(f64::INFINITY);
            if value <= le {
                let mut l: Vec<(&str, &str)> = labels.to_vec();
                l.push(("le", &bound));
                *map.entry(series(&format!("{name}_bucket"), &l))
                    .or_insert(0.0) += 1.0;
            } else {
                let mut l: Vec<(&str, &str)> = labels.to_vec();
                l.push(("le", &bound));
                map.entry(series(&format!("{name}_bucket"), &l))
                    .or_insert(0.0);
            }
        }
        *map.entry(series(&format!("{name}_sum"), labels))
            .or_insert(0.0) += value;
        *map.entry(series(&format!("{name}_count"), labels))
            .or_insert(0.0) += 1.0;
    }

    /// Answer every HTTP request on `addr` with the current metrics, until the task is
    /// dropped. Deliberately tiny: one GET, one response, connection closed.
    pub async fn serve(self, addr: &str) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let body = self.render();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                        .await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let Ok(map) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        for (key, value) in map.iter() {
            out.push_str(&format!("{key} {value}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let r = Registry::default();
        r.inc("hark_refused_total", &[("reason", "bad-signature")]);
        r.inc("hark_refused_total", &[("reason", "bad-signature")]);
        r.set("hark_queue_depth", &[], 3.0);
        assert_eq!(
            r.get("hark_refused_total", &[("reason", "bad-signature")]),
            2.0
        );
        let text = r.render();
        assert!(
            text.contains("hark_refused_total{reason=\"bad-signature\"} 2\n"),
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
}
