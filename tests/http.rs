//! The relay's HTTP API with real clients: curl for `/healthz`, `/readyz`, `/v1/events`,
//! datagrepper's `/raw` and `/id` (over HTTPS too, with a test CA made by openssl at test
//! time), and fedmsg's own datagrepper client `fedmsg-dg-replay` against `/id`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_endpoint, free_port, hark_command, poll_until, spawn_ready, temp_dir};
use hark::bus::publish::{build_event, submit};
use hark::config::ZmqConfig;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

use common::publish_acked as publish;

use common::curl::curl;

/// `hark relay` submitting on `submit_ep`, with its HTTP API on `port` and its other
/// sockets on free ports.
fn relay_command(submit_ep: &str, port: u16) -> Command {
    let mut cmd = hark_command();
    cmd.args([
        "relay",
        "--submit",
        submit_ep,
        "--publish",
        &free_endpoint(),
    ])
    .args(["--replay", &free_endpoint()])
    .args(["--http", &format!("127.0.0.1:{port}")]);
    cmd
}

fn get(base: &str, path: &str) -> (u16, Value) {
    curl(&format!("{base}{path}"), &[])
}

fn uuids(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(
                r["frames"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            body["uuid"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn history_over_http_native_and_datagrepper_shapes() {
    let dir = temp_dir();
    let keys = common::test_keys(dir.path());
    let journal = dir.path().join("journal.db");
    let (submit_ep, publish_ep, fedmsg_ep) = (free_endpoint(), free_endpoint(), free_endpoint());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut relay = spawn_ready(
        "relay",
        hark_command()
            .args(["relay", "--submit", &submit_ep, "--publish", &publish_ep])
            .args(["--replay", &free_endpoint(), "--grant", "archive=**"])
            .args(["--fedmsg-inbound", &fedmsg_ep, "--name", "r0"])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .arg("--journal")
            .arg(&journal)
            .arg("--key")
            .arg(&keys.relay_secret)
            .arg("--trusted")
            .arg(&keys.trusted),
        "relay ready",
    );
    let (status, health) = get(&base, "/healthz");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let ready = poll_until(WAIT, || (get(&base, "/readyz").0 == 200).then_some(()));
    assert!(ready.is_some(), "/readyz never said ready");

    let mut sent = Vec::new();
    for (tag, suite) in [
        ("_lk.archive.package-upload", "unstable"),
        ("_lk.archive.package-upload", "bookworm"),
        ("_lk.jobs.job-finished", "unstable"),
        ("_lk.archive.package-upload", "unstable"),
    ] {
        sent.push(publish(
            &submit_ep,
            &keys.archive,
            tag,
            json!({"suite": suite, "pkg": "hello"}),
        ));
    }

    // Native: keyset pages over a topic glob, continued with `after`.
    let (status, first) = get(&base, "/v1/events?topic=_lk.archive.**&limit=2");
    assert_eq!(status, 200, "{first}");
    assert_eq!(uuids(&first), [sent[0].clone(), sent[1].clone()]);
    let next = first["next"].as_u64().expect("a cursor");
    let (_, second) = get(
        &base,
        &format!("/v1/events?topic=_lk.archive.**&limit=2&after={next}"),
    );
    assert_eq!(uuids(&second), [sent[3].clone()]);
    assert!(second["next"].is_null(), "{second}");
    // Each record carries its seq, receive time and verified signers.
    let rec = &first["events"][0];
    assert_eq!(rec["seq"], 1);
    assert_eq!(rec["signers"], json!(["archive", "relay"]));
    // `where` through the rules engine, signers, newest first.
    let (_, unstable) = get(
        &base,
        "/v1/events?where=%7Bdata.suite%3A%20unstable%7D&order=desc",
    );
    assert_eq!(
        uuids(&unstable),
        [sent[3].clone(), sent[2].clone(), sent[0].clone()]
    );
    assert_eq!(uuids(&get(&base, "/v1/events?signer=mallory").1).len(), 0);
    assert_eq!(
        uuids(&get(&base, "/v1/events?since=1h&signer=archive").1).len(),
        4
    );
    // Bad parameters: 400 with the reason.
    for (path, says) in [
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=5000", "limit"),
        ("/v1/events?topic=a..b", "topic"),
        ("/v1/events?where=%7Bnope", "where"),
        ("/v1/events?since=1h&start=0", "not both"),
        ("/v1/events?bogus=1", "unknown parameter"),
        ("/v1/events?after=x", "after"),
        ("/raw?rows_per_page=500", "rows_per_page"),
        ("/raw?user=ralph", "user"),
        ("/id", "id"),
    ] {
        let (status, body) = get(&base, path);
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {body}");
    }

    // datagrepper /raw: its answer shape, exact topics, OFFSET pages, order, categories.
    let (status, raw) = get(
        &base,
        "/raw?topic=_lk.archive.package-upload&rows_per_page=2&page=2&order=asc",
    );
    assert_eq!(status, 200, "{raw}");
    let mut keys_seen: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys_seen.sort();
    assert_eq!(
        keys_seen,
        [
            "arguments",
            "count",
            "pages",
            "raw_messages",
            "total",
            "total_exact"
        ]
    );
    assert_eq!(
        (
            raw["total"].as_u64(),
            raw["pages"].as_u64(),
            raw["count"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(raw["arguments"]["page"], 2);
    assert_eq!(raw["arguments"]["rows_per_page"], 2);
    assert_eq!(raw["arguments"]["order"], "asc");
    assert_eq!(
        raw["arguments"]["topics"],
        json!(["_lk.archive.package-upload"])
    );
    let m = &raw["raw_messages"][0];
    assert_eq!(m["msg_id"].as_str(), Some(sent[3].as_str()));
    assert_eq!(m["topic"], "_lk.archive.package-upload");
    assert_eq!(m["msg"], json!({"suite": "unstable", "pkg": "hello"}));
    assert!(m["timestamp"].as_f64().is_some_and(|t| t > 1.7e9), "{m}");
    for key in [
        "i",
        "username",
        "crypto",
        "signature",
        "certificate",
        "headers",
        "source_name",
        "source_version",
    ] {
        assert!(m.get(key).is_some(), "{key} missing: {m}");
    }
    let (_, newest) = get(&base, "/raw?rows_per_page=1");
    assert_eq!(
        newest["raw_messages"][0]["msg_id"].as_str(),
        Some(sent[3].as_str())
    );
    assert_eq!(newest["total"], 4);
    assert_eq!(newest["arguments"]["order"], "desc");
    let (_, jobs) = get(&base, "/raw?category=jobs");
    assert_eq!(jobs["total"], 1, "{jobs}");
    let (_, hello) = get(&base, "/raw?category=archive&contains=bookworm&delta=3600");
    assert_eq!(
        hello["raw_messages"][0]["msg_id"].as_str(),
        Some(sent[1].as_str()),
        "{hello}"
    );
    let (_, none) = get(&base, "/raw?end=978307200");
    assert_eq!(none["total"], 0);

    // /id: one message in the same shape, or 404.
    let (status, one) = get(&base, &format!("/id?id={}", sent[2]));
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["msg_id"].as_str(), Some(sent[2].as_str()));
    assert_eq!(one["topic"], "_lk.jobs.job-finished");
    assert_eq!(get(&base, "/id?id=no-such-id").0, 404);

    // A fedmsg message comes back as stored, timestamp as a float (datagrepper's form), and
    // fedmsg's own datagrepper client replays it from /id through the relay's inbound.
    let fedmsg_id = publish_fedmsg(&base, &fedmsg_ep, dir.path());
    let (status, original) = get(&base, &format!("/id?id={fedmsg_id}"));
    assert_eq!(status, 200, "{original}");
    assert_eq!(original["topic"], "org.fedoraproject.dev.hark.interop.test");
    assert!(original["timestamp"].is_f64(), "{original}");
    assert_eq!(original["msg"], json!({"replay": "me"}));
    dg_replay(&base, &fedmsg_ep, &fedmsg_id, dir.path());

    relay.terminate(WAIT);
}

fn fedmsg_config(workdir: &Path, inbound: &str) {
    std::fs::create_dir_all(workdir.join("fedmsg.d")).expect("fedmsg.d");
    std::fs::write(
        workdir.join("fedmsg.d/hark_test.py"),
        format!(
            "config = dict(endpoints={{'hark-test-dummy': ['tcp://127.0.0.1:9']}}, relay_inbound=[{inbound:?}],\n\
             active=True, name='relay_inbound', environment='dev', topic_prefix='org.fedoraproject',\n\
             sign_messages=False, validate_signatures=False, post_init_sleep=1.0, zmq_linger=5000)\n"
        ),
    )
    .expect("fedmsg config");
}

/// Publish one fedmsg message to the relay's inbound with the real fedmsg library, once
/// its warm-up messages show in the relay's history (ZeroMQ's slow joiner).
fn publish_fedmsg(base: &str, inbound: &str, dir: &Path) -> String {
    let go = dir.join("fedmsg-go");
    let mut publisher = common::Proc::spawn(
        "fedmsg_publish",
        common::peer_command("fedmsg_active_publish.py")
            .env_remove("VIRTUAL_ENV")
            .args(["--relay-inbound", inbound, "--msg", r#"{"replay": "me"}"#])
            .args(["--timeout", "30", "--go-file"])
            .arg(&go)
            .arg("--workdir")
            .arg(dir.join("fedmsg-pub")),
    );
    let warm = poll_until(WAIT, || {
        let (_, raw) = get(base, "/raw?category=harkwarmup&rows_per_page=1");
        (raw["total"].as_u64() > Some(0)).then_some(())
    });
    assert!(
        warm.is_some(),
        "no fedmsg warm-up message reached the relay"
    );
    std::fs::write(&go, "").expect("go file");
    publisher.wait_success(WAIT).expect("fedmsg publisher");
    let line = publisher
        .stdout
        .drain(WAIT)
        .last()
        .cloned()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).expect("json");
    let id = v["sent"]["msg_id"].as_str().expect("msg_id").to_string();
    let stored = poll_until(WAIT, || {
        (get(base, &format!("/id?id={id}")).0 == 200).then_some(())
    });
    assert!(
        stored.is_some(),
        "the fedmsg message never reached the journal"
    );
    id
}

/// `fedmsg-dg-replay --msg-id ID --datagrepper-url BASE`: it GETs /id and publishes the
/// message again (a new msg_id, the same topic and msg) to the relay's inbound.
fn dg_replay(base: &str, inbound: &str, id: &str, dir: &Path) {
    let replay = common::repo_root().join(".venv/bin/fedmsg-dg-replay");
    if !replay.exists() {
        println!("SKIPPED: fedmsg-dg-replay not in .venv (bash scripts/setup-venv.sh)");
        return;
    }
    let workdir = dir.join("dg-replay");
    fedmsg_config(&workdir, inbound);
    let path =
        "/raw?rows_per_page=10&topic=org.fedoraproject.dev.hark.interop.test&contains=replay";
    // One publish of a one-shot PUB may meet ZeroMQ's slow joiner: run it again until the
    // relay has the copy, a bounded number of times.
    for attempt in 0..3 {
        let out = Command::new(&replay)
            .args(["--msg-id", id, "--datagrepper-url", base])
            .current_dir(&workdir)
            .env("HOME", &workdir)
            .env_remove("VIRTUAL_ENV")
            .output()
            .expect("fedmsg-dg-replay");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "attempt {attempt}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Broadcasting"), "{stdout}");
        let copies = poll_until(Duration::from_secs(10), || {
            let (_, raw) = get(base, path);
            (raw["total"].as_u64() == Some(2)).then_some(raw)
        });
        if let Some(raw) = copies {
            let ids: Vec<&str> = raw["raw_messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["msg_id"].as_str().unwrap())
                .collect();
            assert!(ids.contains(&id) && ids.iter().any(|i| *i != id), "{raw}");
            return;
        }
    }
    panic!("the message fedmsg-dg-replay published never reached the relay");
}

/// A CA and a server certificate for 127.0.0.1 made with openssl, now (the CA files the
/// broker tests make too).
fn test_ca(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let certs = common::rabbitmq::make_certs(&dir.join("tls")).ok()?;
    std::fs::copy(dir.join("tls/ca.key"), dir.join("ca.key")).ok()?;
    Some((certs.ca, certs.server_cert, certs.server_key))
}

#[test]
fn https_with_a_test_ca_and_bad_tls_files_stop_the_relay() {
    let dir = temp_dir();
    let Some((ca, cert, key)) = test_ca(dir.path()) else {
        println!("SKIPPED: openssl cannot make a test CA");
        return;
    };
    let port = free_port();
    let mut relay = spawn_ready(
        "relay",
        relay_command(&free_endpoint(), port)
            .arg("--allow-unsigned")
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--journal")
            .arg(dir.path().join("journal.db")),
        "relay ready",
    );
    let url = format!("https://127.0.0.1:{port}/readyz");
    let ca_arg = ca.display().to_string();
    let ready = poll_until(WAIT, || {
        (curl(&url, &["--cacert", &ca_arg]).0 == 200).then_some(())
    });
    assert!(ready.is_some(), "no HTTPS answer");
    let (status, body) = curl(
        &format!("https://127.0.0.1:{port}/v1/events"),
        &["--cacert", &ca_arg],
    );
    assert_eq!(
        (status, body["events"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    // Without the CA curl refuses the certificate; plain HTTP gets no HTTP answer.
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(&url)
        .output()
        .expect("curl");
    assert!(!untrusted.status.success());
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/readyz"))
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    // The relay still serves after both.
    assert_eq!(curl(&url, &["--cacert", &ca_arg]).0, 200);
    relay.terminate(WAIT);

    // A key that does not belong to the certificate stops the relay before it is ready.
    let out = hark_command()
        .args([
            "relay",
            "--submit",
            &free_endpoint(),
            "--publish",
            &free_endpoint(),
            "--no-journal",
        ])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(dir.path().join("ca.key"))
        .output()
        .expect("relay");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("do not go together"), "{stderr}");
}

/// POST `body` to `url` with curl: the status and the answer as JSON.
fn post(url: &str, body: &[u8], extra: &[&str], dir: &Path) -> (u16, Value) {
    let file = dir.join(format!("body-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, body).expect("body file");
    let data = format!("@{}", file.display());
    let answer = curl(
        url,
        &[
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
            ],
            extra,
        ]
        .concat(),
    );
    let _ = std::fs::remove_file(&file);
    answer
}

#[test]
fn https_submissions_go_through_the_relay_s_own_admission() {
    let dir = temp_dir();
    let Some((ca, cert, key)) = test_ca(dir.path()) else {
        println!("SKIPPED: openssl cannot make a test CA");
        return;
    };
    let keys = common::test_keys(dir.path());
    std::fs::create_dir_all(dir.path().join("elsewhere")).expect("dir");
    let stranger = common::keypair(&dir.path().join("elsewhere"), "stranger");
    let journal = dir.path().join("journal.db");
    let (submit_ep, port) = (free_endpoint(), free_port());
    let mut relay = spawn_ready(
        "relay",
        relay_command(&submit_ep, port)
            .args([
                "--grant",
                "archive=_lk.archive.**",
                "--max-message-size",
                "65536",
            ])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--journal")
            .arg(&journal)
            .arg("--key")
            .arg(&keys.relay_secret)
            .arg("--trusted")
            .arg(&keys.trusted),
        "relay ready",
    );
    let base = format!("https://127.0.0.1:{port}");
    let ca_arg = ca.display().to_string();
    let tls = ["--cacert", ca_arg.as_str()];
    let submit_url = format!("{base}/v1/submit");
    assert!(
        poll_until(WAIT, || (curl(&format!("{base}/readyz"), &tls).0 == 200)
            .then_some(()))
        .is_some()
    );

    // Accepted: journaled with its seq, countersigned, published.
    let event = build_event(
        "_lk.archive.package-upload",
        json!({"pkg": "hello"}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    let uuid = event["uuid"].as_str().unwrap().to_string();
    let bytes = common::event_bytes(&event);
    let (status, ack) = post(&submit_url, &bytes, &tls, dir.path());
    assert_eq!(
        (status, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    assert_eq!(
        (ack["uuid"].as_str(), ack["seq"].as_u64()),
        (Some(uuid.as_str()), Some(1))
    );
    // Deduped by the same window as ZeroMQ submissions, both ways round.
    let (status, again) = post(&submit_url, &bytes, &tls, dir.path());
    assert_eq!(
        (status, again["status"].as_str(), again["reason"].as_str()),
        (200, Some("duplicate"), Some("duplicate")),
        "{again}"
    );
    let via_zmq = submit(
        &submit_ep,
        &event,
        Duration::from_secs(15),
        &ZmqConfig::default(),
    )
    .expect("zmq ack");
    assert_eq!(via_zmq.status, hark::bus::ack::AckStatus::Duplicate);
    let second = build_event(
        "_lk.archive.package-upload",
        json!({"pkg": "world"}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    let zmq_ack = submit(
        &submit_ep,
        &second,
        Duration::from_secs(15),
        &ZmqConfig::default(),
    )
    .expect("zmq ack");
    assert_eq!(zmq_ack.seq, Some(2));
    let (_, dup) = post(&submit_url, &common::event_bytes(&second), &tls, dir.path());
    assert_eq!(dup["status"], "duplicate", "{dup}");
    let (_, history) = curl(&format!("{base}/v1/events"), &tls);
    let records = history["events"].as_array().expect("events");
    assert_eq!(records.len(), 2, "{history}");
    assert_eq!(records[0]["signers"], json!(["archive", "relay"]));

    // Refused with the right status and the relay's reason; nothing journaled.
    let unsigned =
        hark::bus::publish::unsigned_event("_lk.archive.package-upload", json!({}), None, None);
    let ungranted = build_event(
        "_lk.jobs.job-finished",
        json!({}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    let untrusted = build_event(
        "_lk.archive.package-upload",
        json!({}),
        &stranger,
        None,
        None,
    )
    .unwrap();
    let mut tampered = build_event(
        "_lk.archive.package-upload",
        json!({"pkg": "a"}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    tampered["data"]["pkg"] = json!("b");
    let big = vec![b' '; 2 * 1024 * 1024];
    let mut over_relay_limit = event.clone();
    over_relay_limit["data"]["pad"] = json!("x".repeat(70_000));
    for (what, body, want, reason) in [
        (
            "unsigned",
            common::event_bytes(&unsigned),
            401,
            Some("unsigned"),
        ),
        (
            "not granted",
            common::event_bytes(&ungranted),
            403,
            Some("topic-not-granted"),
        ),
        (
            "untrusted signer",
            common::event_bytes(&untrusted),
            401,
            None,
        ),
        (
            "tampered",
            common::event_bytes(&tampered),
            401,
            Some("bad-signature"),
        ),
        ("malformed", b"{\"tag\": ".to_vec(), 400, None),
        ("not an object", b"[1, 2]".to_vec(), 400, None),
        ("empty", Vec::new(), 400, None),
        ("over http.max_body", big, 413, None),
        (
            "over relay.max_message_size",
            common::event_bytes(&over_relay_limit),
            413,
            Some("oversized"),
        ),
    ] {
        let (status, answer) = post(&submit_url, &body, &tls, dir.path());
        assert_eq!(status, want, "{what}: {answer}");
        if let Some(reason) = reason {
            assert_eq!(answer["reason"].as_str(), Some(reason), "{what}: {answer}");
            assert_eq!(answer["status"], "refused", "{what}: {answer}");
            assert!(
                answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {answer}"
            );
        } else {
            assert!(
                answer["error"].is_string() || answer["status"] == "refused",
                "{what}: {answer}"
            );
        }
    }
    // The relay kept serving, over both paths, and journaled nothing refused.
    let third = build_event(
        "_lk.archive.package-upload",
        json!({"pkg": "after"}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    let (status, ack) = post(&submit_url, &common::event_bytes(&third), &tls, dir.path());
    assert_eq!((status, ack["seq"].as_u64()), (200, Some(3)), "{ack}");
    let fourth = build_event(
        "_lk.archive.package-upload",
        json!({"pkg": "zmq"}),
        &keys.archive,
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        submit(
            &submit_ep,
            &fourth,
            Duration::from_secs(15),
            &ZmqConfig::default()
        )
        .expect("ack")
        .seq,
        Some(4)
    );
    let (_, history) = curl(&format!("{base}/v1/events"), &tls);
    assert_eq!(
        history["events"].as_array().map(Vec::len),
        Some(4),
        "{history}"
    );

    // hark publish --relay https://: the same acks, refusals and spool as over ZeroMQ.
    let archive_secret = keys.trusted.join("archive.key_secret");
    let publish = |relay: &str, tag: &str| {
        hark_command()
            .arg("publish")
            .args(["--relay", relay, "--timeout", "2s"])
            .arg("--key")
            .arg(&archive_secret)
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .env("SSL_CERT_FILE", &ca)
            .arg(tag)
            .args(["--data", r#"{"pkg": "https"}"#])
            .output()
            .expect("hark publish")
    };
    let out = publish(&base, "_lk.archive.package-upload");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish(&base, "_lk.jobs.job-finished");
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic-not-granted"));
    let down = format!("https://127.0.0.1:{}", free_port());
    let out = publish(&down, "_lk.archive.package-upload");
    assert_eq!(
        out.status.code(),
        Some(3),
        "spooled: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flushed = hark_command()
        .args(["publish", "--flush-spool", "--relay", &base])
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .env("SSL_CERT_FILE", &ca)
        .output()
        .expect("flush");
    assert!(
        flushed.status.success(),
        "{}",
        String::from_utf8_lossy(&flushed.stderr)
    );
    let (_, history) = curl(&format!("{base}/v1/events?contains=https"), &tls);
    assert_eq!(
        history["events"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
    relay.terminate(WAIT);
}

#[test]
fn rate_limit_and_slow_bodies_get_4xx_and_the_relay_keeps_serving() {
    let dir = temp_dir();
    // The test is its own reverse proxy: it may name other clients in X-Forwarded-For.
    let config = common::write_file(
        dir.path(),
        "hark.yaml",
        "http:\n  rate_limit: 1\n  rate_burst: 2\n  request_timeout: 2s\n  trusted_proxies: [127.0.0.1]\n",
    );
    let port = free_port();
    let mut relay = spawn_ready(
        "relay",
        relay_command(&free_endpoint(), port)
            .args(["--allow-unsigned", "--no-journal"])
            .arg("--config")
            .arg(&config),
        "relay ready",
    );
    let url = format!("http://127.0.0.1:{port}/v1/submit");
    let event = || {
        common::event_bytes(&hark::bus::publish::unsigned_event(
            "t.x",
            json!({}),
            None,
            None,
        ))
    };
    assert!(poll_until(WAIT, || (get(
        &format!("http://127.0.0.1:{port}"),
        "/readyz"
    )
    .0 == 200)
        .then_some(()))
    .is_some());

    // A body that never arrives in full: 408 within request_timeout, not a stuck worker.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"tag\"")
        .unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 1024];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    // A request head that never ends (slowloris): the connection is closed after
    // request_timeout, so such clients cannot hold the server's connection slots.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut dribbled = 0;
    let closed = loop {
        // One more header line every half second, never the blank line that ends the head.
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            break true;
        }
        dribbled += 1;
        slow.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match slow.read(&mut chunk) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    let took = started.elapsed();
    assert!(
        closed,
        "a dribbled request head kept its connection for {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1500) && dribbled >= 2,
        "closed after {took:?} ({dribbled} header lines), before request_timeout"
    );

    // The bucket holds two; the slow body took one two seconds ago, which came back.
    assert_eq!(post(&url, &event(), &[], dir.path()).0, 200);
    assert_eq!(post(&url, &event(), &[], dir.path()).0, 200);
    let (status, answer) = post(&url, &event(), &[], dir.path());
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("retry")),
        "{answer}"
    );
    // Behind a trusted proxy each forwarded client has its own bucket; the proxy's own
    // (the test's, without the header) is still empty.
    let forwarded = ["-H", "X-Forwarded-For: 192.0.2.1"];
    assert_eq!(post(&url, &event(), &forwarded, dir.path()).0, 200);
    assert_eq!(post(&url, &event(), &[], dir.path()).0, 429);
    // A client cannot pick its bucket: the proxy's view (rightmost) counts, not an entry
    // the client wrote to the left.
    // 192.0.2.1 has one token left, then none.
    let spoofed = ["-H", "X-Forwarded-For: 192.0.2.77, 192.0.2.1"];
    assert_eq!(post(&url, &event(), &spoofed, dir.path()).0, 200);
    assert_eq!(post(&url, &event(), &spoofed, dir.path()).0, 429);
    // Reads are not rate limited, and the relay still answers.
    for _ in 0..5 {
        assert_eq!(get(&format!("http://127.0.0.1:{port}"), "/healthz").0, 200);
    }
    relay.terminate(WAIT);
}
