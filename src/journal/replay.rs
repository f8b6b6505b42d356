//! The replay protocol over the journal, both sides, without sockets: what a subscriber
//! asks ([`Request`]), how the relay answers one request ([`answer`]: one chunk of
//! journaled frames, byte for byte, then a marker), and how the subscriber reads the
//! answers ([`parse_reply`], [`Cursor`]). Flow control is one chunk per request: the relay
//! keeps no state per client, and a client that stops asking costs it nothing.
//!
//! The wire format is documented in docs/architecture.md ("Relay journal and replay").

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Journal, JournalError, Selection};

/// Events per chunk when the request does not say.
pub const DEFAULT_CHUNK: usize = 256;
/// Events per chunk at most, whatever the request says. The relay's ROUTER must have a
/// send high-water mark above this plus one, or ZeroMQ drops the tail of a chunk.
pub const MAX_CHUNK: usize = 512;
/// Frame bytes per chunk at most (at least one event is always sent).
pub const MAX_CHUNK_BYTES: usize = 8 << 20;
/// Seqs examined per chunk at most, so a narrow topic filter answers in bounded time; a
/// chunk may then hold fewer events than asked for, and says `more`.
pub const SCAN_PER_CHUNK: usize = 16 * MAX_CHUNK;

/// What a subscriber asks for: a seq range in one epoch, or a receive-time range, with
/// optional topic prefixes. Unknown fields are ignored, so the format can grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The journal epoch `from_seq` counts in; required with `from_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// Inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
    /// Milliseconds since the Unix epoch, inclusive, on the relay's receive time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// Bytewise topic prefixes, as a SUB socket matches them; empty is every topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunk: Option<usize>,
}

impl Request {
    /// Everything after `last_seen` in `epoch`.
    pub fn after(epoch: &str, last_seen: u64) -> Request {
        Request {
            epoch: Some(epoch.to_string()),
            from_seq: Some(last_seen + 1),
            ..Request::default()
        }
    }

