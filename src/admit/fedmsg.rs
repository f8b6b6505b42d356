//! fedmsg admission. fedmsg signatures cover re-serialized JSON that only fedmsg's own
//! consumers can check, so a fedmsg event carries no verified signer: it is admitted as
//! unsigned where `trust.allow_fedmsg` says so, and a relay forwards it byte for byte
//! after the envelope checks below.

use std::borrow::Cow;

use super::Refusal;
use crate::event::{EnvelopeError, Frame};

/// The fields of a fedmsg envelope pass-through needs, borrowed from the frame; `msg` is
/// parsed (so the whole body must be valid JSON) but not kept.
#[derive(serde::Deserialize)]
struct FedmsgHead<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    msg_id: Cow<'a, str>,
    #[allow(dead_code)]
    msg: serde::de::IgnoredAny,
}

/// Check a fedmsg publication and return its msg_id (the dedupe key). This is the hot path
/// of pass-through, so it validates without building an `Event`: two frames, UTF-8, a JSON
/// object with `topic`, `msg_id` and `msg`, and frame 0 equal to the body's topic.
pub fn fedmsg_id<F: Frame>(frames: &[F]) -> Result<Cow<'_, str>, Refusal> {
    let [topic, body] = frames else {
        return Err(EnvelopeError::FrameCount {
            expected: "2",
            got: frames.len(),
        }
        .into());
    };
    let topic = std::str::from_utf8(&topic[..]).map_err(|_| EnvelopeError::NotUtf8)?;
    let text = std::str::from_utf8(&body[..]).map_err(|_| EnvelopeError::NotUtf8)?;
    let head: FedmsgHead = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            // Valid JSON, wrong shape: a native event here would bypass signature checks.
            Refusal::from(EnvelopeError::UnknownEnvelope)
        } else {
            EnvelopeError::MalformedJson(e.to_string()).into()
        }
    })?;
    if head.topic != topic {
        return Err(EnvelopeError::TopicMismatch {
            frame: topic.to_string(),
            body: head.topic.into_owned(),
        }
        .into());
    }
    Ok(head.msg_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(topic: &str, body: &str) -> Vec<Vec<u8>> {
        vec![topic.as_bytes().to_vec(), body.as_bytes().to_vec()]
    }

    #[test]
    fn fedmsg_check_accepts_real_envelopes_and_refuses_the_rest() {
        let ok = r#"{"i": 1, "msg": {"a": [1, {"b": "\u00e9"}]}, "msg_id": "2026-x", "timestamp": 1, "topic": "org.x.y", "username": "u"}"#;
        assert_eq!(fedmsg_id(&frames("org.x.y", ok)).unwrap(), "2026-x");
        let cases = [
            (frames("org.other", ok), "topic-mismatch"),
            (
                frames("org.x.y", "{\"topic\": \"org.x.y\", \"msg_id\": \"m\""),
                "malformed-json",
            ),
            (
                frames("org.x.y", r#"{"topic": "org.x.y", "msg_id": "m"}"#),
                "unknown-envelope",
            ),
            (
                frames(
                    "org.x.y",
                    r#"{"tag": "org.x.y", "uuid": "u", "format": "1.0", "time": "t", "data": {}}"#,
                ),
                "unknown-envelope",
            ),
            (
                frames(
                    "org.x.y",
                    r#"{"topic": "org.x.y", "msg_id": "m", "msg": {}} trailing"#,
                ),
                "malformed-json",
            ),
            (vec![b"org.x.y".to_vec(), vec![0xff]], "not-utf8"),
            (vec![b"org.x.y".to_vec()], "frame-count"),
        ];
        for (f, reason) in cases {
            assert_eq!(fedmsg_id(&f).unwrap_err().reason(), reason);
        }
    }
}
