use std::time::Duration;

use super::*;
use crate::journal::{Journal, NewEntry, Retention};

fn journal(dir: &tempfile::TempDir) -> Journal {
    Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        },
    )
    .expect("open")
}

fn event_frames(topic: &str, i: u64) -> Vec<Vec<u8>> {
    vec![
        topic.as_bytes().to_vec(),
        format!("{{\"i\":{i},\"pad\":\"{}\"}}", "é".repeat((i % 7) as usize)).into_bytes(),
    ]
}

/// Fill a journal with `n` events; every third is on `org.debian.`, received at 1000 + i.
fn filled(dir: &tempfile::TempDir, n: u64) -> Journal {
    let mut j = journal(dir);
    let topic = |i: u64| {
        if i.is_multiple_of(3) {
            "org.debian.upload"
        } else {
            "org.ubuntu.build"
        }
    };
    let frames: Vec<Vec<Vec<u8>>> = (1..=n).map(|i| event_frames(topic(i), i)).collect();
    let uuids: Vec<String> = (1..=n).map(|i| format!("u{i}")).collect();
    let entries: Vec<NewEntry> = (1..=n)
        .zip(frames.iter().zip(&uuids))
        .map(|(i, (frames, uuid))| NewEntry {
            frames,
            topic: topic(i),
            uuid,
            received_ms: 1000 + i as i64,
        })
        .collect();
    assert_eq!(j.append_batch(&entries).expect("append"), 1);
    j
}

/// What a client ends with after running `request` to its end against `journal`,
/// counting round trips.
struct Outcome {
    events: Vec<(u64, Vec<Vec<u8>>)>,
    last: Step,
    requests: usize,
}

fn run(journal: &Journal, request: Request) -> Outcome {
    let mut cursor = Cursor::new(request);
    let mut events = Vec::new();
    let mut requests = 0;
    // Bounded: a runaway continuation fails the test instead of hanging it.
    while requests < 10_000 {
        requests += 1;
        let messages = answer(journal, &cursor.request());
        let mut last = None;
        for message in messages {
            let reply = parse_reply(message).expect("parse");
            match cursor.on_reply(reply).expect("reply") {
                Step::Event { seq, frames, .. } => events.push((seq, frames)),
                step => last = Some(step),
            }
        }
        match last.expect("every answer ends with a marker") {
            Step::Continue => assert!(!cursor.is_finished()),
            step => {
                assert!(cursor.is_finished());
                return Outcome {
                    events,
                    last: step,
                    requests,
                };
            }
        }
    }
    panic!("replay did not finish");
}

#[test]
fn a_seq_replay_streams_every_frame_in_order_in_bounded_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 1000);
    let request = Request {
        max_chunk: Some(100),
        ..Request::after(j.epoch(), 0)
    };
    let out = run(&j, request);
    assert_eq!(out.events.len(), 1000);
    for (i, (seq, frames)) in out.events.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(*seq, i);
        let topic = if i.is_multiple_of(3) {
            "org.debian.upload"
        } else {
            "org.ubuntu.build"
        };
        assert_eq!(frames, &event_frames(topic, i), "seq {i} byte for byte");
    }
    assert_eq!(
        out.last,
        Step::Done {
            epoch: j.epoch().to_string(),
            head_seq: 1000
        }
    );
    // Ten full chunks; the tenth reaches the head and says `end`, not `more`.
    assert_eq!(out.requests, 10);
}

#[test]
fn a_chunk_never_exceeds_the_cap_whatever_the_request_asks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, MAX_CHUNK as u64 + 10);
    let request = Request {
        max_chunk: Some(1_000_000),
        ..Request::after(j.epoch(), 0)
    };
    let messages = answer(&j, &request.to_bytes());
    assert_eq!(messages.len(), MAX_CHUNK + 1);
    let marker = parse_reply(messages[MAX_CHUNK].clone()).expect("marker");
    assert_eq!(
        marker.header,
        Header::More {
            epoch: j.epoch().to_string(),
            next_seq: MAX_CHUNK as u64 + 1,
            head_seq: MAX_CHUNK as u64 + 10,
            count: MAX_CHUNK as u64,
        }
    );
}