    /// Everything received in `from_ms..=to_ms`.
    pub fn between(from_ms: i64, to_ms: i64) -> Request {
        Request {
            from_ms: Some(from_ms),
            to_ms: Some(to_ms),
            ..Request::default()
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The first frame of every reply message. `Event` is followed by the journaled frames;
/// every other kind stands alone and ends the answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Event {
        seq: u64,
        received_ms: i64,
        uuid: String,
    },
    /// The chunk is complete and more may follow: ask again from `next_seq`.
    More {
        epoch: String,
        next_seq: u64,
        head_seq: u64,
        count: u64,
    },
    /// The range is delivered up to `head_seq` as it was when answering.
    End {
        epoch: String,
        head_seq: u64,
        next_seq: u64,
        count: u64,
    },
    /// Part of the range is older than retention; nothing was sent.
    Gap {
        epoch: String,
        first_available: u64,
        head_seq: u64,
    },
    /// The request names an epoch this journal is not; `epoch` is the current one.
    UnknownEpoch {
        epoch: String,
        first_available: u64,
        head_seq: u64,
    },
    BadRequest {
        message: String,
    },
    JournalUnavailable {
        message: String,
    },
}

impl Header {
    pub fn status(&self) -> &'static str {
        match self {
            Header::Event { .. } => "event",
            Header::More { .. } => "more",
            Header::End { .. } => "end",
            Header::Gap { .. } => "gap",
            Header::UnknownEpoch { .. } => "unknown-epoch",
            Header::BadRequest { .. } => "bad-request",
            Header::JournalUnavailable { .. } => "journal-unavailable",
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let status = self.status();
        let value = match self {
            Header::Event {
                seq,
                received_ms,
                uuid,
            } => json!({"status": status, "seq": seq, "received_ms": received_ms, "uuid": uuid}),
            Header::More {
                epoch,
                next_seq,
                head_seq,
                count,
            }
            | Header::End {
                epoch,
                head_seq,
                next_seq,
                count,
            } => json!({"status": status, "epoch": epoch, "next_seq": next_seq,
                        "head_seq": head_seq, "count": count}),
            Header::Gap {
                epoch,
                first_available,
                head_seq,
            }
            | Header::UnknownEpoch {
                epoch,
                first_available,
                head_seq,
            } => json!({"status": status, "epoch": epoch,
                        "first_available": first_available, "head_seq": head_seq}),
            Header::BadRequest { message } | Header::JournalUnavailable { message } => {
                json!({"status": status, "message": message})
            }
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// One reply message as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub header: Header,
    /// The journaled frames, byte for byte; empty unless `header` is `Event`.
    pub frames: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty replay message")]
    Empty,
    #[error("replay header is not JSON: {0}")]
    Header(String),
    #[error("replay header has unknown status {0:?}")]
    UnknownStatus(String),
    #[error("replay {status} header lacks {field:?}")]
    Missing {
        status: &'static str,
        field: &'static str,
    },
    #[error("replay {0} message carries the wrong number of frames")]
    Frames(&'static str),
    #[error("replayed seq {got} after {after}: out of order")]
    OutOfOrder { got: u64, after: u64 },
    #[error("replay chunk announced {announced} event(s) but {received} arrived")]
    Lost { announced: u64, received: u64 },
    #[error("replay message after the answer ended")]
    AfterEnd,
}

/// The relay's answer to one request frame: the messages to send back, in order, each a
/// list of frames without the ROUTER envelope (the socket thread prefixes the peer's
/// identity). Never fails: errors become a `bad-request` or `journal-unavailable` reply.
pub fn answer(journal: &Journal, request: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let request: Request = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("request is not a replay request: {e}")),
    };
    match journal.snapshot(|journal| answer_request(journal, &request)) {
        Ok(messages) => messages,
        Err(Refused::Bad(message)) => bad_request(message),
        Err(Refused::Journal(e)) => vec![vec![Header::JournalUnavailable {
            message: e.to_string(),
        }
        .to_bytes()]],
    }
}

/// [`answer`] for a message as a ROUTER socket receives it: `[identity, request]`, or
/// `[identity, "", request]` from a peer that uses a REQ-style delimiter, which is then
/// repeated on every reply. Returns complete messages to send; none for a message without
/// even an identity.
pub fn serve(journal: &Journal, incoming: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
    let Some((identity, rest)) = incoming.split_first() else {
        return Vec::new();
    };
    let (delimited, body) = match rest {
        [empty, body] if empty.is_empty() => (true, Some(body)),
        [body] => (false, Some(body)),
        _ => (false, None),
    };
    let replies = match body {
        Some(body) => answer(journal, body),
        None => bad_request(format!("a replay request is one frame, not {}", rest.len())),
    };
    replies
        .into_iter()
        .map(|frames| {
            let mut message = Vec::with_capacity(frames.len() + 2);
            message.push(identity.clone());
            if delimited {
                message.push(Vec::new());
            }
            message.extend(frames);
            message
        })
        .collect()
}

enum Refused {
    Bad(String),
    Journal(JournalError),
}

impl From<JournalError> for Refused {
    fn from(e: JournalError) -> Self {
        Refused::Journal(e)
    }
}

fn bad_request(message: String) -> Vec<Vec<Vec<u8>>> {
    vec![vec![Header::BadRequest { message }.to_bytes()]]
}

fn answer_request(
    journal: &Journal,
    request: &Request,
) -> std::result::Result<Vec<Vec<Vec<u8>>>, Refused> {
    let epoch = journal.epoch().to_string();
    let head_seq = journal.head_seq()?;
    let first_available = journal.first_seq()?;
    let control = |header: Header| Ok(vec![vec![header.to_bytes()]]);
    if request.from_seq.is_none() && request.from_ms.is_none() {
        return Err(Refused::Bad("a request needs from_seq or from_ms".into()));
    }
    if request.from_seq.is_some() && request.epoch.is_none() {
        return Err(Refused::Bad(
            "from_seq needs the epoch its seq numbers count in".into(),
        ));
    }
    if request.epoch.as_ref().is_some_and(|e| *e != epoch) {
        return control(Header::UnknownEpoch {
            epoch,
            first_available,
            head_seq,
        });
    }
    let gap = || {
        control(Header::Gap {
            epoch: epoch.clone(),
            first_available,
            head_seq,
        })
    };
    let end = |next_seq: u64| {
        control(Header::End {
            epoch: epoch.clone(),
            head_seq,
            next_seq,
            count: 0,
        })
    };
    let mut selection = Selection {
        from_seq: 0,
        to_seq: request.to_seq,
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        topic_prefixes: request.topics.clone(),
    };
    match request.from_seq {
        Some(from) => {
            if from.max(1) < first_available {
                return gap();
            }
            selection.from_seq = from.max(1);
            // A continuation of a time range: stop at its last seq rather than scanning
            // on to the head for rows the time filter would drop anyway.
            if let Some(to_ms) = request.to_ms {
                let last = journal
                    .seqs_for_time(request.from_ms.unwrap_or(i64::MIN), to_ms)?
                    .map_or(0, |(_, last)| last);
                selection.to_seq = Some(request.to_seq.map_or(last, |t| t.min(last)));
            }
        }
        None => {
            let from_ms = request.from_ms.unwrap_or(i64::MIN);
            if journal.pruned_through_ms()?.is_some_and(|p| p >= from_ms) {
                return gap();
            }
            let to_ms = request.to_ms.unwrap_or(i64::MAX);
            let Some((first, last)) = journal.seqs_for_time(from_ms, to_ms)? else {
                return end(head_seq + 1);
            };
            selection.from_seq = first;
            selection.to_seq = Some(request.to_seq.map_or(last, |t| t.min(last)));
        }
    }
    let limit = request
        .max_chunk
        .unwrap_or(DEFAULT_CHUNK)
        .clamp(1, MAX_CHUNK);
    let selected = journal.select(&selection, limit, SCAN_PER_CHUNK)?;
    let mut messages = Vec::with_capacity(selected.entries.len() + 1);
    let mut bytes = 0usize;
    let mut next_seq = selected.next_seq;
    let mut done = selected.done;
    for entry in selected.entries {
        let size: usize = entry.frames.iter().map(Vec::len).sum();
        if !messages.is_empty() && bytes + size > MAX_CHUNK_BYTES {
            next_seq = entry.seq;
            done = false;
            break;
        }
        bytes += size;
        let mut message = Vec::with_capacity(entry.frames.len() + 1);
        message.push(
            Header::Event {
                seq: entry.seq,
                received_ms: entry.received_ms,
                uuid: entry.uuid,
            }
            .to_bytes(),
        );
        message.extend(entry.frames);
        messages.push(message);
    }
    let count = messages.len() as u64;
    let marker = if done {
        Header::End {
            epoch,
            head_seq,
            next_seq,
            count,
        }
    } else {
        Header::More {
            epoch,
            next_seq,
            head_seq,
            count,
        }
    };
    messages.push(vec![marker.to_bytes()]);
    Ok(messages)
}

/// The header fields of every kind, so one plain parse reads any of them (serde's tagged
/// enums would lose numbers to serde_json's `arbitrary_precision`).
#[derive(Deserialize)]
struct RawHeader {
    status: String,
    seq: Option<u64>,
    received_ms: Option<i64>,
    uuid: Option<String>,
    epoch: Option<String>,
    next_seq: Option<u64>,
    head_seq: Option<u64>,
    count: Option<u64>,
    first_available: Option<u64>,
    message: Option<String>,
}

/// Read one reply message (without the envelope).
pub fn parse_reply(mut frames: Vec<Vec<u8>>) -> std::result::Result<Reply, ProtocolError> {
    if frames.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let rest = frames.split_off(1);
    let raw: RawHeader =
        serde_json::from_slice(&frames[0]).map_err(|e| ProtocolError::Header(e.to_string()))?;
    fn need<T>(
        v: Option<T>,
        status: &'static str,
        field: &'static str,
    ) -> Result<T, ProtocolError> {
        v.ok_or(ProtocolError::Missing { status, field })
    }
    let header = match raw.status.as_str() {
        "event" => Header::Event {
            seq: need(raw.seq, "event", "seq")?,
            received_ms: need(raw.received_ms, "event", "received_ms")?,
            uuid: raw.uuid.unwrap_or_default(),
        },
        "more" => Header::More {
            epoch: need(raw.epoch, "more", "epoch")?,
            next_seq: need(raw.next_seq, "more", "next_seq")?,
            head_seq: need(raw.head_seq, "more", "head_seq")?,
            count: need(raw.count, "more", "count")?,
        },
        "end" => Header::End {
            epoch: need(raw.epoch, "end", "epoch")?,
            head_seq: need(raw.head_seq, "end", "head_seq")?,
            next_seq: need(raw.next_seq, "end", "next_seq")?,
            count: need(raw.count, "end", "count")?,
        },
        "gap" => Header::Gap {
            epoch: need(raw.epoch, "gap", "epoch")?,
            first_available: need(raw.first_available, "gap", "first_available")?,
            head_seq: need(raw.head_seq, "gap", "head_seq")?,
        },
        "unknown-epoch" => Header::UnknownEpoch {
            epoch: need(raw.epoch, "unknown-epoch", "epoch")?,
            first_available: need(raw.first_available, "unknown-epoch", "first_available")?,
            head_seq: need(raw.head_seq, "unknown-epoch", "head_seq")?,
        },
        "bad-request" => Header::BadRequest {
            message: raw.message.unwrap_or_default(),
        },
        "journal-unavailable" => Header::JournalUnavailable {
            message: raw.message.unwrap_or_default(),
        },
        other => return Err(ProtocolError::UnknownStatus(other.to_string())),
    };
    let is_event = matches!(header, Header::Event { .. });
    if is_event == rest.is_empty() {
        return Err(ProtocolError::Frames(header.status()));
    }
    Ok(Reply {
        header,
        frames: rest,
    })
}

/// What the client does after one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A journaled event: its seq, receive time, uuid and frames as published.
    Event {
        seq: u64,
        received_ms: i64,
        uuid: String,
        frames: Vec<Vec<u8>>,
    },
    /// The chunk ended with more to come: send [`Cursor::request`] again.
    Continue,
    /// Caught up to `head_seq` of `epoch`.
    Done { epoch: String, head_seq: u64 },
    /// The range is partly past retention: events before `first_available` are gone.
    Gap {
        epoch: String,
        first_available: u64,
        head_seq: u64,
    },
    /// The relay's journal is another epoch now: everything after what was seen in the
    /// old one is gone from this relay.
    UnknownEpoch {
        epoch: String,
        first_available: u64,
        head_seq: u64,
    },
    /// The relay refused the request (`bad-request`) or cannot read its journal.
    Refused {
        status: &'static str,
        message: String,
    },
}

/// The client's side of one replay: the request to (re)send and checks on what comes
/// back (seq order, nothing dropped from a chunk).
#[derive(Debug, Clone)]
pub struct Cursor {
    request: Request,
    last_seq: Option<u64>,
    in_chunk: u64,
    finished: bool,
}

impl Cursor {
    pub fn new(request: Request) -> Cursor {
        Cursor {
            request,
            last_seq: None,
            in_chunk: 0,
            finished: false,
        }
    }

