//! `hark publish` against several relays, the spool and its flush, and a relay that never
//! acks (a Lighthouse stand-in): real processes on loopback, bounded waits.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{
    free_endpoint, hark_command as hark, keypair, peer_command, signed, spawn_ready, Proc,
};
use hark::bus::publish::submit;
use hark::bus::subscribe::Subscriber;
use hark::config::ZmqConfig;
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

struct Relay {
    submit: String,
    publish: String,
    _proc: Proc,
}

/// A relay trusting `key`'s signer for every topic; `extra` are more flags.
fn relay(dir: &Path, extra: &[&str]) -> Relay {
    let (submit, publish) = (free_endpoint(), free_endpoint());
    let proc = spawn_ready(
        "relay",
        hark()
            .args(["relay", "--submit", &submit, "--publish", &publish])
            .arg("--trusted")
            .arg(dir.join("trusted"))
            .args(["--grant", "me=**"])
            .args(extra),
        "relay ready",
    );
    Relay {
        submit,
        publish,
        _proc: proc,
    }
}

fn setup() -> (tempfile::TempDir, SigningKey) {
    let dir = common::temp_dir();
    std::fs::create_dir(dir.path().join("trusted")).unwrap();
    let key = keypair(&dir.path().join("trusted"), "me");
    (dir, key)
}

fn secret(dir: &Path) -> std::path::PathBuf {
    dir.join("trusted").join("me.key_secret")
}

fn publish(dir: &Path, args: &[&str]) -> Output {
    hark()
        .arg("publish")
        .arg("--key")
        .arg(secret(dir))
        .arg("--spool")
        .arg(dir.join("spool"))
        .args(args)
        .output()
        .expect("run hark publish")
}

fn flush(dir: &Path, args: &[&str]) -> Output {
    hark()
        .args(["publish", "--flush-spool"])
        .arg("--spool")
        .arg(dir.join("spool"))
        .args(args)
        .output()
        .expect("run hark publish --flush-spool")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// A subscriber that demonstrably receives: warm-up events until one arrives.
fn joined(relay: &Relay, key: &SigningKey) -> Subscriber {
    let sub = Subscriber::connect(
        std::slice::from_ref(&relay.publish),
        &[],
        &ZmqConfig::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let warm = signed(key, "_hark.test.warmup", json!({}));
        submit(
            &relay.submit,
            &warm,
            Duration::from_secs(5),
            &ZmqConfig::default(),
        )
        .unwrap();
        if sub.recv(Duration::from_millis(300)).unwrap().is_some() {
            while sub.recv(Duration::from_millis(100)).unwrap().is_some() {}
            return sub;
        }
    }
    panic!("subscriber never joined");
}

/// Events (not warm-ups) received until `quiet` passes with nothing new.
fn received(sub: &Subscriber, quiet: Duration) -> Vec<Value> {
    let mut seen = Vec::new();
    while let Some(frames) = sub.recv(quiet).unwrap() {
        let v: Value = serde_json::from_slice(&frames[1]).unwrap();
        if v["tag"] != "_hark.test.warmup" {
            seen.push(v);
        }
    }
    seen
}

#[test]
fn one_relay_down_costs_nothing_while_another_acks() {
    let (dir, key) = setup();
    let up = relay(dir.path(), &[]);
    let sub = joined(&up, &key);
    let started = Instant::now();
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &free_endpoint(),
            "--relay",
            &up.submit,
            "--timeout",
            "20s",
            "_hark.test.two",
            "--data",
            "{}",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "returned soon after the first ack, not after the dead relay's timeout: {:?}",
        started.elapsed()
    );
    let uuid = stdout_lines(&out)[0].clone();
    let events = received(&sub, Duration::from_millis(500));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["uuid"], uuid.as_str());
    assert_eq!(spooled(dir.path()), 0);
}

#[test]
fn no_relay_spools_and_the_flush_delivers_each_once_in_order() {
    let (dir, key) = setup();
    let dead = free_endpoint();
    let mut uuids = Vec::new();
    for n in 0..3 {
        let out = publish(
            dir.path(),
            &[
                "--relay",
                &dead,
                "--timeout",
                "300ms",
                "_hark.test.spooled",
                "--data",
                &format!("{{\"n\": {n}}}"),
            ],
        );
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("spooled") && err.contains("--flush-spool"),
            "{err}"
        );
        uuids.push(stdout_lines(&out)[0].clone());
    }
    assert_eq!(spooled(dir.path()), 3);

    // Still no relay: the flush keeps everything, in place.
    let out = flush(dir.path(), &["--relay", &dead, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(spooled(dir.path()), 3);

    let up = relay(dir.path(), &[]);
    let sub = joined(&up, &key);
    let out = flush(dir.path(), &["--relay", &up.submit]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out), uuids);
    let events = received(&sub, Duration::from_millis(500));
    let got: Vec<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    assert_eq!(got, uuids, "each spooled event once, in spool order");
    assert_eq!(spooled(dir.path()), 0);

    // Nothing left: a second flush delivers nothing.
    let out = flush(dir.path(), &["--relay", &up.submit]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout_lines(&out).is_empty());
    assert!(received(&sub, Duration::from_millis(300)).is_empty());
}