#[test]
fn big_events_are_cut_into_chunks_by_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = journal(&dir);
    let big = vec![b"t".to_vec(), vec![b'x'; 3 << 20]];
    for i in 0..5 {
        j.append(&big, "t", &format!("u{i}"), 1).expect("append");
    }
    let first = answer(&j, &Request::after(j.epoch(), 0).to_bytes());
    // 3 MiB each under an 8 MiB cap: two events, then `more`.
    assert_eq!(first.len(), 3);
    let out = run(&j, Request::after(j.epoch(), 0));
    assert_eq!(out.events.len(), 5);
    assert!(out.events.iter().all(|(_, f)| f == &big));
    assert_eq!(out.requests, 3);
}

#[test]
fn topic_prefixes_and_a_seq_bound_narrow_the_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 60_000);
    let request = Request {
        topics: vec!["org.debian.".into()],
        to_seq: Some(30_000),
        ..Request::after(j.epoch(), 100)
    };
    let out = run(&j, request);
    let seqs: Vec<u64> = out.events.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (101..=30_000u64).filter(|i| i.is_multiple_of(3)).collect();
    assert_eq!(seqs, expected);
    assert!(matches!(
        out.last,
        Step::Done {
            head_seq: 60_000,
            ..
        }
    ));
    // A filter that matches nothing still ends, in bounded scans of the journal.
    let none = run(
        &j,
        Request {
            topics: vec!["net.example".into()],
            ..Request::after(j.epoch(), 0)
        },
    );
    assert!(none.events.is_empty());
    assert_eq!(none.requests, 60_000usize.div_ceil(SCAN_PER_CHUNK));
}

#[test]
fn a_time_range_replays_what_was_received_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 50);
    let out = run(
        &j,
        Request {
            max_chunk: Some(4),
            ..Request::between(1010, 1019)
        },
    );
    let seqs: Vec<u64> = out.events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (10..=19).collect::<Vec<_>>());
    assert!(matches!(out.last, Step::Done { head_seq: 50, .. }));
    let empty = run(&j, Request::between(5000, 6000));
    assert!(empty.events.is_empty());
    assert!(matches!(empty.last, Step::Done { head_seq: 50, .. }));
}

#[test]
fn caught_up_and_ahead_requests_end_at_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 5);
    let caught_up = run(&j, Request::after(j.epoch(), 5));
    assert!(caught_up.events.is_empty());
    assert_eq!(
        caught_up.last,
        Step::Done {
            epoch: j.epoch().to_string(),
            head_seq: 5
        }
    );
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh = journal(&fresh_dir);
    let empty = run(&fresh, Request::after(fresh.epoch(), 0));
    assert!(matches!(empty.last, Step::Done { head_seq: 0, .. }));
}

#[test]
fn a_range_older_than_retention_gets_an_explicit_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 10 * 40,
        },
    )
    .expect("open");
    for i in 1..=30u64 {
        j.append(&[vec![b'x'; 40]], "t", &format!("u{i}"), 1000 + i as i64)
            .expect("append");
    }
    j.prune(2000).expect("prune");
    assert_eq!(j.first_seq().expect("first"), 21);
    let gap = Step::Gap {
        epoch: j.epoch().to_string(),
        first_available: 21,
        head_seq: 30,
    };
    let by_seq = run(&j, Request::after(j.epoch(), 5));
    assert!(by_seq.events.is_empty());
    assert_eq!(by_seq.last, gap);
    let by_time = run(&j, Request::between(1001, 1030));
    assert_eq!(by_time.last, gap);
    // From the first available seq on, the rest comes.
    let rest = run(&j, Request::after(j.epoch(), 20));
    assert_eq!(rest.events.len(), 10);
    let later = run(&j, Request::between(1021, 1030));
    assert_eq!(later.events.len(), 10);
}