    /// The request frame to send now: the first one, or the continuation after `more`.
    pub fn request(&self) -> Vec<u8> {
        self.request.to_bytes()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Take one reply message.
    pub fn on_reply(&mut self, reply: Reply) -> std::result::Result<Step, ProtocolError> {
        if self.finished {
            return Err(ProtocolError::AfterEnd);
        }
        match reply.header {
            Header::Event {
                seq,
                received_ms,
                uuid,
            } => {
                if let Some(after) = self.last_seq.filter(|&l| seq <= l) {
                    return Err(ProtocolError::OutOfOrder { got: seq, after });
                }
                self.last_seq = Some(seq);
                self.in_chunk += 1;
                Ok(Step::Event {
                    seq,
                    received_ms,
                    uuid,
                    frames: reply.frames,
                })
            }
            Header::More {
                epoch,
                next_seq,
                count,
                ..
            } => {
                self.check_count(count)?;
                self.request.epoch = Some(epoch);
                self.request.from_seq = Some(next_seq);
                Ok(Step::Continue)
            }
            Header::End {
                epoch,
                head_seq,
                count,
                ..
            } => {
                self.check_count(count)?;
                self.finished = true;
                Ok(Step::Done { epoch, head_seq })
            }
            Header::Gap {
                epoch,
                first_available,
                head_seq,
            } => {
                self.finished = true;
                Ok(Step::Gap {
                    epoch,
                    first_available,
                    head_seq,
                })
            }
            Header::UnknownEpoch {
                epoch,
                first_available,
                head_seq,
            } => {
                self.finished = true;
                Ok(Step::UnknownEpoch {
                    epoch,
                    first_available,
                    head_seq,
                })
            }
            Header::BadRequest { message } => {
                self.finished = true;
                Ok(Step::Refused {
                    status: "bad-request",
                    message,
                })
            }
            Header::JournalUnavailable { message } => {
                self.finished = true;
                Ok(Step::Refused {
                    status: "journal-unavailable",
                    message,
                })
            }
        }
    }

    fn check_count(&mut self, announced: u64) -> std::result::Result<(), ProtocolError> {
        let received = std::mem::take(&mut self.in_chunk);
        if announced != received {
            self.finished = true;
            return Err(ProtocolError::Lost {
                announced,
                received,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