#[test]
fn a_spooled_event_older_than_max_age_is_restamped_and_delivered_once() {
    let (dir, key) = setup();
    let config = common::write_file(dir.path(), "hark.yaml", "trust:\n  max_age: 1s\n");
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &free_endpoint(),
            "--timeout",
            "200ms",
            "_hark.test.late",
            "--data",
            "{\"a\": 1}",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let uuid = stdout_lines(&out)[0].clone();
    let spooled_at = Instant::now();
    let up = relay(dir.path(), &["--config", config.to_str().unwrap()]);
    let sub = joined(&up, &key);
    // Make sure the event is past the relay's 1 s max_age (a wait for time to pass, not for
    // something to happen).
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(spooled_at.elapsed()));

    let out = flush(dir.path(), &["--relay", &up.submit]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key") && err.contains(&uuid), "{err}");
    assert_eq!(
        spooled(dir.path()),
        1,
        "kept for a flush that can re-stamp it"
    );
    assert!(received(&sub, Duration::from_millis(300)).is_empty());

    let out = flush(
        dir.path(),
        &[
            "--relay",
            &up.submit,
            "--key",
            secret(dir.path()).to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let events = received(&sub, Duration::from_millis(500));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["uuid"], uuid.as_str(), "the uuid is kept");
    assert_eq!(events[0]["data"], json!({"a": 1}));
    assert!(events[0]["spooled_time"].is_string(), "{}", events[0]);
    assert_ne!(events[0]["spooled_time"], events[0]["time"]);
    assert_eq!(spooled(dir.path()), 0);
}

#[test]
fn a_lighthouse_gets_exactly_one_copy_and_publish_exits_zero() {
    let (dir, _key) = setup();
    let (submit_ep, publish_ep) = (free_endpoint(), free_endpoint());
    let mut lighthouse = spawn_ready(
        "lighthouse",
        peer_command("lighthouse_standin.py").args([
            "--submit",
            &submit_ep,
            "--publish",
            &publish_ep,
        ]),
        "lighthouse ready",
    );
    let target = format!("{submit_ep},{publish_ep}");
    let out = publish(
        dir.path(),
        &[
            "--lighthouse",
            &target,
            "--timeout",
            "10s",
            "_lk.test.lh",
            "--data",
            "{}",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let uuid = stdout_lines(&out)[0].clone();
    // The publisher has exited, so nothing more can arrive from it.
    let copies: Vec<String> = lighthouse
        .stdout
        .drain(Duration::from_millis(500))
        .into_iter()
        .filter(|l| l.contains(&uuid))
        .collect();
    assert_eq!(copies.len(), 1, "one submission, never resent: {copies:?}");
    lighthouse.kill();

    // A Lighthouse that is down: no confirmation, so the event is spooled.
    let out = publish(
        dir.path(),
        &[
            "--lighthouse",
            &target,
            "--timeout",
            "500ms",
            "_lk.test.lh",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(spooled(dir.path()), 1);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_relay_without_tcp_gets_the_fix_not_invalid_argument() {
    let (dir, _key) = setup();
    let out = publish(
        dir.path(),
        &[
            "--relay",
            "127.0.0.1:5571",
            "--timeout",
            "1s",
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("--relay 127.0.0.1:5571: write tcp://127.0.0.1:5571"),
        "{err}"
    );
    assert!(!err.contains("Invalid argument"), "{err}");
    assert!(out.stdout.is_empty(), "nothing was published: {out:?}");
    assert_eq!(spooled(dir.path()), 0);

    // The same slip in hark.yaml names the setting.
    let config = common::write_file(
        dir.path(),
        "hark.yaml",
        "publish:\n  relays: [\"127.0.0.1:5571\"]\n",
    );
    let out = publish(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("publish.relays 127.0.0.1:5571: write tcp://127.0.0.1:5571"),
        "{err}"
    );
    assert_eq!(spooled(dir.path()), 0);

    // The flush reads the same relays and says the same.
    let out = flush(dir.path(), &["--relay", "127.0.0.1:5571"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("write tcp://127.0.0.1:5571"),
        "{out:?}"
    );
}

#[test]
fn a_relay_host_that_does_not_resolve_is_named() {
    let (dir, _key) = setup();
    let started = Instant::now();
    let out = publish(
        dir.path(),
        &[
            "--relay",
            "tcp://no-such-relay.invalid:5571",
            "--timeout",
            "10s",
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    // A name that does not resolve may be a DNS outage: the event is spooled, not lost.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("cannot resolve host \"no-such-relay.invalid\""),
        "{err}"
    );
    assert!(!err.contains("Invalid argument"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "told at once, not after the timeout"
    );
    assert_eq!(spooled(dir.path()), 1);
}

#[test]
fn a_topic_that_is_a_pattern_or_malformed_is_refused_before_signing() {
    let (dir, key) = setup();
    let up = relay(dir.path(), &[]);
    let sub = joined(&up, &key);
    for topic in [
        "",
        "_lk.archive.*.published",
        "_lk.**",
        "a.b?",
        "a.{b,c}",
        "a.[bc]",
        "a b",
        "a..b",
        ".a",
        "a.",
    ] {
        let out = publish(
            dir.path(),
            &[
                "--relay",
                &up.submit,
                "--timeout",
                "5s",
                topic,
                "--data",
                "{}",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{topic:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains("invalid topic"), "{topic:?}: {err}");
        assert!(out.stdout.is_empty(), "{topic:?}: no uuid, nothing signed");
    }
    // Checked before the key is even read.
    let out = hark()
        .args([
            "publish",
            "--key",
            "/nonexistent/key",
            "a.*",
            "--data",
            "{}",
        ])
        .output()
        .expect("run hark publish");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("invalid topic"), "{out:?}");

    assert!(
        received(&sub, Duration::from_millis(500)).is_empty(),
        "no refused topic reached the relay"
    );
    assert_eq!(spooled(dir.path()), 0);
    // The relay and the subscriber do work: a well-formed topic gets through.
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &up.submit,
            "_lk.archive.master.published",
            "--data",
            "{}",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let events = received(&sub, Duration::from_millis(500));
    assert_eq!(events.len(), 1, "{events:?}");
}

#[test]
fn a_dead_endpoint_and_a_wrong_port_are_told_apart_from_a_silent_relay() {
    let (dir, _key) = setup();
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &free_endpoint(),
            "--timeout",
            "1s",
            "--no-spool",
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("nothing listens there (connection refused)"),
        "{err}"
    );

    // The relay's publish port instead of its submit port: a ZeroMQ socket of the wrong
    // kind, so the handshake never gives a publisher a peer.
    let up = relay(dir.path(), &[]);
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &up.publish,
            "--timeout",
            "1500ms",
            "--no-spool",
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("is not a relay's submit socket") && err.contains("publish port"),
        "{err}"
    );
    assert!(!err.contains("connection refused"), "{err}");

    // A peer that completes the handshake but never acks (a Lighthouse given as --relay):
    // the general advice, neither of the two above.
    let (submit_ep, publish_ep) = (free_endpoint(), free_endpoint());
    let _lighthouse = spawn_ready(
        "lighthouse",
        peer_command("lighthouse_standin.py").args([
            "--submit",
            &submit_ep,
            "--publish",
            &publish_ep,
        ]),
        "lighthouse ready",
    );
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &submit_ep,
            "--timeout",
            "1500ms",
            "--no-spool",
            "_hark.test.x",
            "--data",
            "{}",
        ],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("no ack from relay"), "{err}");
    assert!(
        !err.contains("connection refused") && !err.contains("not a relay's submit socket"),
        "{err}"
    );
}

#[test]
fn data_with_a_number_beyond_a_double_is_refused_before_signing() {
    let (dir, _key) = setup();
    let nobody = free_endpoint();
    let out = publish(
        dir.path(),
        &[
            "--relay",
            &nobody,
            "_lk.test.inf",
            "--data",
            r#"{"n": 1e400}"#,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("beyond a double's range"), "{stderr}");
    assert_eq!(spooled(dir.path()), 0, "nothing spooled");
}

/// `--json-lines` publishes one event per line of stdin, as `fedmsg-logger --json-input`
/// does: a bad line is named by its number and skipped, the others are published in order,
/// and the status says something went wrong.
#[test]
fn json_lines_publish_one_event_per_line_and_name_a_bad_one() {
    use std::io::Write as _;
    let (dir, key) = setup();
    let up = relay(dir.path(), &[]);
    let sub = joined(&up, &key);
    let mut child = hark()
        .arg("publish")
        .arg("--key")
        .arg(secret(dir.path()))
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .args(["--relay", &up.submit, "--json-lines", "_hark.test.lines"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"n\": 1}\n[1, 2]\n\n{\"n\": 3}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("stdin:2") && stderr(&out).contains("must be a JSON object"),
        "{}",
        stderr(&out)
    );
    let uuids = stdout_lines(&out);
    assert_eq!(uuids.len(), 2, "{uuids:?}");
    let events = received(&sub, Duration::from_millis(500));
    let got: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e["uuid"].as_str().unwrap(), &e["data"]["n"]))
        .collect();
    assert_eq!(
        got,
        vec![
            (uuids[0].as_str(), &json!(1)),
            (uuids[1].as_str(), &json!(3))
        ]
    );
    assert_eq!(spooled(dir.path()), 0);
}
