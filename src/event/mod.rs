//! The event: one normalized shape for whatever envelope arrived on the wire.
//!
//! This module owns parsing of the envelopes hark speaks (Laniakea event 1.0, fedmsg, and
//! the fedora-messaging form of an AMQP message) into [`Event`]. Sub-modules own canonical JSON ([`canonical`]), key files
//! ([`keys`]) and signatures ([`sign`]). Nothing here talks to a socket.

pub mod canonical;
pub mod keys;
pub mod openpgp;
pub mod sign;

use serde_json::{Map, Value};

/// One frame of a multipart message: a `Vec<u8>`, or a `zmq::Message` as received (the
/// relay forwards those without copying them).
pub trait Frame: std::ops::Deref<Target = [u8]> {}
impl<T: std::ops::Deref<Target = [u8]>> Frame for T {}

/// The envelope an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Laniakea event 1.0: `tag`, `uuid`, `format`, `time`, `data`, `signatures`.
    Laniakea,
    /// fedmsg: `topic`, `msg`, `msg_id`, `timestamp`, `i`, `username`.
    Fedmsg,
    /// An AMQP message (fedora-messaging), kept as fedora-messaging's own JSON form of a
    /// message: `topic` (the routing key), `id` (message_id), `headers`, `body`, plus
    /// `broker` (the configured broker's name). Only [`crate::sources::amqp`] makes these;
    /// admission refuses the shape from any other source, so `broker` cannot be forged.
    Amqp,
}

/// Relay metadata carried under `unsigned` (never signed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayStamp {
    pub relay: String,
    pub epoch: String,
    pub seq: u64,
    pub received: String,
}

/// One event, normalized. `body` and `frames` keep the original so that the exact bytes can
/// reach a command's stdin and recordings stay verifiable.
#[derive(Debug, Clone)]
pub struct Event {
    /// Laniakea `tag` or fedmsg `topic`.
    pub topic: String,
    /// Laniakea `uuid` or fedmsg `msg_id`.
    pub uuid: String,
    /// Laniakea `time` as sent, or fedmsg `timestamp` rendered as RFC 3339 UTC.
    pub time: Option<String>,
    /// Laniakea `data` or fedmsg `msg`.
    pub data: Value,
    /// Optional publishing host (hark publishers add it; signed).
    pub origin: Option<String>,
    /// Optional human or service that caused the event (signed).
    pub author: Option<String>,
    /// Signers whose signatures verified against the trust policy. Empty until verified.
    pub signers: Vec<String>,
    pub format: Format,
    /// Relay sequencing metadata, when the event came through a hark relay.
    pub relay: Option<RelayStamp>,
    /// The whole envelope as parsed.
    pub body: Value,
    /// The frames as received: `[topic, json]` from a PUB, or `[json]` from a submission.
    pub frames: Vec<Vec<u8>>,
    /// AMQP message headers as a JSON object (`headers.*` in rules); null for other formats.
    pub headers: Value,
    /// The configured name of the broker an AMQP event came from (`broker` in rules).
    pub source: Option<String>,
    /// For an AMQP delivery: settles it with the broker once its jobs are stored.
    pub ack: Option<Ack>,
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Its jobs are on disk (or no rule matched): the broker may forget it.
    Ack,
    /// It can never become an event: reject without requeueing (dead-lettered when the
    /// queue has a dead-letter exchange).
    Reject,
}

/// A delivery waiting to be settled, shared by every copy of its event. The first
/// [`Ack::settle`] wins; later ones do nothing. If it is never settled (the daemon
/// stopped first), the broker redelivers the message when the connection closes.
#[derive(Clone)]
pub struct Ack(std::sync::Arc<AckInner>);

struct AckInner {
    done: std::sync::atomic::AtomicBool,
    send: Box<dyn Fn(Settle) + Send + Sync>,
}

impl Ack {
    pub fn new(send: impl Fn(Settle) + Send + Sync + 'static) -> Self {
        Ack(std::sync::Arc::new(AckInner {
            done: std::sync::atomic::AtomicBool::new(false),
            send: Box::new(send),
        }))
    }

