//! `hark history` over a real relay's journal: events published through `hark relay
//! --journal` come back filtered by topic, signer, time and `where`, page by page, and the
//! `--json` answer is a recording that `hark rules test --events` takes as it is.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_endpoint, hark_command, run_ok, spawn_ready, temp_dir, write_file};
use hark::bus::publish::{build_event, submit};
use hark::config::ZmqConfig;
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
rules:
  - name: unstable-upload
    match:
      topic: _lk.archive.package-upload
      signed_by: archive
      where: {data.suite: unstable}
    run: {command: [/bin/true], stdin: none}
"#;

fn publish(submit_ep: &str, key: &SigningKey, tag: &str, data: Value) -> String {
    let event = build_event(tag, data, key, None, None).expect("build");
    let uuid = event["uuid"].as_str().expect("uuid").to_string();
    submit(
        submit_ep,
        &event,
        Duration::from_secs(15),
        &ZmqConfig::default(),
    )
    .expect("acked");
    uuid
}

fn history(journal: &Path, args: &[&str]) -> Vec<String> {
    run_ok(
        "history",
        hark_command()
            .arg("history")
            .arg("--journal")
            .arg(journal)
            .args(args),
        WAIT,
    )
    .expect("hark history")
}

#[test]
fn history_filters_pages_and_feeds_rules_test() {
    let dir = temp_dir();
    let keys = common::test_keys(dir.path());
    let journal = dir.path().join("journal.db");
    let (submit_ep, publish_ep) = (free_endpoint(), free_endpoint());
    let mut relay = spawn_ready(
        "relay",
        hark_command()
            .args(["relay", "--submit", &submit_ep, "--publish", &publish_ep])
            .args(["--replay", &free_endpoint(), "--grant", "archive=**"])
            .args(["--name", "r0"])
            .arg("--journal")
            .arg(&journal)
            .arg("--key")
            .arg(&keys.relay_secret)
            .arg("--trusted")
            .arg(&keys.trusted),
        "relay ready",
    );
    let mut uuids = Vec::new();
    for (tag, suite) in [
        ("_lk.archive.package-upload", "unstable"),
        ("_lk.archive.package-upload", "bookworm"),
        ("_lk.jobs.job-finished", "unstable"),
        ("_lk.archive.package-upload", "unstable"),
    ] {
        uuids.push(publish(
            &submit_ep,
            &keys.archive,
            tag,
            json!({"suite": suite, "pkg": "hello"}),
        ));
    }

    // Everything, oldest first, with seqs 1..=4; --terse is seq, topic, uuid.
    let all = history(&journal, &["--terse"]);
    assert_eq!(all.len(), 4, "{all:?}");
    for (i, line) in all.iter().enumerate() {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[0], (i + 1).to_string(), "{line}");
        assert_eq!(parts[2], uuids[i], "{line}");
    }

    // A topic glob and a where condition, through the rules' syntax.
    let unstable = history(
        &journal,
        &[
            "--terse",
            "--topic",
            "_lk.archive.*",
            "--where",
            "{data.suite: unstable}",
        ],
    );
    let got: Vec<&str> = unstable
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(got, vec![uuids[0].as_str(), uuids[3].as_str()]);

    // Signers: the publisher's key and the relay's countersignature; nobody else.
    assert_eq!(
        history(&journal, &["--terse", "--signer", "archive"]).len(),
        4
    );
    assert_eq!(
        history(&journal, &["--terse", "--signer", "relay"]).len(),
        4
    );
    assert!(history(&journal, &["--terse", "--signer", "mallory"]).is_empty());

    // Time: everything was received within the last hour, nothing before 2001.
    assert_eq!(history(&journal, &["--terse", "--since", "1h"]).len(), 4);
    assert!(history(&journal, &["--terse", "--end", "978307200"]).is_empty());
    assert_eq!(
        history(&journal, &["--terse", "--start", "2001-01-01T00:00:00Z"]).len(),
        4
    );

    // Keyset pages: newest first, two at a time, continued with --after.
    let first = run_ok(
        "history",
        hark_command()
            .arg("history")
            .arg("--journal")
            .arg(&journal)
            .args(["--terse", "--desc", "--limit", "2"]),
        WAIT,
    )
    .expect("page");
    assert_eq!(first.len(), 2);
    assert!(
        first[0].starts_with("4 ") && first[1].starts_with("3 "),
        "{first:?}"
    );
    let rest = history(&journal, &["--terse", "--desc", "--after", "3"]);
    assert_eq!(rest.len(), 2);
    assert!(
        rest[0].starts_with("2 ") && rest[1].starts_with("1 "),
        "{rest:?}"
    );

    // --json lines are recordings: frames byte for byte as the relay published them.
    let lines = history(&journal, &["--json", "--topic", "_lk.archive.**"]);
    assert_eq!(lines.len(), 3);
    let first: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(first["v"], 1);
    assert_eq!(first["seq"], 1);
    let frames = first["frames"].as_array().expect("frames");
    assert_eq!(frames[0], "_lk.archive.package-upload");
    let body: Value = serde_json::from_str(frames[1].as_str().unwrap()).expect("body");
    assert_eq!(body["uuid"], uuids[0].as_str());
    assert_eq!(body["unsigned"]["seq"], 1);
    assert_eq!(first["signers"], json!(["archive", "relay"]));

    // ... which `hark rules test --events` reads directly: the rule fires for both
    // unstable uploads and misses the bookworm one.
    let recording = dir.path().join("history.jsonl");
    std::fs::write(&recording, lines.join("\n") + "\n").expect("write");
    let rules = dir.path().join("rules.d");
    write_file(&rules, "50-history.yaml", RULES);
    let report = run_ok(
        "rules test",
        hark_command()
            .args(["rules", "test", "--json"])
            .arg(&rules)
            .arg("--events")
            .arg(&recording),
        WAIT,
    )
    .expect("rules test");
    let fired: Vec<bool> = report
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("report json");
            !v["fires"].as_array().expect("fires").is_empty()
        })
        .collect();
    assert_eq!(fired, vec![true, false, true], "{report:?}");

    // Bad input is a usage error naming the problem, not a crash.
    let out = hark_command()
        .arg("history")
        .arg("--journal")
        .arg(&journal)
        .args(["--where", "{data.suite: {gt: }}"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--where:1:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.kill();
}
