//! The recording format: JSON lines, one received message per line, with the frames
//! exactly as they arrived so a recording can be replayed and its signatures re-checked.
//! `hark record` writes it; `hark rules test --events` reads it, along with bare Laniakea
//! events and fedmsg envelopes, one per line. docs/formats.md is the specification.

use std::io::{BufRead, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::keys::{decode_base64, encode_base64};
use crate::event::Event;
use crate::rules::events;

/// The format version this code writes and the highest it reads.
pub const VERSION: u64 = 1;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When hark received it, RFC 3339 in UTC.
    pub received: String,
    /// The endpoint it came from (`tcp://relay.example.org:5570`), when known.
    pub endpoint: Option<String>,
    /// The ZeroMQ frames as received: `[topic, json]` from a publisher, `[json]` from a
    /// submission.
    pub frames: Vec<Vec<u8>>,
    /// Signers whose signatures verified when it was received (informational: a replay
    /// may verify again).
    pub signers: Vec<String>,
    /// The journal seq, for a record `hark history` read from a journal.
    pub seq: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    v: u64,
    received: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    frames: Vec<Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    signers: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// RFC 3339 UTC with microseconds, the timestamp form recordings use.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn frame_to_json(frame: &[u8]) -> Value {
    match std::str::from_utf8(frame) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => {
            let mut obj = Map::new();
            obj.insert("base64".into(), Value::String(encode_base64(frame)));
            Value::Object(obj)
        }
    }
}

fn frame_from_json(value: &Value, index: usize) -> Result<Vec<u8>, String> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(obj) if obj.len() == 1 => match obj.get("base64") {
            Some(Value::String(b64)) => {
                decode_base64(b64).map_err(|e| format!("frames[{index}]: invalid base64: {e}"))
            }
            _ => Err(format!(
                "frames[{index}]: expected a string or {{\"base64\": \"...\"}}"
            )),
        },
        _ => Err(format!(
            "frames[{index}]: expected a string or {{\"base64\": \"...\"}}"
        )),
    }
}

impl Record {
    /// A record of frames received now.
    pub fn new(frames: Vec<Vec<u8>>, endpoint: Option<String>) -> Self {
        Record {
            received: now_rfc3339(),
            endpoint,
            frames,
            signers: Vec::new(),
            seq: None,
        }
    }

    /// The record as one JSON line, without the newline.
    pub fn to_line(&self) -> String {
        let line = Line {
            v: VERSION,
            received: &self.received,
            endpoint: self.endpoint.as_deref(),
            frames: self.frames.iter().map(|f| frame_to_json(f)).collect(),
            signers: &self.signers,
            seq: self.seq,
        };
        // Serializing strings and plain values cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Append the record and a newline.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(self.to_line().as_bytes())?;
        out.write_all(b"\n")
    }

    /// Read a record object (one that has `frames`).
    pub fn from_value(value: &Value) -> Result<Record, String> {
        let obj = value.as_object().ok_or("a record must be a JSON object")?;
        if let Some(v) = obj.get("v") {
            match v.as_u64() {
                Some(v) if v <= VERSION => {}
                _ => {
                    return Err(format!(
                        "unsupported record version {v} (this hark reads up to {VERSION})"
                    ))
                }
            }
        }
        let received = obj
            .get("received")
            .and_then(Value::as_str)
            .ok_or("record field \"received\" is missing or not a string")?
            .to_string();
        let endpoint = match obj.get("endpoint") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("record field \"endpoint\" must be a string".into()),
        };
        let frames = obj
            .get("frames")
            .and_then(Value::as_array)
            .ok_or("record field \"frames\" must be a list")?
            .iter()
            .enumerate()
            .map(|(i, f)| frame_from_json(f, i))
            .collect::<Result<Vec<_>, _>>()?;
        let signers = match obj.get("signers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("record field \"signers\" must be a list of names")?,
            Some(_) => return Err("record field \"signers\" must be a list of names".into()),
        };
        let seq = match obj.get("seq") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or("record field \"seq\" must be a whole number")?,
            ),
        };
        Ok(Record {
            received,
            endpoint,
            frames,
            signers,
            seq,
        })
    }

    /// Parse the frames into an event, carrying the recorded signers over.
    pub fn to_event(&self) -> Result<Event, String> {
        let mut event = match self.frames.len() {
            1 => Event::from_submission(self.frames[0].clone()),
            _ => Event::from_frames(self.frames.clone()),
        }
        .map_err(|e| format!("frames: {e}"))?;
        event.signers = self.signers.clone();
        Ok(event)
    }
}

