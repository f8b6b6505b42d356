//! Message builders for tests and benches: fedmsg envelopes as fedmsg's Python publishers put
//! them on the wire, signed Laniakea events as a DEALER submits them, and the sized variants
//! the benches send as load. One builder of each, so tests and benches speak the same wire.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use hark::bus::publish::build_event;
use hark::event::canonical;
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

/// One multipart message.
pub type Frames = Vec<Vec<u8>>;

/// A message and the id a receiver reports it by (fedmsg `msg_id`, Laniakea `uuid`).
pub struct Message {
    pub id: String,
    pub frames: Frames,
}

/// Wall clock, seconds since the epoch: the clock of fedmsg's `timestamp`, bash's
/// `$EPOCHREALTIME` and hark's job store.
pub fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How a fedmsg envelope's JSON text is spaced. Keys are sorted either way, as fedmsg's are.
#[derive(Clone, Copy)]
pub enum Spacing {
    /// Python's `json.dumps` default separators, `", "` and `": "`.
    Python,
    /// No spaces at all.
    Compact,
}

/// The fields of a fedmsg envelope.
pub struct Fedmsg<'a> {
    pub topic: &'a str,
    pub msg_id: &'a str,
    /// JSON text of the `msg` object, spliced in verbatim so that callers choose its bytes
    /// (ensure_ascii escapes, odd spacing) exactly.
    pub msg: &'a str,
    pub i: usize,
    pub timestamp: Value,
    pub username: &'a str,
}

impl Fedmsg<'_> {
    /// The envelope's JSON text: keys in sorted order, `msg` as given.
    pub fn body(&self, spacing: Spacing) -> String {
        let (comma, colon) = match spacing {
            Spacing::Python => (", ", ": "),
            Spacing::Compact => (",", ":"),
        };
        let text = |s: &str| Value::from(s).to_string();
        let fields = [
            ("i", self.i.to_string()),
            ("msg", self.msg.to_string()),
            ("msg_id", text(self.msg_id)),
            ("timestamp", self.timestamp.to_string()),
            ("topic", text(self.topic)),
            ("username", text(self.username)),
        ];
        let inner: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
            .collect();
        format!("{{{}}}", inner.join(comma))
    }

    /// `[topic, body]`, the two frames fedmsg publishes.
    pub fn frames(&self, spacing: Spacing) -> Frames {
        vec![
            self.topic.as_bytes().to_vec(),
            self.body(spacing).into_bytes(),
        ]
    }
}

/// The body a Python fedmsg publisher sends in the tests: `json.dumps` spacing, `i` 1, a
/// fixed timestamp, user `apache`, and `msg` (JSON text) verbatim.
pub fn python_fedmsg_body(topic: &str, msg_id: &str, msg: &str) -> String {
    Fedmsg {
        topic,
        msg_id,
        msg,
        i: 1,
        timestamp: json!(1_700_000_000),
        username: "apache",
    }
    .body(Spacing::Python)
}

/// A signed Laniakea event with `data`, signed by `key`.
pub fn signed_event(
    tag: &str,
    data: Value,
    key: &SigningKey,
    origin: Option<&str>,
) -> Result<Value, String> {
    build_event(tag, data, key, origin, None).map_err(|e| format!("signing {tag}: {e}"))
}

/// The one frame a DEALER submits: the event as canonical JSON.
pub fn event_frame(event: &Value) -> Result<Vec<u8>, String> {
    canonical::to_vec(event).map_err(|e| format!("canonical JSON: {e}"))
}

/// Bench load: a compact fedmsg message of `size` bytes of JSON (padded in `msg.text`; a
/// smaller `size` than the bare envelope gives the bare envelope), stamped now, with
/// `msg_id` `<id_prefix>2026-<uuid>`.
pub fn fedmsg_load(topic: &str, i: usize, size: usize, id_prefix: &str) -> Message {
    let id = format!("{id_prefix}2026-{}", uuid::Uuid::new_v4());
    let timestamp = json!(epoch_secs());
    let build = |pad: &str| {
        let msg = json!({
            "build_id": 2_600_000 + i, "epoch": null, "instance": "primary",
            "name": "hark-bench", "new": 1, "old": 0, "owner": "bench",
            "release": "1.fc41", "text": pad, "version": "0.1.0",
        })
        .to_string();
        Fedmsg {
            topic,
            msg_id: &id,
            msg: &msg,
            i,
            timestamp: timestamp.clone(),
            username: "bench",
        }
        .frames(Spacing::Compact)
    };
    let bare = build("")[1].len();
    let frames = build(&"x".repeat(size.saturating_sub(bare)));
    Message { id, frames }
}

/// Bench load: a signed Laniakea event of about `size` bytes as one canonical JSON frame,
/// reported by its `uuid`.
pub fn signed_load(tag: &str, i: usize, size: usize, key: &SigningKey) -> Result<Message, String> {
    let build = |pad: &str| -> Result<(String, Vec<u8>), String> {
        let data = json!({"id": format!("{i:010}"), "package": "hark-bench", "version": "0.1.0", "text": pad});
        let event = signed_event(tag, data, key, Some("bench-host"))?;
        let uuid = event
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok((uuid, event_frame(&event)?))
    };
    // Signature, uuid and time have fixed lengths, so one probe sizes the padding.
    let bare = build("")?.1.len();
    let (id, frame) = build(&"x".repeat(size.saturating_sub(bare)))?;
    Ok(Message {
        id,
        frames: vec![frame],
    })
}
