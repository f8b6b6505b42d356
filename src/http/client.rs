//! `hark publish --relay https://…`: submit over the relay's HTTP API (`POST /v1/submit`)
//! with reqwest and rustls (the system's CA roots, and `SSL_CERT_FILE`). The answer is the
//! relay's ack, as over ZeroMQ; what is not an ack (no connection, a TLS failure, a 5xx or
//! 429 without one) is tried again until the deadline, and then the caller spools.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bus::ack::Ack;
use crate::bus::publish::PublishError;
use crate::event::canonical;

/// Pause between attempts that got no ack.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// An `http://` or `https://` relay (the publisher's `--relay` and `publish.relays`).
pub fn is_http(endpoint: &str) -> bool {
    endpoint.starts_with("https://") || endpoint.starts_with("http://")
}

/// The submit URL of a relay given by its base URL (or by the submit URL itself).
pub fn submit_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/submit") {
        base.to_string()
    } else {
        format!("{base}/v1/submit")
    }
}

/// Submit `event` until the relay answers with an ack, `timeout` passes, or `give_up`.
pub fn submit_until(
    endpoint: &str,
    event: &Value,
    timeout: Duration,
    give_up: &AtomicBool,
) -> Result<Ack, PublishError> {
    let failed = |reason: String| PublishError::Http {
        endpoint: endpoint.to_string(),
        reason,
    };
    let body = canonical::to_vec(event).map_err(|e| failed(format!("encoding the event: {e}")))?;
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .connect_timeout(timeout)
        .build()
        .map_err(|e| failed(format!("setting up HTTPS: {e}")))?;
    let url = submit_url(endpoint);
    let started = Instant::now();
    let mut last = String::from("no answer");
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() || give_up.load(Ordering::Relaxed) {
            return Err(failed(format!("no ack within {timeout:?}: {last}")));
        }
        let sent = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(left)
            .body(body.clone())
            .send();
        match sent {
            Ok(response) => {
                let status = response.status();
                let text = response.text().unwrap_or_default();
                // Every ack is an answer, accepted or refused; anything else is not.
                if let Ok(ack) = serde_json::from_str::<Ack>(&text) {
                    return crate::bus::publish::ack_result(endpoint, ack);
                }
                last = format!("HTTP {status}: {}", text.trim());
                // The HTTP layer's own refusals (a body over http.max_body, no such
                // endpoint) will not change with a retry: refused, not spooled forever.
                if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
                    let reason = match status.as_u16() {
                        413 => "oversized".to_string(),
                        code => format!("http-{code}"),
                    };
                    return Err(PublishError::Refused {
                        endpoint: endpoint.to_string(),
                        reason,
                        message: last,
                    });
                }
            }
            Err(e) => last = error_chain(&e),
        }
        std::thread::sleep(RETRY_PAUSE.min(timeout.saturating_sub(started.elapsed())));
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_urls() {
        assert_eq!(
            submit_url("https://relay.example:8443"),
            "https://relay.example:8443/v1/submit"
        );
        assert_eq!(
            submit_url("https://relay.example/hark/"),
            "https://relay.example/hark/v1/submit"
        );
        assert_eq!(
            submit_url("https://relay.example/v1/submit"),
            "https://relay.example/v1/submit"
        );
        assert!(is_http("http://127.0.0.1:5574") && !is_http("tcp://127.0.0.1:5571"));
    }
}
