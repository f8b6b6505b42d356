//! Integration tests of the daemon's safety nets with real processes on loopback: fallback
//! schedules (a rule runs anyway when no event started it for its interval, and the clock
//! survives a restart), and backpressure when the state store cannot commit (a full disk
//! loses no event and runs nothing that is not stored).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    free_endpoint, hark_command, poll_until, run_ok, signed, spawn_ready, temp_dir, write_file,
    Proc, TempDir,
};
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A command that appends `<HARK_REASON> <HARK_UUID> <ms since epoch>` to `@DIR@/<out>`.
fn recorder(out: &str) -> String {
    format!(
        "      command: [/bin/sh, -c, 'echo \"$HARK_REASON $HARK_UUID $(date +%s%3N)\" >> \"$OUT\"']\n      env: {{OUT: \"@DIR@/{out}\"}}\n      stdin: none\n"
    )
}

/// A rule `name` on `topic` that records its runs to `<name>.out`, with `extra` under it.
fn rule(name: &str, topic: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{topic: {topic}}}\n    run:\n{}{extra}",
        recorder(&format!("{name}.out"))
    )
}

/// A relay, the keys around it, and where a trigger keeps its rules.
struct Bus {
    dir: TempDir,
    key: SigningKey,
    trusted: PathBuf,
    submit: String,
    publish: String,
    _relay: Proc,
}