    pub fn settle(&self, how: Settle) {
        if !self.0.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            (self.0.send)(how);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Why bytes could not become an event. `reason()` is the stable counter label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("expected {expected} frame(s), got {got}")]
    FrameCount { expected: &'static str, got: usize },
    #[error("message is not valid UTF-8")]
    NotUtf8,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("event body must be a JSON object")]
    NotAnObject,
    #[error("neither a Laniakea event (no \"tag\") nor a fedmsg message (no \"topic\"/\"msg\")")]
    UnknownEnvelope,
    #[error("field {field:?} is missing or not a {expected}")]
    BadField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("frame 0 {frame:?} differs from the body's topic {body:?}")]
    TopicMismatch { frame: String, body: String },
    #[error("unsupported Laniakea event format {0:?} (expected \"1.0\")")]
    UnsupportedFormat(String),
    #[error("the number {0} is beyond a double's range: canonical JSON would write it as Infinity, which is not JSON")]
    NonFiniteNumber(String),
}

impl EnvelopeError {
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::FrameCount { .. } => "frame-count",
            EnvelopeError::NotUtf8 => "not-utf8",
            EnvelopeError::MalformedJson(_) => "malformed-json",
            EnvelopeError::NotAnObject | EnvelopeError::UnknownEnvelope => "unknown-envelope",
            EnvelopeError::BadField { .. } => "bad-field",
            EnvelopeError::TopicMismatch { .. } => "topic-mismatch",
            EnvelopeError::UnsupportedFormat(_) => "unsupported-format",
            EnvelopeError::NonFiniteNumber(_) => "non-finite-number",
        }
    }
}

impl Event {
    /// Parse a published message `[topic, json]`. Frame 0 must equal the body's tag/topic.
    pub fn from_frames(frames: Vec<Vec<u8>>) -> Result<Self, EnvelopeError> {
        if frames.len() != 2 {
            return Err(EnvelopeError::FrameCount {
                expected: "2",
                got: frames.len(),
            });
        }
        let frame_topic = std::str::from_utf8(&frames[0]).map_err(|_| EnvelopeError::NotUtf8)?;
        let body = parse_json(&frames[1])?;
        let mut event = Self::from_value(body)?;
        if frame_topic != event.topic {
            return Err(EnvelopeError::TopicMismatch {
                frame: frame_topic.to_string(),
                body: event.topic,
            });
        }
        event.frames = frames;
        Ok(event)
    }

    /// Parse a single-frame submission (what Laniakea's DEALER emitters send).
    pub fn from_submission(frame: Vec<u8>) -> Result<Self, EnvelopeError> {
        let body = parse_json(&frame)?;
        let mut event = Self::from_value(body)?;
        event.frames = vec![frame];
        Ok(event)
    }

    /// Normalize an already-parsed envelope. `frames` is left empty.
    pub fn from_value(body: Value) -> Result<Self, EnvelopeError> {
        let obj = body.as_object().ok_or(EnvelopeError::NotAnObject)?;
        let mut event = if obj.contains_key("tag") {
            Self::from_laniakea(obj)?
        } else if obj.contains_key("topic") && obj.contains_key("msg") {
            Self::from_fedmsg(obj)?
        } else if obj.contains_key("topic") && obj.contains_key("body") {
            Self::from_amqp(obj)?
        } else {
            return Err(EnvelopeError::UnknownEnvelope);
        };
        // Every envelope, before any signature: Python's json reads 1e400 as inf, but
        // hark's canonical writer (which re-serializes native events) could only write it
        // as Infinity, which is not JSON (a fedmsg case was found by make fuzz).
        if let Some(n) = obj.values().find_map(canonical::non_finite) {
            return Err(EnvelopeError::NonFiniteNumber(n.to_string()));
        }
        event.body = body;
        Ok(event)
    }

