//! Integration tests of the bus with real processes on loopback: `hark relay`, `hark
//! publish` and `hark tail`, plus raw ZeroMQ peers for malformed input.

mod common;

use std::time::{Duration, Instant};

use common::messages::python_fedmsg_body;
use common::{
    event_bytes, free_endpoint, hark_command as hark, keypair, signed, spawn_ready,
    temp_dir as tempdir, Proc,
};
use hark::bus::subscribe::Subscriber;
use hark::config::ZmqConfig;
use hark::event::keys::SigningKey;
use hark::event::{canonical, sign};
use serde_json::{json, Value};

struct Bus {
    _dir: tempfile::TempDir,
    keys: std::path::PathBuf,
    submit: String,
    publish: String,
    fedmsg: String,
    archive: SigningKey,
    _relay: Proc,
}

/// A relay trusting `archive` (granted `_lk.archive.**`) and `stranger` (no grant), with a
/// 4 KiB message limit; relay key `relay`.
fn start_bus() -> Bus {
    let dir = tempdir();
    let keys = dir.path().join("trusted");
    std::fs::create_dir(&keys).unwrap();
    let archive = keypair(&keys, "archive");
    keypair(&keys, "stranger");
    let relay_dir = dir.path().join("relay");
    std::fs::create_dir(&relay_dir).unwrap();
    keypair(&relay_dir, "relay");
    std::fs::copy(relay_dir.join("relay.key"), keys.join("relay.key")).unwrap();
    let (submit, publish, fedmsg) = (free_endpoint(), free_endpoint(), free_endpoint());
    let relay = spawn_ready(
        "relay",
        hark()
            .args([
                "relay",
                "--submit",
                &submit,
                "--publish",
                &publish,
                "--fedmsg-inbound",
                &fedmsg,
            ])
            .arg("--key")
            .arg(relay_dir.join("relay.key_secret"))
            .arg("--trusted")
            .arg(&keys)
            .args([
                "--grant",
                "archive=_lk.archive.**",
                "--max-message-size",
                "4096",
                "--name",
                "test-relay",
            ]),
        "relay ready",
    );
    Bus {
        _dir: dir,
        keys,
        submit,
        publish,
        fedmsg,
        archive,
        _relay: relay,
    }
}

/// A raw DEALER that sends frames and returns the relay's ack.
fn submit_raw(endpoint: &str, frames: &[&[u8]]) -> Value {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s.send_multipart(frames, 0).unwrap();
    assert!(
        s.poll(zmq::POLLIN, 10_000).unwrap() > 0,
        "no ack within 10s"
    );
    serde_json::from_slice(&s.recv_bytes(0).unwrap()).expect("ack is JSON")
}

/// Subscribe and publish warm-up events until the subscriber demonstrably receives.
fn joined_subscriber(bus: &Bus) -> Subscriber {
    let sub = Subscriber::connect(
        std::slice::from_ref(&bus.publish),
        &[],
        &ZmqConfig::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ack = submit_raw(
            &bus.submit,
            &[&event_bytes(&signed(
                &bus.archive,
                "_lk.archive.warmup",
                json!({}),
            ))],
        );
        assert_eq!(ack["status"], "accepted", "{ack}");
        if sub.recv(Duration::from_millis(300)).unwrap().is_some() {
            while sub.recv(Duration::from_millis(100)).unwrap().is_some() {}
            return sub;
        }
    }
    panic!("subscriber never joined");
}

/// Everything received until an event with `uuid` arrives.
fn receive_until(sub: &Subscriber, uuid: &str) -> Vec<Vec<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(frames) = sub.recv(Duration::from_millis(200)).unwrap() {
            let done = serde_json::from_slice::<Value>(&frames[1])
                .map(|v| v["uuid"] == uuid || v["msg_id"] == uuid)
                .unwrap_or(false);
            seen.push(frames);
            if done {
                return seen;
            }
        }
    }
    panic!("event {uuid} never arrived; got {} others", seen.len());
}

