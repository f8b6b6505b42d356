//! `POST /v1/submit`: a signed event over HTTP(S), through the relay's own submit path.
//!
//! The body goes to the relay's submit ROUTER as one frame, over an inproc DEALER on the
//! relay's ZeroMQ context: the same socket thread, verification workers, grants, dedupe
//! window, journal and ack as a ZeroMQ submission, with no second admission to drift from
//! the first. The ack comes back as JSON with an HTTP status that says the same thing.
//!
//! Each DEALER carries one submission at a time (its ack is the next message on it), and
//! goes back to a small pool; one whose ack did not come in time is closed, so a late ack
//! can never answer another request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State as Shared};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::listen::Peer;
use super::{Failure, State};
use crate::bus::ack::{Ack, AckStatus};

/// The relay's submit ROUTER is bound here too (on its own ZeroMQ context).
pub const INPROC_SUBMIT: &str = "inproc://hark-relay-submit";
/// Idle DEALERs kept for reuse.
const POOLED_SOCKETS: usize = 32;

/// DEALER sockets to the relay's submit path.
pub struct Bridge {
    ctx: zmq::Context,
    idle: Mutex<Vec<zmq::Socket>>,
}

impl Bridge {
    pub fn new(ctx: zmq::Context) -> Bridge {
        Bridge {
            ctx,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn socket(&self) -> Result<zmq::Socket, zmq::Error> {
        if let Some(s) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(s);
        }
        let s = self.ctx.socket(zmq::DEALER)?;
        s.set_linger(0)?;
        s.connect(INPROC_SUBMIT)?;
        Ok(s)
    }

    /// Submit one frame and wait for its ack (blocking: call from `spawn_blocking`).
    pub fn submit(&self, frame: &[u8], timeout: Duration) -> Result<Ack, Failure> {
        let unavailable = |why: String| Failure::new(StatusCode::SERVICE_UNAVAILABLE, why);
        let socket = self
            .socket()
            .map_err(|e| unavailable(format!("cannot reach the relay: {e}")))?;
        socket
            .send(frame, 0)
            .map_err(|e| unavailable(format!("cannot hand the event to the relay: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Closed, not pooled: its ack may still come.
                return Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the relay did not answer in time; the event may still be published: send it again (the uuid makes that safe)",
                ));
            }
            let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
            match socket.poll(zmq::POLLIN, ms) {
                Ok(0) | Err(zmq::Error::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(unavailable(format!("waiting for the relay: {e}"))),
            }
            let reply = socket
                .recv_bytes(0)
                .map_err(|e| unavailable(format!("reading the relay's answer: {e}")))?;
            let ack: Ack = serde_json::from_slice(&reply).map_err(|e| {
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the relay's answer: {e}"),
                )
            })?;
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < POOLED_SOCKETS {
                    idle.push(socket);
                }
            }
            return Ok(ack);
        }
    }
}

/// The HTTP status of an ack: what an HTTP client can act on without reading the body.
pub fn status_of(ack: &Ack) -> StatusCode {
    match ack.status {
        AckStatus::Accepted | AckStatus::Duplicate => StatusCode::OK,
        AckStatus::Refused => match ack.reason.as_deref().unwrap_or("") {
            "oversized" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsigned"
            | "bad-signature"
            | "untrusted-signer"
            | "key-expired"
            | "key-revoked"
            | "key-not-for-signing" => StatusCode::UNAUTHORIZED,
            "topic-not-granted" | "fedmsg-not-allowed" => StatusCode::FORBIDDEN,
            "bad-time" | "stale" | "future" => StatusCode::UNPROCESSABLE_ENTITY,
            crate::journal::REFUSAL_REASON => StatusCode::SERVICE_UNAVAILABLE,
            "relay-error" => StatusCode::INTERNAL_SERVER_ERROR,
            // Envelope problems: not JSON, not UTF-8, a field missing or of the wrong type.
            _ => StatusCode::BAD_REQUEST,
        },
    }
}

/// Read a request body of at most `limit` bytes within the request's deadline.
pub async fn read_body(
    body: Body,
    limit: usize,
    deadline: Instant,
) -> Result<axum::body::Bytes, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) => {
            // to_bytes says "length limit exceeded" through its error chain.
            let too_big = std::error::Error::source(&e)
                .map(|s| s.to_string().contains("length limit"))
                .unwrap_or(false)
                || e.to_string().contains("length limit");
            if too_big {
                Err(Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {limit} bytes (http.max_body)"),
                ))
            } else {
                Err(Failure::bad_request(format!("reading the body: {e}")))
            }
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// A refusal by the rate limit: 429 with Retry-After.
pub fn too_many(retry_after: Duration) -> Response {
    let secs = retry_after.as_secs().max(1);
    let mut response = Failure::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many requests from this address; retry in {secs} s (http.rate_limit)"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}

/// Hand `frame` to the relay and answer with its ack.
pub async fn relay_frame(state: &Arc<State>, frame: Vec<u8>, deadline: Instant) -> Response {
    let Some(bridge) = state.bridge.clone() else {
        return Failure::new(StatusCode::NOT_FOUND, "this server takes no submissions")
            .into_response();
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let task = tokio::task::spawn_blocking(move || bridge.submit(&frame, left));
    match task.await {
        Ok(Ok(ack)) => {
            state.metrics.inc(
                "hark_http_submissions_total",
                &[("status", status_label(&ack))],
            );
            (
                status_of(&ack),
                Json(serde_json::to_value(&ack).unwrap_or(Value::Null)),
            )
                .into_response()
        }
        Ok(Err(failure)) => failure.into_response(),
        Err(e) => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("submitting: {e}"),
        )
        .into_response(),
    }
}

fn status_label(ack: &Ack) -> &'static str {
    match ack.status {
        AckStatus::Accepted => "accepted",
        AckStatus::Duplicate => "duplicate",
        AckStatus::Refused => "refused",
    }
}

pub async fn submit(
    Shared(state): Shared<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Body,
) -> Response {
    let deadline = Instant::now() + state.opts.request_timeout;
    if let Err(wait) = state.limiter.take(peer.client) {
        state.metrics.inc("hark_http_rate_limited_total", &[]);
        return too_many(wait);
    }
    let bytes = match read_body(body, state.opts.max_body, deadline).await {
        Ok(b) => b,
        Err(f) => return f.into_response(),
    };
    if bytes.is_empty() {
        return Failure::bad_request("the body is empty: POST one signed event as JSON")
            .into_response();
    }
    relay_frame(&state, bytes.to_vec(), deadline).await
}