    fn from_laniakea(obj: &Map<String, Value>) -> Result<Self, EnvelopeError> {
        let format = str_field(obj, "format")?;
        if format != "1.0" {
            return Err(EnvelopeError::UnsupportedFormat(format.to_string()));
        }
        let data =
            obj.get("data")
                .filter(|d| d.is_object())
                .cloned()
                .ok_or(EnvelopeError::BadField {
                    field: "data",
                    expected: "object",
                })?;
        let relay = obj
            .get("unsigned")
            .and_then(|u| u.as_object())
            .and_then(|u| serde_json::from_value(Value::Object(u.clone())).ok());
        Ok(Event {
            topic: str_field(obj, "tag")?.to_string(),
            uuid: str_field(obj, "uuid")?.to_string(),
            time: Some(str_field(obj, "time")?.to_string()),
            data,
            origin: opt_str(obj, "origin"),
            author: opt_str(obj, "author"),
            signers: Vec::new(),
            format: Format::Laniakea,
            relay,
            // Filled in by `from_value`, which owns the body: no deep copy per event.
            body: Value::Null,
            frames: Vec::new(),
            headers: Value::Null,
            source: None,
            ack: None,
        })
    }

    fn from_fedmsg(obj: &Map<String, Value>) -> Result<Self, EnvelopeError> {
        let time = obj
            .get("timestamp")
            .and_then(Value::as_f64)
            .and_then(|ts| {
                chrono::DateTime::from_timestamp(ts.trunc() as i64, (ts.fract() * 1e9) as u32)
            })
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        Ok(Event {
            topic: str_field(obj, "topic")?.to_string(),
            uuid: str_field(obj, "msg_id")?.to_string(),
            time,
            data: obj.get("msg").cloned().unwrap_or(Value::Null),
            origin: None,
            author: opt_str(obj, "username"),
            signers: Vec::new(),
            format: Format::Fedmsg,
            relay: None,
            // Filled in by `from_value`, which owns the body: no deep copy per event.
            body: Value::Null,
            frames: Vec::new(),
            headers: Value::Null,
            source: None,
            ack: None,
        })
    }

    /// fedora-messaging's JSON form of an AMQP message (what the AMQP source builds, the
    /// store keeps and `hark record` writes): time from the `sent-at` header.
    fn from_amqp(obj: &Map<String, Value>) -> Result<Self, EnvelopeError> {
        let headers = match obj.get("headers") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(h @ Value::Object(_)) => h.clone(),
            Some(_) => {
                return Err(EnvelopeError::BadField {
                    field: "headers",
                    expected: "object",
                })
            }
        };
        let time = headers
            .get("sent-at")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Event {
            topic: str_field(obj, "topic")?.to_string(),
            uuid: str_field(obj, "id")?.to_string(),
            time,
            data: obj.get("body").cloned().unwrap_or(Value::Null),
            origin: None,
            author: None,
            signers: Vec::new(),
            format: Format::Amqp,
            relay: None,
            body: Value::Null,
            frames: Vec::new(),
            headers,
            source: opt_str(obj, "broker"),
            ack: None,
        })
    }

    /// What a command gets on stdin for this event: the JSON as received, except for an
    /// AMQP message, whose body it is (canonical JSON), as `amqp-consume` and
    /// fedora-messaging callbacks see it; the headers are in `HARK_HEADERS`.
    pub fn stdin_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.format == Format::Amqp {
            return std::borrow::Cow::Owned(
                canonical::to_vec(&self.data).unwrap_or_else(|_| self.data.to_string().into()),
            );
        }
        self.json_bytes()
    }

    /// The event JSON exactly as received (frame 1 of a publish, or the submission frame);
    /// canonical JSON of the body when the event was built from a value.
    pub fn json_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.frames.last() {
            Some(frame) => std::borrow::Cow::Borrowed(frame.as_slice()),
            None => std::borrow::Cow::Owned(
                canonical::to_vec(&self.body).unwrap_or_else(|_| self.body.to_string().into()),
            ),
        }
    }
}