/// One line of a recording, or of a file of events.
#[derive(Debug, Clone)]
pub enum Entry {
    Record(Record),
    /// A bare Laniakea event or fedmsg envelope.
    Event(Box<Event>),
}

impl Entry {
    pub fn into_event(self) -> Result<Event, String> {
        match self {
            Entry::Record(r) => r.to_event(),
            Entry::Event(e) => Ok(*e),
        }
    }
}

/// Interpret one JSON value: a record (has `frames`), else a (loosely written) event.
pub fn entry_from_value(value: Value) -> Result<Entry, String> {
    if value.get("frames").is_some() {
        return Record::from_value(&value).map(Entry::Record);
    }
    events::from_loose(value).map(|e| Entry::Event(Box::new(e)))
}

/// Parse one line.
pub fn parse_line(line: &str) -> Result<Entry, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    entry_from_value(value)
}

/// Read events from JSON lines: `(line number, event or error)` per non-blank line, so a
/// bad line is reported and the rest still read.
pub fn read_events<R: BufRead>(reader: R) -> impl Iterator<Item = (usize, Result<Event, String>)> {
    reader.lines().enumerate().filter_map(|(i, line)| {
        let number = i + 1;
        match line {
            Err(e) => Some((number, Err(format!("cannot read line: {e}")))),
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some((number, parse_line(&text).and_then(Entry::into_event))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LK: &str = r#"{"data":{"repo":"master"},"format":"1.0","tag":"_lk.archive.x","time":"2023-11-30T12:00:00.123456","uuid":"5b3c1a2e-8f00-11ee-b9d1-0242ac120002"}"#;

    #[test]
    fn records_round_trip_exactly() {
        let mut rec = Record::new(
            vec![b"_lk.archive.x".to_vec(), LK.as_bytes().to_vec()],
            Some("tcp://127.0.0.1:5570".into()),
        );
        rec.signers = vec!["archive-master".into()];
        let line = rec.to_line();
        assert!(!line.contains('\n'));
        let back = match parse_line(&line).unwrap() {
            Entry::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(back, rec);
        let ev = back.to_event().unwrap();
        assert_eq!(ev.topic, "_lk.archive.x");
        assert_eq!(
            &*ev.json_bytes(),
            LK.as_bytes(),
            "the JSON reaches stdin byte for byte"
        );
        assert_eq!(ev.signers, vec!["archive-master".to_string()]);
    }

    #[test]
    fn binary_frames_use_base64() {
        let rec = Record {
            received: "2024-01-01T00:00:00Z".into(),
            endpoint: None,
            frames: vec![vec![0xff, 0x00, 0x41]],
            signers: vec![],
            seq: None,
        };
        let line = rec.to_line();
        assert_eq!(
            line,
            r#"{"v":1,"received":"2024-01-01T00:00:00Z","frames":[{"base64":"/wBB"}]}"#
        );
        let Entry::Record(back) = parse_line(&line).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(back, rec);
        assert!(back.to_event().unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn other_line_shapes() {
        let ev = parse_line(LK).unwrap().into_event().unwrap();
        assert_eq!(ev.topic, "_lk.archive.x");
        let fed = r#"{"topic":"org.fedoraproject.prod.buildsys.build.state.change","msg":{"name":"x"},"msg_id":"2024-abc","timestamp":1700000000}"#;
        let ev = parse_line(fed).unwrap().into_event().unwrap();
        assert_eq!(ev.data["name"], "x");
        let sub = format!(
            r#"{{"received":"2024-01-01T00:00:00Z","frames":[{}]}}"#,
            serde_json::to_string(LK).unwrap()
        );
        assert_eq!(
            parse_line(&sub).unwrap().into_event().unwrap().topic,
            "_lk.archive.x"
        );
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let input = format!(
            "{LK}\nnot json\n\n{{\"frames\": 3, \"received\": \"x\"}}\n{{\"v\": 9, \"frames\": [], \"received\": \"x\"}}\n{LK}\n"
        );
        let results: Vec<(usize, Result<Event, String>)> = read_events(input.as_bytes()).collect();
        let lines: Vec<usize> = results.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 6]);
        assert!(results[0].1.is_ok());
        assert!(results[1].1.as_ref().unwrap_err().contains("invalid JSON"));
        assert!(results[2].1.as_ref().unwrap_err().contains("frames"));
        assert!(results[3].1.as_ref().unwrap_err().contains("version"));
        assert!(results[4].1.is_ok());
    }
}