#[test]
fn an_unknown_epoch_is_answered_with_the_current_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 3);
    let out = run(&j, Request::after("0000-not-this-one", 2));
    assert_eq!(
        out.last,
        Step::UnknownEpoch {
            epoch: j.epoch().to_string(),
            first_available: 1,
            head_seq: 3
        }
    );
}

#[test]
fn malformed_requests_are_refused_not_answered_with_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 3);
    for bad in [
        b"not json".to_vec(),
        b"{}".to_vec(),
        br#"{"from_seq": 1}"#.to_vec(),
        br#"{"epoch": "e", "from_seq": -1}"#.to_vec(),
    ] {
        let messages = answer(&j, &bad);
        assert_eq!(messages.len(), 1, "{}", String::from_utf8_lossy(&bad));
        let reply = parse_reply(messages[0].clone()).expect("parse");
        assert!(
            matches!(reply.header, Header::BadRequest { .. }),
            "{:?}",
            reply.header
        );
    }
    // Unknown fields are ignored, so newer clients can ask older relays.
    let mut value: serde_json::Value =
        serde_json::from_slice(&Request::after(j.epoch(), 0).to_bytes()).expect("json");
    value["future_field"] = serde_json::json!(true);
    let messages = answer(&j, &serde_json::to_vec(&value).expect("json"));
    assert_eq!(messages.len(), 4);
}

#[test]
fn the_client_notices_dropped_and_reordered_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 10);
    let mut messages = answer(&j, &Request::after(j.epoch(), 0).to_bytes());
    // A dropped event (a full high-water mark would do this) shows at the marker.
    messages.remove(3);
    let mut cursor = Cursor::new(Request::after(j.epoch(), 0));
    let mut result = Ok(Step::Continue);
    for message in messages {
        result = cursor.on_reply(parse_reply(message).expect("parse"));
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(ProtocolError::Lost {
            announced: 10,
            received: 9
        })
    );
    let messages = answer(&j, &Request::after(j.epoch(), 0).to_bytes());
    let mut cursor = Cursor::new(Request::after(j.epoch(), 0));
    cursor
        .on_reply(parse_reply(messages[1].clone()).expect("parse"))
        .expect("seq 2");
    assert_eq!(
        cursor.on_reply(parse_reply(messages[0].clone()).expect("parse")),
        Err(ProtocolError::OutOfOrder { got: 1, after: 2 })
    );
}

#[test]
fn reply_headers_round_trip_and_bad_ones_are_errors() {
    let headers = [
        Header::Event {
            seq: u64::MAX,
            received_ms: -5,
            uuid: "u".into(),
        },
        Header::More {
            epoch: "e".into(),
            next_seq: 3,
            head_seq: 9,
            count: 2,
        },
        Header::End {
            epoch: "e".into(),
            head_seq: 9,
            next_seq: 10,
            count: 0,
        },
        Header::Gap {
            epoch: "e".into(),
            first_available: 4,
            head_seq: 9,
        },
        Header::UnknownEpoch {
            epoch: "e".into(),
            first_available: 1,
            head_seq: 9,
        },
        Header::BadRequest {
            message: "m".into(),
        },
        Header::JournalUnavailable {
            message: "m".into(),
        },
    ];
    for header in headers {
        let mut frames = vec![header.to_bytes()];
        if matches!(header, Header::Event { .. }) {
            frames.push(b"payload".to_vec());
        }
        let reply = parse_reply(frames.clone()).expect("parse");
        assert_eq!(reply.header, header);
        assert_eq!(reply.frames, frames[1..].to_vec());
    }
    assert_eq!(parse_reply(vec![]), Err(ProtocolError::Empty));
    assert!(matches!(
        parse_reply(vec![b"{\"status\":\"nope\"}".to_vec()]),
        Err(ProtocolError::UnknownStatus(_))
    ));
    assert!(matches!(
        parse_reply(vec![b"{\"status\":\"gap\"}".to_vec()]),
        Err(ProtocolError::Missing { .. })
    ));
    assert_eq!(
        parse_reply(vec![
            br#"{"status":"event","seq":1,"received_ms":1}"#.to_vec()
        ]),
        Err(ProtocolError::Frames("event"))
    );
    assert_eq!(
        parse_reply(vec![
            br#"{"status":"bad-request","message":"x"}"#.to_vec(),
            b"extra".to_vec()
        ]),
        Err(ProtocolError::Frames("bad-request"))
    );
}