impl Bus {
    /// A relay that grants the test key every topic; `rules` (YAML list items, `@DIR@`
    /// expanded) go to the rule directory.
    fn new(rules: &[String]) -> Bus {
        let dir = temp_dir();
        let common::TestKeys {
            trusted,
            archive: key,
            relay_secret,
        } = common::test_keys(dir.path());
        let text = format!("rules:\n{}", rules.concat())
            .replace("@DIR@", &dir.path().display().to_string());
        write_file(&dir.path().join("rules.d"), "50-safety.yaml", &text);
        write_file(dir.path(), "hark.yaml", "");
        let (submit, publish) = (free_endpoint(), free_endpoint());
        let mut relay = hark_command();
        relay
            .args(["relay", "--name", "r1", "--grant", "archive=**"])
            .args(["--submit", &submit, "--publish", &publish])
            .arg("--key")
            .arg(&relay_secret)
            .arg("--trusted")
            .arg(&trusted);
        let relay = spawn_ready("relay", &mut relay, "relay ready");
        Bus {
            dir,
            key,
            trusted,
            submit,
            publish,
            _relay: relay,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hark trigger` on this relay and rule directory, its state in `state`.
    fn trigger(&self, state: &Path) -> Proc {
        let mut cmd = hark_command();
        cmd.args([
            "trigger",
            "--grant",
            "archive=**",
            "--connect",
            &self.publish,
        ])
        .arg("--rules")
        .arg(self.path("rules.d"))
        .arg("--trusted")
        .arg(&self.trusted)
        .arg("--config")
        .arg(self.path("hark.yaml"))
        .arg("--state")
        .arg(state);
        spawn_ready("trigger", &mut cmd, "trigger ready")
    }

    /// Submit a signed event; returns its uuid once the relay accepted it.
    fn send(&self, topic: &str) -> String {
        let event = signed(&self.key, topic, json!({}));
        let ack = hark::bus::publish::submit(&self.submit, &event, WAIT, &Default::default())
            .expect("the relay acks");
        assert_eq!(ack.status, hark::bus::ack::AckStatus::Accepted);
        event["uuid"].as_str().unwrap_or_default().to_string()
    }

    /// Lines `<reason> <uuid> <ms>` the rule recorded so far.
    fn runs(&self, rule: &str) -> Vec<(String, String, i64)> {
        let text = std::fs::read_to_string(self.path(&format!("{rule}.out"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (reason, uuid, at) = (f.next()?, f.next()?, f.next()?.parse().ok()?);
                Some((reason.to_string(), uuid.to_string(), at))
            })
            .collect()
    }
}

/// `hark jobs <args> --json` on a state file, one value per line.
fn jobs_json(state: &Path, args: &[&str]) -> Vec<Value> {
    let mut cmd = hark_command();
    cmd.arg("jobs")
        .args(args)
        .arg("--json")
        .arg("--state")
        .arg(state);
    run_ok("hark jobs", &mut cmd, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn now_ms() -> i64 {
    hark::jobs::now_ms()
}

#[test]
fn a_fallback_rule_runs_with_hark_reason_fallback_when_no_event_comes() {
    let bus = Bus::new(&[rule(
        "idle",
        "_lk.test.never",
        "    fallback: {every: 2s}\n",
    )]);
    let state = bus.path("state.db");
    let spawned = now_ms();
    let _trigger = bus.trigger(&state);
    let runs = poll_until(WAIT, || Some(bus.runs("idle")).filter(|r| r.len() >= 2))
        .expect("two fallback runs within 30 s");
    assert!(
        runs.iter().all(|(reason, _, _)| reason == "fallback"),
        "{runs:?}"
    );
    assert!(
        runs[0].2 - spawned >= 1900,
        "the interval counts from when the rule was first seen: {runs:?}, spawned at {spawned}"
    );
    assert!(
        runs[1].2 - runs[0].2 >= 1900,
        "then from the last start: {runs:?}"
    );
    let jobs = jobs_json(&state, &["list"]);
    let fallback = jobs
        .iter()
        .find(|j| j["rule"] == "idle")
        .expect("the runs are jobs");
    assert_eq!(fallback["reason"], "fallback");
    let clocks = jobs_json(&state, &["fallbacks"]);
    assert!(
        clocks
            .iter()
            .any(|c| c["rule"] == "idle" && c["every_ms"] == 2000),
        "hark jobs fallbacks shows it: {clocks:?}"
    );
}

#[test]
fn a_rule_fed_events_faster_than_its_interval_never_runs_a_fallback() {
    let bus = Bus::new(&[rule(
        "fresh",
        "_lk.test.fresh",
        "    fallback: {every: 5s}\n",
    )]);
    let _trigger = bus.trigger(&bus.path("state.db"));
    // Every 250 ms for 12 s: more than two intervals, each start well inside one.
    let until = Instant::now() + Duration::from_secs(12);
    let mut sent = Vec::new();
    while Instant::now() < until {
        sent.push(bus.send("_lk.test.fresh"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let last = sent.last().cloned().unwrap_or_default();
    let runs = poll_until(WAIT, || {
        let r = bus.runs("fresh");
        r.iter().any(|(_, uuid, _)| *uuid == last).then_some(r)
    })
    .expect("the last event runs");
    let fallbacks: Vec<_> = runs.iter().filter(|(r, _, _)| r != "event").collect();
    assert!(fallbacks.is_empty(), "events kept it fresh: {fallbacks:?}");
}

#[test]
fn the_fallback_clock_continues_across_a_restart() {
    let bus = Bus::new(&[rule(
        "nightly",
        "_lk.test.never",
        "    fallback: {every: 6s}\n",
    )]);
    let state = bus.path("state.db");
    let mut trigger = bus.trigger(&state);
    let last = poll_until(WAIT, || {
        jobs_json(&state, &["fallbacks"])
            .into_iter()
            .find(|c| c["rule"] == "nightly")
            .and_then(|c| c["last"].as_i64())
    })
    .expect("the first-seen clock is stored");
    // Half way through the interval: kill -9, then start again on the same state.
    let half = u64::try_from(last + 3000 - now_ms()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(half));
    trigger.kill();
    assert!(
        bus.runs("nightly").is_empty(),
        "nothing ran before the interval"
    );
    let restarted = now_ms();
    let _trigger = bus.trigger(&state);
    let runs = poll_until(WAIT, || Some(bus.runs("nightly")).filter(|r| !r.is_empty()))
        .expect("the fallback runs after the restart");
    let jobs = jobs_json(&state, &["list"]);
    let started = jobs
        .iter()
        .filter(|j| j["rule"] == "nightly")
        .filter_map(|j| j["started"].as_i64())
        .min()
        .expect("its job started");
    assert!(
        started >= last + 6000 - 50,
        "not before its interval from the stored clock: started {started}, clock {last}"
    );
    // A clock restarted from zero would give restarted + 6 s; the stored one about
    // restarted + 3 s. The line between leaves room for a slow start on a loaded machine.
    assert!(
        started < restarted + 5000,
        "the clock continued: started {} ms after the restart ({runs:?})",
        started - restarted
    );
}

#[test]
fn a_full_state_disk_holds_events_back_and_loses_none() {
    let bus = Bus::new(&[
        rule("warm", "_lk.test.warm", ""),
        rule("sink", "_lk.test.sink", ""),
    ]);
    let Some(disk) = common::Tmpfs::mount(&bus.path("state"), "4m") else {
        println!("SKIPPED: needs root for tmpfs");
        return;
    };
    let state = disk.0.join("state.db");
    let mut trigger = bus.trigger(&state);
    let warm = poll_until(WAIT, || {
        bus.send("_lk.test.warm");
        poll_until(Duration::from_millis(500), || {
            (!bus.runs("warm").is_empty()).then_some(())
        })
    });
    assert!(warm.is_some(), "the trigger never ran the warm-up event");

    let filler = disk.0.join("filler");
    common::fill_disk(&filler);
    let sent: BTreeSet<String> = (0..40).map(|_| bus.send("_lk.test.sink")).collect();
    for attempt in 1..=3 {
        trigger
            .stderr
            .wait_for("state store cannot commit", WAIT)
            .unwrap_or_else(|e| panic!("commit failure {attempt} is logged: {e}"));
    }
    assert!(trigger.try_status().is_none(), "the daemon keeps serving");
    assert!(
        bus.runs("sink").is_empty(),
        "nothing runs that is not stored: {:?}",
        bus.runs("sink")
    );

    std::fs::remove_file(&filler).expect("delete the filler");
    trigger
        .stderr
        .wait_for("state store commits again", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let done = poll_until(WAIT, || {
        let jobs: Vec<Value> = jobs_json(&state, &["list", "--limit", "1000"])
            .into_iter()
            .filter(|j| j["rule"] == "sink")
            .collect();
        let live = jobs
            .iter()
            .any(|j| j["state"] == "pending" || j["state"] == "running");
        (jobs.len() >= sent.len() && !live).then_some(jobs)
    })
    .expect("every held event is filed and runs");
    assert!(done.iter().all(|j| j["state"] == "succeeded"), "{done:?}");
    let runs: Vec<String> = bus.runs("sink").into_iter().map(|(_, u, _)| u).collect();
    assert_eq!(runs.len(), sent.len(), "each exactly once: {runs:?}");
    assert_eq!(runs.into_iter().collect::<BTreeSet<_>>(), sent);
    assert!(trigger.try_status().is_none(), "the daemon kept serving");
}

#[test]
fn rules_check_and_rules_test_show_a_fallback() {
    let dir = temp_dir();
    let rules = dir.path().join("rules.d");
    let text = format!(
        "rules:\n{}",
        rule("sync", "_lk.test.sync", "    fallback: {every: 6h}\n")
    )
    .replace("@DIR@", &dir.path().display().to_string());
    write_file(&rules, "50-sync.yaml", &text);
    let check = hark_command()
        .args(["rules", "check"])
        .arg(&rules)
        .output()
        .expect("run rules check");
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains("rule \"sync\": fallback: every 6h"),
        "{check}"
    );
    let event = write_file(
        dir.path(),
        "event.json",
        r#"{"tag": "_lk.test.sync", "uuid": "u-1", "data": {}}"#,
    );
    let test = hark_command()
        .args(["rules", "test"])
        .arg(&rules)
        .arg("--event")
        .arg(&event)
        .output()
        .expect("run rules test");
    let test = String::from_utf8_lossy(&test.stdout);
    assert!(test.contains("fires sync"), "{test}");
    assert!(test.contains("    fallback: every 6h"), "{test}");
}
