//! What `/metrics` of a real relay and a real trigger daemon serves, checked by the parsers
//! Prometheus users run: `promtool check metrics` and `prometheus_client`'s text parser;
//! and that a metrics address that cannot be bound stops either daemon before it says ready.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    free_endpoint, free_port, hark_command, poll_until, signed, spawn_ready, temp_dir, write_file,
    Proc,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
rules:
  - name: ok
    match: {topic: _lk.test.ok}
    run:
      command: [/bin/true]
      stdin: none
  - name: bad
    match: {topic: _lk.test.bad}
    run:
      command: [/bin/false]
      stdin: none
"#;

/// One HTTP exchange on a raw socket: what was sent, everything read until close.
fn http(addr: &str, request: &str) -> String {
    common::net::try_http(addr, request, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
}

/// The body of `GET /metrics` over HTTP/1.0, after checking the status and content type.
fn scrape(addr: &str) -> String {
    let response = http(addr, "GET /metrics HTTP/1.0\r\n\r\n");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {response}"));
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// `promtool check metrics` on `text`: no parse errors and no lint problems. None when
/// promtool is missing (allowed off CI only).
fn promtool(name: &str, text: &str) -> Option<()> {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI: `make test` installs it (scripts/setup-debs.sh)"
        );
        eprintln!("SKIPPED: promtool check of {name}: promtool not installed (make debs)");
        return None;
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {name}'s /metrics ({}):\n{said}\n--- exposition ---\n{text}",
        out.status
    );
    Some(())
}