#[test]
fn serve_keeps_the_router_envelope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 2);
    let request = Request::after(j.epoch(), 0).to_bytes();
    let plain = serve(&j, &[b"peer".to_vec(), request.clone()]);
    assert_eq!(plain.len(), 3);
    assert!(plain.iter().all(|m| m[0] == b"peer"));
    assert_eq!(
        parse_reply(plain[0][1..].to_vec()).expect("parse").frames,
        event_frames("org.ubuntu.build", 1)
    );
    let delimited = serve(&j, &[b"peer".to_vec(), Vec::new(), request]);
    assert_eq!(delimited.len(), 3);
    assert!(delimited.iter().all(|m| m[0] == b"peer" && m[1].is_empty()));
    let odd = serve(&j, &[b"peer".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(odd.len(), 1);
    assert!(matches!(
        parse_reply(odd[0][1..].to_vec()).expect("parse").header,
        Header::BadRequest { .. }
    ));
    assert!(serve(&j, &[]).is_empty());
}

/// The Python client printed in docs/architecture.md, run as written against a ROUTER
/// that serves [`serve`]: the documented format is the implemented one.
#[test]
fn the_documented_python_client_replays_byte_for_byte() {
    let python = match std::env::var_os("HARK_TEST_PYTHON") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    if !python.exists() {
        println!("SKIPPED: no Python with pyzmq (set HARK_TEST_PYTHON)");
        return;
    }
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"),
    )
    .expect("docs/architecture.md");
    let start = doc
        .find("A Python client (pyzmq):")
        .expect("the client is documented");
    let code = &doc[start..];
    let code = &code[code.find("```python\n").expect("code block") + 10..];
    let code = &code[..code.find("```").expect("end of code block")];

    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = journal(&dir);
    let mut expected = Vec::new();
    for i in 1..=700u64 {
        let frames = vec![
            format!("org.example.t{}", i % 2).into_bytes(),
            // Not valid UTF-8 on purpose: replay is bytes, not text.
            vec![0xff, 0x00, (i % 251) as u8, b'"'],
        ];
        let topic = format!("org.example.t{}", i % 2);
        j.append(&frames, &topic, &format!("u{i}"), 1000)
            .expect("append");
        if i % 2 == 1 && i > 100 {
            expected.push(format!(
                "{i} {}",
                frames.iter().map(|f| hex(f)).collect::<Vec<_>>().join(",")
            ));
        }
    }
    let epoch = j.epoch().to_string();

    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).expect("router");
    router.set_rcvtimeo(100).expect("rcvtimeo");
    router.set_linger(0).expect("linger");
    router.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = router
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8 endpoint");
    let script = format!(
        "{code}\nimport sys\nfor seq, frames in replay({endpoint:?}, {epoch:?}, 100, [\"org.example.t1\"]):\n    print(seq, \",\".join(f.hex() for f in frames))\n"
    );
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Python client did not finish"
        );
        if let Ok(incoming) = router.recv_multipart(0) {
            for message in serve(&j, &incoming) {
                router.send_multipart(message, 0).expect("send");
            }
        }
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    assert!(status.success(), "python failed: {status}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_time_range_continuation_stops_at_the_ranges_last_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = filled(&dir, 20_000);
    let out = run(
        &j,
        Request {
            max_chunk: Some(5),
            ..Request::between(1001, 1010)
        },
    );
    assert_eq!(out.events.len(), 10);
    // Two full chunks and the end, not a scan over the 20,000 rows after the range.
    assert!(out.requests <= 3, "{} requests", out.requests);
}