#[test]
fn publish_relay_tail_end_to_end() {
    let bus = start_bus();
    let mut tail = Proc::spawn(
        "tail",
        hark()
            .args([
                "tail",
                "--connect",
                &bus.publish,
                "--json",
                "--count",
                "1",
                "--timeout",
                "30s",
                "--topic",
                "_lk.archive.*.published",
            ])
            .arg("--trusted")
            .arg(&bus.keys),
    );
    tail.stderr
        .wait_for("subscribing to", Duration::from_secs(20))
        .expect("tail subscribed");
    // The tail may join late (slow joiner): publish until it has printed one event.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut uuids = Vec::new();
    while tail.try_status().is_none() && Instant::now() < deadline {
        let out = hark()
            .args(["publish", "--relay", &bus.submit, "--key"])
            .arg(bus._dir.path().join("trusted/archive.key_secret"))
            .args([
                "_lk.archive.master.published",
                "--data",
                r#"{"repo": "master", "n": 12345678901234567890123}"#,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        uuids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        std::thread::sleep(Duration::from_millis(200));
    }
    tail.wait_success(Duration::from_secs(10))
        .expect("tail exits 0 after --count 1");
    let printed = tail
        .stdout
        .take(1, Duration::from_secs(5))
        .expect("tail printed a line");
    let line: Value = serde_json::from_str(&printed[0]).unwrap();
    assert!(uuids.contains(&line["uuid"].as_str().unwrap().to_string()));
    assert_eq!(line["topic"], "_lk.archive.master.published");
    assert_eq!(line["signers"], json!(["archive", "relay"]));
    assert_eq!(line["relay"]["relay"], "test-relay");
    assert!(line["relay"]["seq"].as_u64().unwrap() >= 1);
    // A 73-bit integer survives publish, relay and tail exactly.
    assert_eq!(line["data"]["n"].to_string(), "12345678901234567890123");
}

#[test]
fn every_refusal_is_refused_and_the_relay_keeps_serving() {
    let bus = start_bus();
    let sub = joined_subscriber(&bus);
    let archive = &bus.archive;
    let stranger =
        hark::event::keys::read_signing_key(&bus._dir.path().join("trusted/stranger.key_secret"))
            .unwrap();
    let outsider = SigningKey::generate("outsider");
    let mut refused_uuids = Vec::new();

    let mut tampered = signed(archive, "_lk.archive.x", json!({"n": 1}));
    tampered["data"]["n"] = json!(2);
    let mut unsigned = signed(archive, "_lk.archive.x", json!({}));
    unsigned.as_object_mut().unwrap().remove("signatures");
    let mut stale = json!({"tag": "_lk.archive.x", "uuid": "stale-1", "format": "1.0", "time": "2001-01-01T00:00:00", "data": {}});
    sign::sign(&mut stale, archive).unwrap();
    let big = signed(archive, "_lk.archive.x", json!({"blob": "x".repeat(5000)}));
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![b"{not json".to_vec()], "malformed-json"),
        (vec![vec![0xff, 0xfe, 0x00]], "not-utf8"),
        (
            vec![
                b"_lk.archive.x".to_vec(),
                event_bytes(&signed(archive, "_lk.archive.x", json!({}))),
            ],
            "frame-count",
        ),
        (vec![event_bytes(&big)], "oversized"),
        (vec![event_bytes(&tampered)], "bad-signature"),
        (vec![event_bytes(&unsigned)], "unsigned"),
        (
            vec![event_bytes(&signed(&outsider, "_lk.archive.x", json!({})))],
            "untrusted-signer",
        ),
        // Trusted, but holds no grant at all.
        (
            vec![event_bytes(&signed(&stranger, "_lk.archive.x", json!({})))],
            "topic-not-granted",
        ),
        (
            vec![event_bytes(&signed(
                archive,
                "_lk.jobs.job-finished",
                json!({}),
            ))],
            "topic-not-granted",
        ),
        (vec![event_bytes(&stale)], "stale"),
        (
            vec![br#"{"tag":"_lk.archive.x","format":"1.0"}"#.to_vec()],
            "bad-field",
        ),
        // Canonical JSON could only write this as Infinity, which is not JSON.
        (
            vec![br#"{"tag":"_lk.archive.x","uuid":"inf-1","format":"1.0","time":"2026-01-01T00:00:00","data":{"n":1e400}}"#.to_vec()],
            "non-finite-number",
        ),
    ];
    for (frames, reason) in &cases {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let ack = submit_raw(&bus.submit, &refs);
        assert_eq!(ack["status"], "refused", "case {reason}: {ack}");
        assert_eq!(ack["reason"], *reason, "case {reason}: {ack}");
        assert!(ack["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(u) = ack["uuid"].as_str() {
            refused_uuids.push(u.to_string());
        }
    }
    // Duplicates: the second submission of the same event is acked as such, not republished.
    let once = event_bytes(&signed(archive, "_lk.archive.once", json!({})));
    assert_eq!(submit_raw(&bus.submit, &[&once])["status"], "accepted");
    assert_eq!(submit_raw(&bus.submit, &[&once])["status"], "duplicate");

    // REQ-style peers (empty delimiter frame) are accepted too.
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).unwrap();
    req.set_linger(0).unwrap();
    req.connect(&bus.submit).unwrap();
    req.send(
        event_bytes(&signed(archive, "_lk.archive.req", json!({}))),
        0,
    )
    .unwrap();
    assert!(req.poll(zmq::POLLIN, 10_000).unwrap() > 0);
    let ack: Value = serde_json::from_slice(&req.recv_bytes(0).unwrap()).unwrap();
    assert_eq!(ack["status"], "accepted");

    // Still serving: a final event arrives, and nothing refused was ever published.
    let sentinel = signed(archive, "_lk.archive.sentinel", json!({}));
    assert_eq!(
        submit_raw(&bus.submit, &[&event_bytes(&sentinel)])["status"],
        "accepted"
    );
    let seen = receive_until(&sub, sentinel["uuid"].as_str().unwrap());
    let topics: Vec<String> = seen
        .iter()
        .map(|f| String::from_utf8_lossy(&f[0]).into_owned())
        .collect();
    assert_eq!(
        topics,
        vec![
            "_lk.archive.once",
            "_lk.archive.req",
            "_lk.archive.sentinel"
        ]
    );
    for frames in &seen {
        let v: Value = serde_json::from_slice(&frames[1]).unwrap();
        assert!(!refused_uuids.contains(&v["uuid"].as_str().unwrap().to_string()));
        // Published frames are canonical JSON: re-serializing gives the same bytes.
        assert_eq!(canonical::to_vec(&v).unwrap(), frames[1]);
    }
}

#[test]
fn fedmsg_frames_pass_byte_for_byte_and_bad_ones_do_not() {
    let bus = start_bus();
    let sub = joined_subscriber(&bus);
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.connect(&bus.fedmsg).unwrap();
    // Python's fedmsg writes ensure_ascii JSON with its own key order; keep it untouched.
    let body =
        |id: &str, topic: &str| python_fedmsg_body(topic, id, r#"{"text": "caf\u00e9 'quote'"}"#);
    let topic = "org.fedoraproject.prod.buildsys.build.state.change";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut received = None;
    let mut n = 0;
    // PUB connect has its own slow-joiner window: resend (with fresh ids) until one arrives.
    while received.is_none() && Instant::now() < deadline {
        n += 1;
        publisher
            .send_multipart([topic.as_bytes(), b"{bad json"], 0)
            .unwrap();
        publisher
            .send_multipart(
                [
                    b"org.other".as_slice(),
                    body(&format!("mismatch-{n}"), topic).as_bytes(),
                ],
                0,
            )
            .unwrap();
        publisher
            .send_multipart(
                [
                    topic.as_bytes(),
                    body(&format!("2026-good-{n}"), topic).as_bytes(),
                ],
                0,
            )
            .unwrap();
        received = sub.recv(Duration::from_millis(300)).unwrap();
    }
    let frames = received.expect("fedmsg message never relayed");
    assert_eq!(frames[0], topic.as_bytes());
    assert!(
        frames[1].starts_with(b"{\"i\": 1, \"msg\""),
        "bytes were re-encoded: {}",
        String::from_utf8_lossy(&frames[1])
    );
    let v: Value = serde_json::from_slice(&frames[1]).unwrap();
    assert_eq!(
        frames[1],
        body(v["msg_id"].as_str().unwrap(), topic).as_bytes()
    );
    // Only good messages ever come through.
    while let Some(f) = sub.recv(Duration::from_millis(300)).unwrap() {
        assert_eq!(f[0], topic.as_bytes());
        let v: Value = serde_json::from_slice(&f[1]).unwrap();
        assert!(v["msg_id"].as_str().unwrap().starts_with("2026-good-"));
    }
}

#[test]
fn publish_without_a_relay_times_out_with_advice() {
    let dir = tempdir();
    keypair(dir.path(), "me");
    let started = Instant::now();
    let out = hark()
        .args([
            "publish",
            "--relay",
            &free_endpoint(),
            "--timeout",
            "1s",
            "--no-spool",
            "--key",
        ])
        .arg(dir.path().join("me.key_secret"))
        .args(["_lk.test.x", "--data", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ack from relay") && err.contains("hark relay"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn config_errors_name_file_line_and_column() {
    let dir = tempdir();
    let cfg = dir.path().join("hark.yaml");
    std::fs::write(
        &cfg,
        "relay:\n  submit: [tcp://127.0.0.1:1]\ntrust:\n  max_age: soon\n",
    )
    .unwrap();
    let out = hark()
        .arg("relay")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", cfg.display())), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn keygen_writes_laniakea_keyfiles_and_never_overwrites() {
    let dir = tempdir();
    let run = || {
        hark()
            .args(["keygen", "--id", "archive-master", "--out"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let public = std::fs::read_to_string(dir.path().join("archive-master.key")).unwrap();
    assert!(public.contains("id = \"archive-master\"") && public.contains("verify-key = \""));
    assert!(!public.contains("signing-key"));
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
}

#[test]
fn record_writes_frames_that_read_back_as_the_same_events() {
    let bus = start_bus();
    let out = bus._dir.path().join("rec.jsonl");
    let mut rec = Proc::spawn(
        "record",
        hark()
            .args([
                "record",
                "--connect",
                &bus.publish,
                "--count",
                "2",
                "--timeout",
                "30s",
            ])
            .arg("--trusted")
            .arg(&bus.keys)
            .arg("--out")
            .arg(&out),
    );
    rec.stderr
        .wait_for("subscribing to", Duration::from_secs(20))
        .expect("record subscribed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = Vec::new();
    while rec.try_status().is_none() && Instant::now() < deadline {
        let ev = signed(
            &bus.archive,
            "_lk.archive.recorded",
            json!({"n": sent.len()}),
        );
        assert_eq!(
            submit_raw(&bus.submit, &[&event_bytes(&ev)])["status"],
            "accepted"
        );
        sent.push(ev["uuid"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(100));
    }
    rec.wait_success(Duration::from_secs(10))
        .expect("record stops after --count 2");
    let file = std::fs::File::open(&out).unwrap();
    let events: Vec<_> = hark::record::read_events(std::io::BufReader::new(file))
        .map(|(line, ev)| ev.unwrap_or_else(|e| panic!("line {line}: {e}")))
        .collect();
    assert_eq!(events.len(), 2);
    for ev in &events {
        assert!(sent.contains(&ev.uuid));
        assert_eq!(ev.signers, vec!["archive", "relay"]);
        // The frame is kept byte for byte: it is still canonical and still verifies.
        let body: Value = serde_json::from_slice(&ev.frames[1]).unwrap();
        assert_eq!(canonical::to_vec(&body).unwrap(), ev.frames[1]);
    }
}

/// libzmq drops a connection whose peer sent a message over the subscriber's limit, and
/// then never reconnects it by itself: the subscriber must notice, connect again and keep
/// receiving from that endpoint.
#[test]
fn a_subscriber_keeps_receiving_after_an_oversized_message() {
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    // The kernel's port, not a probed one another test may take before the bind.
    publisher.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = publisher.get_last_endpoint().unwrap().unwrap();
    let sub =
        Subscriber::connect(std::slice::from_ref(&endpoint), &[], &ZmqConfig::default()).unwrap();
    // Publish `topic` until the subscriber has it (slow joiner, then the reconnect).
    let heard = |topic: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            publisher.send_multipart([topic, b"{}"], 0).unwrap();
            if let Some(frames) = sub.recv(Duration::from_millis(200)).unwrap() {
                if frames[0] == topic {
                    return true;
                }
            }
        }
        false
    };
    assert!(heard(b"before"), "the subscriber never joined");
    assert!(sub.take_reconnected().is_empty());
    let oversized = vec![b'x'; 64 * 1024 * 1024 + 1];
    publisher
        .send_multipart([b"huge".as_slice(), &oversized], 0)
        .unwrap();
    assert!(
        heard(b"after"),
        "nothing arrived from the endpoint after the oversized message"
    );
    assert_eq!(sub.take_reconnected(), vec![endpoint]);
}