/// Families as prometheus_client's parser saw them.
fn python_parse(name: &str, text: &str) -> Vec<Value> {
    let mut child = common::peer_command("parse_metrics.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv python runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "prometheus_client could not parse {name}'s /metrics:\n{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser prints JSON")
}

/// Both parsers accept `text`, every family has help and the table's type, and the
/// samples of `expect` are there as `(family, type)`.
fn check_exposition(name: &str, text: &str, expect: &[(&str, &str)]) {
    promtool(name, text);
    let families = python_parse(name, text);
    for fam in &families {
        let fname = fam["name"].as_str().unwrap_or_default();
        assert!(
            !fam["help"].as_str().unwrap_or_default().is_empty(),
            "{name}: {fname} has no HELP:\n{text}"
        );
        // prometheus_client names a counter family without its _total.
        let table = hark::metrics::family(fname)
            .or_else(|| hark::metrics::family(&format!("{fname}_total")))
            .unwrap_or_else(|| panic!("{name}: {fname} is not in metrics::FAMILIES"));
        let kind = format!("{:?}", table.kind).to_lowercase();
        assert_eq!(fam["type"], kind.as_str(), "{name}: {fname}:\n{text}");
    }
    for (family, kind) in expect {
        let found = families.iter().find(|f| {
            f["samples"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"].as_str() == Some(family)))
                || f["name"].as_str() == Some(family)
        });
        let found = found.unwrap_or_else(|| panic!("{name}: no {family} in:\n{text}"));
        assert_eq!(found["type"], *kind, "{name}: {family}");
    }
}

/// `metrics` empty: no `--metrics` flag (hark.yaml may set relay.metrics).
fn relay_cmd(dir: &Path, submit: &str, publish: &str, metrics: &str) -> Command {
    let mut cmd = hark_command();
    cmd.args([
        "relay",
        "--submit",
        submit,
        "--publish",
        publish,
        "--grant",
        "archive=**",
        "--name",
        "r1",
        "--no-journal",
    ])
    .args(if metrics.is_empty() {
        vec![]
    } else {
        vec!["--metrics", metrics]
    })
    .arg("--key")
    .arg(dir.join("relay-keys/relay.key_secret"))
    .arg("--trusted")
    .arg(dir.join("trusted"))
    .arg("--config")
    .arg(dir.join("hark.yaml"));
    cmd
}

/// `metrics` empty: no `--metrics` flag (hark.yaml may set trigger.metrics).
fn trigger_cmd(dir: &Path, connect: &str, metrics: &str) -> Command {
    let mut cmd = hark_command();
    cmd.args(["trigger", "--connect", connect, "--grant", "archive=**"])
        .args(if metrics.is_empty() {
            vec![]
        } else {
            vec!["--metrics", metrics]
        })
        .arg("--rules")
        .arg(dir.join("rules.d"))
        .arg("--state")
        .arg(dir.join("state.db"))
        .arg("--trusted")
        .arg(dir.join("trusted"))
        .arg("--config")
        .arg(dir.join("hark.yaml"));
    cmd
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn relay_and_trigger_expositions_pass_promtool_and_prometheus_client() {
    let dir = temp_dir();
    let keys = common::test_keys(dir.path());
    write_file(dir.path(), "hark.yaml", "");
    let rules = dir.path().join("rules.d");
    write_file(&rules, "50-test.yaml", RULES);
    // A broken file: the daemon starts without it and counts the error.
    write_file(&rules, "90-broken.yaml", "rules: [ {name: 1\n");
    let (submit, publish) = (free_endpoint(), free_endpoint());
    let relay_metrics = format!("127.0.0.1:{}", free_port());
    let _relay = spawn_ready(
        "relay",
        &mut relay_cmd(dir.path(), &submit, &publish, &relay_metrics),
        "relay ready",
    );
    let trigger_metrics = format!("127.0.0.1:{}", free_port());
    let _trigger = spawn_ready(
        "trigger",
        &mut trigger_cmd(dir.path(), &publish, &trigger_metrics),
        "trigger ready",
    );

    // Until the subscription is live, events are lost: publish until each rule has ended.
    let submit_ok = |tag: &str| {
        let event = signed(&keys.archive, tag, json!({"n": 1}));
        hark::bus::publish::submit(&submit, &event, WAIT, &Default::default())
            .expect("the relay acks")
    };
    for (tag, series) in [
        (
            "_lk.test.ok",
            "hark_last_success_timestamp_seconds{rule=\"ok\"}",
        ),
        (
            "_lk.test.bad",
            "hark_last_failure_timestamp_seconds{rule=\"bad\"}",
        ),
    ] {
        let seen = poll_until(WAIT, || {
            submit_ok(tag);
            poll_until(Duration::from_millis(500), || {
                sample(&scrape(&trigger_metrics), series)
            })
        });
        assert!(seen.is_some_and(|t| t > 1.0e9), "{series} never appeared");
    }
    // A submission signed by nobody the relay trusts: a refusal counted by reason.
    let stranger = hark::event::keys::SigningKey::generate("stranger");
    let refused = hark::bus::publish::submit(
        &submit,
        &signed(&stranger, "_lk.test.ok", json!({})),
        WAIT,
        &Default::default(),
    );
    assert!(
        matches!(&refused, Err(hark::bus::publish::PublishError::Refused { reason, .. }) if reason == "untrusted-signer"),
        "{refused:?}"
    );

    let trigger_text = scrape(&trigger_metrics);
    assert_eq!(
        sample(&trigger_text, "hark_rules_loaded"),
        Some(2.0),
        "{trigger_text}"
    );
    assert_eq!(
        sample(&trigger_text, "hark_rule_reload_errors_total"),
        Some(1.0),
        "{trigger_text}"
    );
    check_exposition(
        "trigger",
        &trigger_text,
        &[
            ("hark_jobs_total", "counter"),
            ("hark_job_duration_seconds_bucket", "histogram"),
            ("hark_job_duration_seconds_sum", "histogram"),
            ("hark_job_duration_seconds_count", "histogram"),
            ("hark_last_success_timestamp_seconds", "gauge"),
            ("hark_last_failure_timestamp_seconds", "gauge"),
            ("hark_rules_loaded", "gauge"),
            ("hark_rule_reload_errors_total", "counter"),
            ("hark_events_admitted_total", "counter"),
            ("hark_queue_depth", "gauge"),
        ],
    );

    let relay_text = poll_until(WAIT, || {
        let t = scrape(&relay_metrics);
        t.contains("hark_relay_refused_total{").then_some(t)
    })
    .expect("the relay counts the refusal");
    check_exposition(
        "relay",
        &relay_text,
        &[
            ("hark_relay_received_total", "counter"),
            ("hark_relay_published_total", "counter"),
            ("hark_relay_refused_total", "counter"),
        ],
    );

    // Only /metrics; HTTP/1.1 works as well as 1.0.
    for addr in [&trigger_metrics, &relay_metrics] {
        let other = http(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        assert!(!other.contains("hark_"), "{other}");
        let v11 = http(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(v11.starts_with("HTTP/1.1 200 OK\r\n"), "{v11}");
        assert!(v11.contains("# TYPE hark_"), "{v11}");
    }
}

/// Start `cmd`, expect it to exit non-zero within a bounded wait, naming `addr`, without
/// having said it was ready.
fn fails_before_ready(name: &str, mut cmd: Command, addr: &str) {
    let mut proc = Proc::spawn(name, &mut cmd);
    let status = proc
        .wait_exit(WAIT)
        .unwrap_or_else(|e| panic!("{name} did not exit: {e}"));
    let lines = proc.stderr.history();
    assert!(!status.success(), "{name} exited {status}: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot serve metrics on") && l.contains(addr)),
        "{name}: no error naming {addr}: {lines:?}"
    );
    let ready = format!("{name} ready");
    assert!(
        !lines.iter().any(|l| l.contains(&ready)),
        "{name} said ready: {lines:?}"
    );
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_both_daemons_before_ready() {
    let dir = temp_dir();
    common::test_keys(dir.path());
    write_file(dir.path(), "hark.yaml", "");
    write_file(&dir.path().join("rules.d"), "50-test.yaml", RULES);
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let publish = free_endpoint();
    fails_before_ready(
        "relay",
        relay_cmd(dir.path(), &free_endpoint(), &publish, &addr),
        &addr,
    );
    fails_before_ready("trigger", trigger_cmd(dir.path(), &publish, &addr), &addr);
    let bad = "no-such-host.invalid:99999";
    fails_before_ready(
        "relay",
        relay_cmd(dir.path(), &free_endpoint(), &publish, bad),
        bad,
    );
    fails_before_ready("trigger", trigger_cmd(dir.path(), &publish, bad), bad);
    // The same from hark.yaml's relay.metrics and trigger.metrics.
    write_file(
        dir.path(),
        "hark.yaml",
        &format!("relay:\n  metrics: \"{addr}\"\ntrigger:\n  metrics: \"{addr}\"\n"),
    );
    fails_before_ready(
        "relay",
        relay_cmd(dir.path(), &free_endpoint(), &publish, ""),
        &addr,
    );
    fails_before_ready("trigger", trigger_cmd(dir.path(), &publish, ""), &addr);
    drop(taken);
}
