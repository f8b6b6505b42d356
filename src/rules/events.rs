//! Events written by hand, for inline tests and `hark rules test --event`: a Laniakea event
//! with the tedious parts optional (`tag` or `topic`, no uuid or time needed), a fedmsg
//! envelope, a fedora-messaging message (`topic`, `body`, `headers`, `broker`: an AMQP
//! event), plus `signers`, the verified signers to assume.

use serde_json::{Map, Value};

use crate::event::Event;

/// The uuid given to events written without one.
pub const DEFAULT_UUID: &str = "00000000-0000-0000-0000-000000000000";
/// The time given to events written without one (Laniakea's format).
pub const DEFAULT_TIME: &str = "1970-01-01T00:00:00";

const LANIAKEA_KEYS: &[&str] = &[
    "tag",
    "topic",
    "uuid",
    "format",
    "time",
    "data",
    "signers",
    "origin",
    "author",
    "signatures",
    "unsigned",
];

/// Build an [`Event`] from a loosely written object.
pub fn from_loose(value: Value) -> Result<Event, String> {
    let Value::Object(mut obj) = value else {
        return Err("an event must be a mapping (with tag, data, ...)".into());
    };
    let signers = take_signers(&mut obj)?;
    let mut event = if obj.contains_key("msg") {
        obj.entry("msg_id")
            .or_insert_with(|| Value::String(DEFAULT_UUID.into()));
        Event::from_value(Value::Object(obj)).map_err(|e| e.to_string())?
    } else if obj.contains_key("body") {
        amqp(obj)?
    } else {
        laniakea(obj)?
    };
    event.signers = signers;
    Ok(event)
}

fn take_signers(obj: &mut Map<String, Value>) -> Result<Vec<String>, String> {
    match obj.remove("signers") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!("signers must be a list of names, found {other}")),
            })
            .collect(),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(other) => Err(format!("signers must be a list of names, found {other}")),
    }
}

fn laniakea(mut obj: Map<String, Value>) -> Result<Event, String> {
    if let Some(unknown) = obj.keys().find(|k| !LANIAKEA_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key {unknown:?} in event (expected tag, uuid, time, data, signers, origin, \
             author; or a fedmsg envelope with topic and msg)"
        ));
    }
    let tag = match (obj.remove("tag"), obj.remove("topic")) {
        (Some(_), Some(_)) => return Err("give either tag or topic, not both".into()),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err("the event needs a tag (or topic)".into()),
    };
    if !tag.is_string() {
        return Err(format!("tag must be a string, found {tag}"));
    }
    obj.insert("tag".into(), tag);
    obj.entry("uuid")
        .or_insert_with(|| Value::String(DEFAULT_UUID.into()));
    obj.entry("format")
        .or_insert_with(|| Value::String("1.0".into()));
    obj.entry("time")
        .or_insert_with(|| Value::String(DEFAULT_TIME.into()));
    obj.entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    Event::from_value(Value::Object(obj)).map_err(|e| e.to_string())
}

/// An AMQP message as fedora-messaging writes it (`topic`, `body`, `headers`, `id`), and
/// `broker`, the broker it is taken to come from.
fn amqp(mut obj: Map<String, Value>) -> Result<Event, String> {
    const KEYS: &[&str] = &["topic", "body", "headers", "id", "queue", "broker"];
    if let Some(unknown) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key {unknown:?} in an AMQP message (expected topic, body, headers, id, broker)"
        ));
    }
    obj.entry("id")
        .or_insert_with(|| Value::String(DEFAULT_UUID.into()));
    Event::from_value(Value::Object(obj)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loose_laniakea_gets_defaults() {
        let ev = from_loose(json!({"tag": "_lk.x", "signers": ["a"], "data": {"k": 1}})).unwrap();
        assert_eq!(ev.topic, "_lk.x");
        assert_eq!(ev.uuid, DEFAULT_UUID);
        assert_eq!(ev.time.as_deref(), Some(DEFAULT_TIME));
        assert_eq!(ev.signers, vec!["a".to_string()]);
        assert_eq!(ev.data["k"], 1);
        assert!(
            ev.body.get("signers").is_none(),
            "signers are not part of the body"
        );
        let ev = from_loose(json!({"topic": "_lk.y"})).unwrap();
        assert_eq!(ev.topic, "_lk.y");
        assert!(ev.data.is_object());
    }

    #[test]
    fn fedmsg_envelopes_pass_through() {
        let ev = from_loose(json!({"topic": "org.fedoraproject.prod.x", "msg": {"a": 1}})).unwrap();
        assert_eq!(ev.topic, "org.fedoraproject.prod.x");
        assert_eq!(ev.data["a"], 1);
    }

    #[test]
    fn amqp_messages_carry_headers_and_source() {
        let ev = from_loose(
            json!({"topic": "org.fedoraproject.prod.pungi.compose.status.change",
            "body": {"status": "FINISHED"}, "headers": {"fedora_messaging_severity": 20},
            "broker": "fedora"}),
        )
        .unwrap();
        assert_eq!(ev.format, crate::event::Format::Amqp);
        assert_eq!(ev.data["status"], "FINISHED");
        assert_eq!(ev.headers["fedora_messaging_severity"], 20);
        assert_eq!(ev.source.as_deref(), Some("fedora"));
        assert!(from_loose(json!({"topic": "t", "body": {}, "hedaers": {}})).is_err());
    }

    #[test]
    fn mistakes_are_named() {
        assert!(from_loose(json!({"data": {}}))
            .unwrap_err()
            .contains("needs a tag"));
        assert!(from_loose(json!({"tag": "x", "sigers": []}))
            .unwrap_err()
            .contains("sigers"));
        assert!(from_loose(json!({"tag": "x", "data": []})).is_err());
        assert!(from_loose(json!({"tag": "x", "format": "2.0"})).is_err());
        assert!(from_loose(json!([1])).is_err());
    }
}