/// Parse JSON bytes, telling non-UTF-8 apart from malformed JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, EnvelopeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| EnvelopeError::NotUtf8)?;
    serde_json::from_str(text).map_err(|e| EnvelopeError::MalformedJson(e.to_string()))
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, EnvelopeError> {
    obj.get(field)
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::BadField {
            field,
            expected: "string",
        })
}

fn opt_str(obj: &Map<String, Value>, field: &str) -> Option<String> {
    obj.get(field).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LK: &str = r#"{"data":{"repo":"master"},"format":"1.0","signatures":{},"tag":"_lk.archive.x","time":"2023-11-30T12:00:00.123456","uuid":"5b3c1a2e-8f00-11ee-b9d1-0242ac120002"}"#;

    #[test]
    fn laniakea_frames_normalize() {
        let ev =
            Event::from_frames(vec![b"_lk.archive.x".to_vec(), LK.as_bytes().to_vec()]).unwrap();
        assert_eq!(ev.topic, "_lk.archive.x");
        assert_eq!(ev.uuid, "5b3c1a2e-8f00-11ee-b9d1-0242ac120002");
        assert_eq!(ev.data["repo"], "master");
        assert_eq!(ev.format, Format::Laniakea);
        assert_eq!(&*ev.json_bytes(), LK.as_bytes());
    }

    #[test]
    fn frame_topic_must_match_body() {
        let err =
            Event::from_frames(vec![b"_lk.other".to_vec(), LK.as_bytes().to_vec()]).unwrap_err();
        assert_eq!(err.reason(), "topic-mismatch");
    }

    #[test]
    fn fedmsg_normalizes() {
        let body = r#"{"i":1,"msg":{"log":"Hello world"},"msg_id":"2014-f1c49f0b-5caf-49e6-b79a-cc54bcfac602","timestamp":1393878837,"topic":"org.fedoraproject.dev.logger.log","username":"root"}"#;
        let ev = Event::from_frames(vec![
            b"org.fedoraproject.dev.logger.log".to_vec(),
            body.as_bytes().to_vec(),
        ])
        .unwrap();
        assert_eq!(ev.format, Format::Fedmsg);
        assert_eq!(ev.uuid, "2014-f1c49f0b-5caf-49e6-b79a-cc54bcfac602");
        assert_eq!(ev.data["log"], "Hello world");
        assert_eq!(ev.time.as_deref(), Some("2014-03-03T20:33:57Z"));
        assert_eq!(ev.author.as_deref(), Some("root"));
    }

    #[test]
    fn a_fedmsg_number_beyond_a_double_is_refused() {
        // Found by make fuzz (frames): admitted, it could not be written canonically.
        for body in [
            r#"{"i":1,"msg":{},"msg_id":"m-1","timestamp":176.22E600,"topic":"a.b"}"#,
            r#"{"i":1,"msg":{"x":[1e400]},"msg_id":"m-1","timestamp":1,"topic":"a.b"}"#,
        ] {
            let err =
                Event::from_frames(vec![b"a.b".to_vec(), body.as_bytes().to_vec()]).unwrap_err();
            assert_eq!(err.reason(), "non-finite-number", "{body}");
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (vec![b"a".to_vec()], "frame-count"),
            (vec![b"a".to_vec(), vec![0xff, 0xfe]], "not-utf8"),
            (vec![b"a".to_vec(), b"{not json".to_vec()], "malformed-json"),
            (vec![b"a".to_vec(), b"[1,2]".to_vec()], "unknown-envelope"),
            (
                vec![b"a".to_vec(), b"{\"x\":1}".to_vec()],
                "unknown-envelope",
            ),
            (
                vec![
                    b"a".to_vec(),
                    br#"{"tag":"a","format":"1.0","uuid":"u","time":"t","data":[]}"#.to_vec(),
                ],
                "bad-field",
            ),
            (
                vec![
                    b"a".to_vec(),
                    br#"{"tag":"a","format":"2.0","uuid":"u","time":"t","data":{}}"#.to_vec(),
                ],
                "unsupported-format",
            ),
        ];
        for (frames, reason) in cases {
            assert_eq!(Event::from_frames(frames).unwrap_err().reason(), reason);
        }
    }
}
