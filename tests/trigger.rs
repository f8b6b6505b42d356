//! Integration tests of `hark trigger` with real processes on loopback: a relay, the
//! daemon, and commands that record what they saw. One test per promise the daemon makes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::messages::python_fedmsg_body;
use common::{
    event_bytes, free_endpoint, hark_command, poll_until, signed, spawn_ready, temp_dir,
    write_file, Proc, TempDir,
};
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    dir: TempDir,
    rules: PathBuf,
    state: PathBuf,
    submit: String,
    publish: String,
    key: SigningKey,
    _relay: Proc,
    trigger: Option<Proc>,
    trusted: PathBuf,
    metrics: String,
    config: PathBuf,
}

/// A warm-up rule every stack has: proves the daemon's subscription is live.
const WARMUP_RULE: &str = r#"
rules:
  - name: warmup
    match: {topic: _lk.test.warmup}
    run:
      command: [/bin/sh, -c, 'touch "$WARM"']
      env: {WARM: "@DIR@/warm"}
      stdin: none
"#;

impl Stack {
    /// A relay and a trigger daemon with `rules` (plus the warm-up rule) loaded.
    fn start(rules_yaml: &str) -> Stack {
        Self::start_with(rules_yaml, "")
    }

    /// Like `start`, with `config_yaml` (`@DIR@` expanded) as the daemon's hark.yaml.
    fn start_with(rules_yaml: &str, config_yaml: &str) -> Stack {
        let dir = temp_dir();
        let common::TestKeys {
            trusted,
            archive: key,
            relay_secret,
        } = common::test_keys(dir.path());
        let rules = dir.path().join("rules.d");
        let d = dir.path().display().to_string();
        write_file(&rules, "00-warmup.yaml", &WARMUP_RULE.replace("@DIR@", &d));
        write_file(&rules, "50-test.yaml", &rules_yaml.replace("@DIR@", &d));
        let (submit, publish) = (free_endpoint(), free_endpoint());
        let relay = spawn_ready(
            "relay",
            hark_command()
                .args([
                    "relay",
                    "--submit",
                    &submit,
                    "--publish",
                    &publish,
                    "--grant",
                    "archive=**",
                    "--name",
                    "r1",
                ])
                .arg("--key")
                .arg(&relay_secret)
                .arg("--trusted")
                .arg(&trusted),
            "relay ready",
        );
        let state = dir.path().join("state.db");
        let config = write_file(dir.path(), "hark.yaml", &config_yaml.replace("@DIR@", &d));
        let mut stack = Stack {
            dir,
            rules,
            state,
            submit,
            publish,
            key,
            _relay: relay,
            trigger: None,
            trusted,
            metrics: format!("127.0.0.1:{}", common::free_port()),
            config,
        };
        stack.start_trigger();
        stack
    }

    fn start_trigger(&mut self) {
        let trigger = spawn_ready(
            "trigger",
            hark_command()
                .args([
                    "trigger",
                    "--connect",
                    &self.publish,
                    "--grant",
                    "archive=**",
                ])
                .arg("--rules")
                .arg(&self.rules)
                .arg("--state")
                .arg(&self.state)
                .arg("--trusted")
                .arg(&self.trusted)
                .args(["--metrics", &self.metrics])
                .arg("--config")
                .arg(&self.config),
            "trigger ready",
        );
        self.trigger = Some(trigger);
        self.warm_up();
    }

    /// kill -9 the daemon and start it again on the same state and rules.
    fn kill_and_restart_trigger(&mut self) {
        if let Some(mut t) = self.trigger.take() {
            t.kill();
        }
        self.start_trigger();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Submit a signed event to the relay; returns it as built.
    fn publish(&self, tag: &str, data: Value) -> Value {
        let event = signed(&self.key, tag, data);
        let ack = hark::bus::publish::submit(&self.submit, &event, WAIT, &Default::default())
            .expect("relay acks");
        assert_eq!(ack.status, hark::bus::ack::AckStatus::Accepted);
        event
    }

    /// Publish warm-up events until the daemon has demonstrably run the warm-up rule.
    fn warm_up(&self) {
        let warm = self.path("warm");
        let _ = std::fs::remove_file(&warm);
        let ok = poll_until(WAIT, || {
            self.publish("_lk.test.warmup", json!({}));
            poll_until(Duration::from_millis(500), || warm.exists().then_some(()))
        });
        assert!(ok.is_some(), "the trigger never received the warm-up event");
    }

    fn jobs(&self) -> Vec<Value> {
        let out = hark_command()
            .args(["jobs", "list", "--json", "--limit", "100000"])
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn jobs_of(&self, rule: &str) -> Vec<Value> {
        self.jobs()
            .into_iter()
            .filter(|j| j["rule"] == rule)
            .collect()
    }

    /// Wait until a job of `rule` runs; that job.
    fn running_job(&self, rule: &str) -> Value {
        poll_until(WAIT, || {
            self.jobs_of(rule)
                .into_iter()
                .find(|j| j["state"] == "running")
        })
        .unwrap_or_else(|| panic!("no job of {rule} runs: {:?}", self.jobs_of(rule)))
    }

    /// Wait until `rule` has `n` jobs that are no longer live.
    fn wait_finished(&self, rule: &str, n: usize) -> Vec<Value> {
        poll_until(WAIT, || {
            let jobs = self.jobs_of(rule);
            let done = jobs
                .iter()
                .filter(|j| j["state"] != "pending" && j["state"] != "running")
                .count();
            (done >= n
                && jobs
                    .iter()
                    .all(|j| j["state"] != "pending" && j["state"] != "running"))
            .then_some(jobs)
        })
        .unwrap_or_else(|| {
            panic!(
                "rule {rule} never finished {n} job(s): {:?}",
                self.jobs_of(rule)
            )
        })
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn command_gets_exact_event_bytes_on_stdin_and_hark_env() {
    let stack = Stack::start(
        r#"
rules:
  - name: capture
    match: {topic: _lk.archive.package-upload-accepted}
    run:
      command: [/bin/sh, -c, 'cat > "$OUT/$HARK_UUID.stdin"; env | grep -E "^HARK_(ATTEMPT|EVENT_COUNT|JOB|RULE|TOPIC|UUID)=" | sort > "$OUT/$HARK_UUID.env"']
      env: {OUT: "@DIR@"}
"#,
    );
    // Watch the bus too, to compare against the bytes the relay published.
    let sub = hark::bus::subscribe::Subscriber::connect(
        std::slice::from_ref(&stack.publish),
        &[],
        &Default::default(),
    )
    .unwrap();
    let frames = poll_until(WAIT, || {
        stack.publish(
            "_lk.archive.package-upload-accepted",
            json!({"source_name": "hello", "note": "Täst \"q\" \u{1}"}),
        );
        sub.recv(Duration::from_millis(500))
            .unwrap()
            .filter(|f| f[0] == b"_lk.archive.package-upload-accepted")
    })
    .expect("subscriber joined");
    let published: Value = serde_json::from_slice(&frames[1]).unwrap();
    let uuid = published["uuid"].as_str().unwrap().to_string();
    let job = poll_until(WAIT, || {
        stack
            .jobs_of("capture")
            .into_iter()
            .find(|j| j["events"][0]["uuid"] == uuid && j["state"] == "succeeded")
    })
    .expect("the job for the captured event succeeded");
    let stdin = std::fs::read(stack.path(&format!("{uuid}.stdin"))).unwrap();
    assert_eq!(
        stdin, frames[1],
        "stdin must be the published frame byte for byte"
    );
    let v: Value = serde_json::from_slice(&stdin).unwrap();
    assert!(v["signatures"]["relay"].is_object() && v["unsigned"]["seq"].is_u64());
    let env = read(&stack.path(&format!("{uuid}.env")));
    let expected = format!(
        "HARK_ATTEMPT=1\nHARK_EVENT_COUNT=1\nHARK_JOB={}\nHARK_RULE=capture\nHARK_TOPIC=_lk.archive.package-upload-accepted\nHARK_UUID={uuid}\n",
        job["id"]
    );
    assert_eq!(env, expected);
}

#[test]
fn event_data_never_reaches_a_shell() {
    let stack = Stack::start(
        r#"
rules:
  - name: echo-data
    match: {topic: _lk.test.inject}
    run:
      command: [/bin/echo, "${data.a}", "pre-${data.b}-post"]
"#,
    );
    let marker = stack.path("X");
    let payloads = [
        format!("'; touch {}; echo '", marker.display()),
        format!("$(touch {})", marker.display()),
        format!("`touch {}`", marker.display()),
    ];
    for p in &payloads {
        stack.publish("_lk.test.inject", json!({"a": p, "b": p}));
    }
    let jobs = stack.wait_finished("echo-data", payloads.len());
    assert_eq!(jobs.len(), payloads.len());
    for job in &jobs {
        assert_eq!(job["state"], "succeeded", "{job}");
        let argv: Vec<String> = serde_json::from_value(job["argv"].clone()).unwrap();
        assert_eq!(
            argv.len(),
            3,
            "one argv element per template, never split: {argv:?}"
        );
        assert!(payloads.contains(&argv[1]), "{argv:?}");
        assert_eq!(argv[2], format!("pre-{}-post", argv[1]));
    }
    assert!(!marker.exists(), "event data was executed");
}

#[test]
fn a_burst_coalesces_into_one_run_plus_at_most_one_trailing_run() {
    let stack = Stack::start(
        r#"
rules:
  - name: mirror
    match: {topic: _lk.archive.master.published}
    run:
      command: [/bin/sh, -c, 'n=$(tr -cd "{" | wc -c); echo "$HARK_EVENT_COUNT $n" >> "$LOG"; sleep 0.5']
      env: {LOG: "@DIR@/runs.log"}
      stdin: batch
    coalesce: {quiet: 3s, max_delay: 60s}
"#,
    );
    // The quiet period must outlast any pause in the burst's delivery: on a loaded CI
    // machine 500 ms passed between two events of the burst, a legitimate second run.
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&stack.submit).unwrap();
    let n = 1000;
    for i in 0..n {
        let ev = signed(&stack.key, "_lk.archive.master.published", json!({"i": i}));
        dealer.send(event_bytes(&ev), 0).unwrap();
    }
    // Every submission acked, so all 1000 are on the bus.
    for _ in 0..n {
        assert!(dealer.poll(zmq::POLLIN, 30_000).unwrap() > 0);
        let ack: Value = serde_json::from_slice(&dealer.recv_bytes(0).unwrap()).unwrap();
        assert_eq!(ack["status"], "accepted");
    }
    let jobs = stack.wait_finished("mirror", 1);
    let log = read(&stack.path("runs.log"));
    let runs: Vec<(usize, usize)> = log
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace().map(|x| x.parse::<usize>().unwrap());
            (p.next().unwrap(), p.next().unwrap())
        })
        .collect();
    assert!(
        (1..=2).contains(&runs.len()),
        "expected 1 run plus at most 1 trailing, got {runs:?}"
    );
    assert_eq!(jobs.len(), runs.len());
    let total: usize = runs.iter().map(|r| r.0).sum();
    assert_eq!(total, n, "every event is in exactly one batch: {runs:?}");
    for (count, objects_on_stdin) in runs {
        // Each event object opens at least one brace (data too), so >= count.
        assert!(
            objects_on_stdin >= count,
            "stdin batch held {objects_on_stdin} objects for {count} events"
        );
    }
}

fn intervals(log: &str) -> Vec<(String, f64, f64)> {
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (kind, id, t) = (
            parts[0],
            parts[1].to_string(),
            parts[2].parse::<f64>().unwrap(),
        );
        if kind == "start" {
            starts.insert(id, t);
        } else if let Some(s) = starts.remove(&id) {
            out.push((id, s, t));
        }
    }
    out
}

fn max_overlap(iv: &[(String, f64, f64)]) -> usize {
    let mut points: Vec<(f64, i32)> = iv
        .iter()
        .flat_map(|(_, s, e)| [(*s, 1), (*e, -1)])
        .collect();
    points.sort_by(|a, b| a.partial_cmp(b).unwrap().then(a.1.cmp(&b.1)));
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

#[test]
fn concurrency_and_pool_limits_are_never_exceeded() {
    let script = r#"'echo "start $HARK_JOB $(date +%s.%N)" >> "$LOG"; sleep 0.3; echo "end $HARK_JOB $(date +%s.%N)" >> "$LOG"'"#;
    let stack = Stack::start(&format!(
        r#"
pools:
  io: {{limit: 2}}
rules:
  - name: two-at-a-time
    match: {{topic: _lk.test.a}}
    run:
      command: [/bin/sh, -c, {script}]
      env: {{LOG: "@DIR@/a.log"}}
    concurrency: {{limit: 2, on_busy: queue}}
  - name: pooled-1
    match: {{topic: _lk.test.p}}
    run:
      command: [/bin/sh, -c, {script}]
      env: {{LOG: "@DIR@/p.log"}}
    concurrency: {{limit: 3, on_busy: queue, pool: io}}
  - name: pooled-2
    match: {{topic: _lk.test.p}}
    run:
      command: [/bin/sh, -c, {script}]
      env: {{LOG: "@DIR@/p.log"}}
    concurrency: {{limit: 3, on_busy: queue, pool: io}}
"#
    ));
    for _ in 0..6 {
        stack.publish("_lk.test.a", json!({}));
        stack.publish("_lk.test.p", json!({}));
    }
    stack.wait_finished("two-at-a-time", 6);
    stack.wait_finished("pooled-1", 6);
    stack.wait_finished("pooled-2", 6);
    let a = intervals(&read(&stack.path("a.log")));
    let p = intervals(&read(&stack.path("p.log")));
    assert_eq!((a.len(), p.len()), (6, 12));
    assert_eq!(max_overlap(&a), 2, "rule limit 2: {a:?}");
    assert_eq!(
        max_overlap(&p),
        2,
        "pool io has 2 slots across both rules: {p:?}"
    );
}

#[test]
fn timeout_kills_command_and_grandchild() {
    let stack = Stack::start(
        r#"
rules:
  - name: hang
    match: {topic: _lk.test.hang}
    run:
      command: [/bin/sh, -c, '(trap "" TERM; sleep 300) & echo $! > "$DIR/grandchild.pid"; echo $$ > "$DIR/child.pid"; sleep 300']
      env: {DIR: "@DIR@"}
      timeout: 1s
      grace: 500ms
"#,
    );
    stack.publish("_lk.test.hang", json!({}));
    let jobs = stack.wait_finished("hang", 1);
    assert_eq!(jobs[0]["state"], "timed_out", "{:?}", jobs[0]);
    for f in ["child.pid", "grandchild.pid"] {
        let pid = read(&stack.path(f)).trim().to_string();
        assert!(!pid.is_empty(), "{f} not written");
        let gone = poll_until(Duration::from_secs(5), || {
            let stat = read(Path::new(&format!("/proc/{pid}/stat")));
            (stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z")).then_some(())
        });
        assert!(gone.is_some(), "{f} {pid} is still alive");
    }
}

#[test]
fn retries_follow_the_rule() {
    let stack = Stack::start(
        r#"
rules:
  - name: flaky
    match: {topic: _lk.test.flaky}
    run:
      command: [/bin/sh, -c, 'echo x >> "$LOG"; test $(wc -l < "$LOG") -ge 3 || exit 75']
      env: {LOG: "@DIR@/attempts.log"}
    retry: {attempts: 4, backoff: 200ms, on_exit: [75]}
  - name: hopeless
    match: {topic: _lk.test.flaky}
    run:
      command: [/bin/sh, -c, 'echo x >> "$LOG"; exit 1']
      env: {LOG: "@DIR@/hopeless.log"}
    retry: {attempts: 3, backoff: 100ms, on_exit: [75]}
"#,
    );
    stack.publish("_lk.test.flaky", json!({}));
    let flaky = stack.wait_finished("flaky", 1);
    assert_eq!(flaky.len(), 1);
    assert_eq!(flaky[0]["state"], "succeeded");
    assert_eq!(flaky[0]["attempt"], 3);
    assert_eq!(read(&stack.path("attempts.log")).lines().count(), 3);
    // Exit 1 is not in on_exit: no retry.
    let hopeless = stack.wait_finished("hopeless", 1);
    assert_eq!(
        (
            hopeless[0]["state"].as_str(),
            hopeless[0]["attempt"].as_u64()
        ),
        (Some("failed"), Some(1))
    );
    assert_eq!(read(&stack.path("hopeless.log")).lines().count(), 1);
}

#[test]
fn kill_dash_nine_during_a_run_then_restart_completes_the_job_once() {
    let mut stack = Stack::start(
        r#"
rules:
  - name: slow
    match: {topic: _lk.test.slow}
    run:
      command: [/bin/sh, -c, 'echo run >> "$LOG"; sleep 2; echo done >> "$LOG"']
      env: {LOG: "@DIR@/slow.log"}
"#,
    );
    stack.publish("_lk.test.slow", json!({}));
    let log = stack.path("slow.log");
    poll_until(WAIT, || read(&log).contains("run").then_some(())).expect("the job started");
    stack.kill_and_restart_trigger();
    let jobs = stack.wait_finished("slow", 1);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "succeeded");
    // Give an orphan of the first run time to finish, if one survived the crash.
    std::thread::sleep(Duration::from_millis(2500));
    let text = read(&log);
    assert_eq!(
        text.matches("done").count(),
        1,
        "completed exactly once: {text:?}"
    );
    assert_eq!(
        text.matches("run").count(),
        2,
        "interrupted, then run again: {text:?}"
    );
    // And never again for the same event.
    stack.kill_and_restart_trigger();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read(&log).matches("done").count(), 1);
}

#[test]
fn edited_rules_apply_without_restart_and_broken_edits_keep_the_old_rule() {
    let rule = |word: &str| {
        format!(
            r#"
rules:
  - name: versioned
    match: {{topic: _lk.test.v}}
    run:
      command: [/bin/sh, -c, 'echo {word} >> "$LOG"']
      env: {{LOG: "@DIR@/v.log"}}
"#
        )
    };
    let stack = Stack::start(&rule("one"));
    let d = stack.dir.path().display().to_string();
    let log = stack.path("v.log");
    stack.publish("_lk.test.v", json!({}));
    poll_until(WAIT, || read(&log).contains("one").then_some(())).expect("v1 ran");

    // An edit is noticed without a signal.
    std::thread::sleep(Duration::from_millis(1100)); // distinct mtime on coarse filesystems
    write_file(
        &stack.rules,
        "50-test.yaml",
        &rule("two").replace("@DIR@", &d),
    );
    poll_until(WAIT, || {
        stack.publish("_lk.test.v", json!({}));
        poll_until(Duration::from_millis(700), || {
            read(&log).contains("two").then_some(())
        })
    })
    .expect("the edited rule took effect");

    // A broken edit plus SIGHUP: the last good version keeps running.
    write_file(
        &stack.rules,
        "50-test.yaml",
        "rules:\n  - name: versioned\n    match: {topic: [unclosed\n",
    );
    let pid = stack.trigger.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    stack
        .trigger
        .as_ref()
        .unwrap()
        .stderr
        .wait_for("keeping its last good version", WAIT)
        .expect("broken file reported");
    let before = read(&log).matches("two").count();
    stack.publish("_lk.test.v", json!({}));
    poll_until(WAIT, || {
        (read(&log).matches("two").count() > before).then_some(())
    })
    .expect("old rule still runs");
}

fn http_get(addr: &str) -> String {
    common::net::try_http(
        addr,
        "GET /metrics HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn hark_jobs(stack: &Stack, args: &[&str]) -> String {
    let out = hark_command()
        .arg("jobs")
        .args(args)
        .arg("--state")
        .arg(&stack.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn jobs_cancel_and_retry_reach_the_running_daemon_and_metrics_count_them() {
    let stack = Stack::start(
        r#"
rules:
  - name: long
    match: {topic: _lk.test.long}
    run:
      command: [/bin/sh, -c, 'echo started >> "$LOG"; exec sleep 60']
      env: {LOG: "@DIR@/long.log"}
      grace: 1s
"#,
    );
    stack.publish("_lk.test.long", json!({}));
    let running = stack.running_job("long");
    let id = running["id"].to_string();
    assert!(hark_jobs(&stack, &["cancel", &id]).contains("the daemon will stop it"));
    let cancelled = poll_until(WAIT, || {
        stack
            .jobs_of("long")
            .into_iter()
            .find(|j| j["id"] == running["id"] && j["state"] == "cancelled")
    });
    assert!(
        cancelled.is_some(),
        "cancel reached the daemon: {:?}",
        stack.jobs_of("long")
    );

    let retried = hark_jobs(&stack, &["retry", &id]);
    assert!(retried.contains("will run again"), "{retried}");
    poll_until(WAIT, || {
        (read(&stack.path("long.log")).lines().count() == 2).then_some(())
    })
    .expect("the retried job ran");
    let show = hark_jobs(&stack, &["show", &id]);
    assert!(
        show.contains("state:    cancelled") && show.contains("_lk.test.long"),
        "{show}"
    );

    let metrics = http_get(&stack.metrics);
    assert!(
        metrics.contains("hark_jobs_total{rule=\"long\",outcome=\"cancelled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hark_rule_matches_total{rule=\"long\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hark_jobs_running 1"), "{metrics}");
    assert!(metrics.contains("hark_events_admitted_total"), "{metrics}");
}

#[test]
fn sigterm_lets_running_jobs_finish_and_starts_nothing_new() {
    let mut stack = Stack::start(
        r#"
rules:
  - name: short
    match: {topic: _lk.test.short}
    run:
      command: [/bin/sh, -c, 'sleep 1; echo finished >> "$LOG"']
      env: {LOG: "@DIR@/short.log"}
"#,
    );
    // Two events; the default concurrency limit of 1 keeps the second waiting.
    stack.publish("_lk.test.short", json!({}));
    stack.publish("_lk.test.short", json!({}));
    poll_until(WAIT, || {
        let states: Vec<Value> = stack
            .jobs_of("short")
            .into_iter()
            .map(|j| j["state"].clone())
            .collect();
        (states.contains(&json!("running")) && states.contains(&json!("pending"))).then_some(())
    })
    .expect("one job runs while the other waits");
    let status = stack
        .trigger
        .as_mut()
        .unwrap()
        .terminate(WAIT)
        .expect("the daemon exits");
    assert!(status.success(), "{status}");
    assert_eq!(
        read(&stack.path("short.log")),
        "finished\n",
        "the running job was allowed to finish"
    );
    // The running job finished and succeeded; the waiting one never started (it runs after
    // the next start).
    let mut states: Vec<String> = stack
        .jobs_of("short")
        .into_iter()
        .map(|j| j["state"].as_str().unwrap_or_default().to_string())
        .collect();
    states.sort();
    assert_eq!(states, vec!["pending", "succeeded"]);
}

#[test]
fn job_results_go_back_on_the_bus_so_rules_can_chain() {
    let dir_marker = "@DIR@";
    let stack = Stack::start_with(
        r#"
rules:
  - name: first
    match: {topic: _lk.test.first}
    run: {command: [/bin/true]}
  - name: then
    match:
      topic: _hark.job.succeeded
      signed_by: [archive]
      where: {data.rule: first}
    run:
      command: [/bin/sh, -c, 'cat > "$OUT"']
      env: {OUT: "@DIR@/chained.json"}
"#,
        &format!("trigger:\n  results_key: {dir_marker}/trusted/archive.key_secret\n  results_relay: SUBMIT\n"),
    );
    let _ = &stack;
    // The config needs the relay's submit endpoint, known only after start: restart with it.
    let config = read(&stack.config).replace("SUBMIT", &stack.submit);
    std::fs::write(&stack.config, config).unwrap();
    let mut stack = stack;
    stack.kill_and_restart_trigger();
    let ev = stack.publish("_lk.test.first", json!({}));
    let chained = poll_until(WAIT, || {
        serde_json::from_str::<Value>(&read(&stack.path("chained.json"))).ok()
    })
    .expect("the result event fired the chained rule");
    assert_eq!(chained["tag"], "_hark.job.succeeded");
    assert_eq!(chained["data"]["rule"], "first");
    assert_eq!(chained["data"]["state"], "succeeded");
    assert_eq!(chained["data"]["exit_code"], 0);
    assert_eq!(chained["data"]["events"], json!([ev["uuid"]]));
    assert!(chained["signatures"]["archive"].is_object());
}

#[test]
fn events_published_while_the_daemon_was_down_are_reported_as_missed() {
    let mut stack = Stack::start("rules: []\n");
    stack
        .trigger
        .as_mut()
        .unwrap()
        .terminate(WAIT)
        .expect("stops");
    stack.trigger = None;
    for _ in 0..3 {
        stack.publish("_lk.test.unheard", json!({}));
    }
    stack.start_trigger();
    let line = stack
        .trigger
        .as_ref()
        .unwrap()
        .stderr
        .wait_for("missed", WAIT)
        .expect("the gap is reported");
    assert!(line.contains("from relay r1"), "{line}");
    let metrics = http_get(&stack.metrics);
    assert!(
        metrics.contains("hark_relay_gap_events_total{relay=\"r1\"}"),
        "{metrics}"
    );
}

/// A `hark trigger` subscribed to a fedmsg PUB socket of the test's own.
struct FedmsgTrigger {
    trigger: Proc,
    _ctx: zmq::Context,
    publisher: zmq::Socket,
    /// Where it serves its metrics.
    metrics: String,
}

/// Start a [`FedmsgTrigger`] with `rules` (`@DIR@` is `dir`).
fn fedmsg_trigger(dir: &Path, rules: &str) -> FedmsgTrigger {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let rules_dir = dir.join("rules.d");
    let d = dir.display().to_string();
    write_file(&rules_dir, "50-fedmsg.yaml", &rules.replace("@DIR@", &d));
    let ep = free_endpoint();
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.bind(&ep).unwrap();
    let trigger = spawn_ready(
        "trigger",
        hark_command()
            .args(["trigger", "--fedmsg", &ep, "--connect", &free_endpoint()])
            .args(["--metrics", &metrics])
            .arg("--rules")
            .arg(&rules_dir)
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--trusted")
            .arg(dir),
        "trigger ready",
    );
    FedmsgTrigger {
        trigger,
        _ctx: ctx,
        publisher,
        metrics,
    }
}

/// The fedmsg rule of these tests: the command writes its stdin to `<dir>/<uuid>.json`,
/// aside and renamed, so the test never reads a half-written file.
const FEDMSG_KOJI_RULE: &str = r#"
rules:
  - name: koji
    match:
      topic: "org.fedoraproject.*.buildsys.build.state.change"
      where: {data.new: 1}
    run:
      command: [/bin/sh, -c, 'cat > "$OUT/.$HARK_UUID.part" && mv "$OUT/.$HARK_UUID.part" "$OUT/$HARK_UUID.json"']
      env: {OUT: "@DIR@"}
"#;

/// The topic of the koji build messages the fedmsg tests publish.
const KOJI_TOPIC: &str = "org.fedoraproject.prod.buildsys.build.state.change";

/// Publish koji build messages (ids `<prefix>-1`, `-2`, ...) until one has fired the koji
/// rule: what its command read, and the body sent.
fn publish_until_fired(
    publisher: &zmq::Socket,
    dir: &Path,
    prefix: &str,
) -> Option<(Vec<u8>, String)> {
    let mut n = 0;
    poll_until(WAIT, || {
        n += 1;
        let id = format!("{prefix}-{n}");
        let body = python_fedmsg_body(
            KOJI_TOPIC,
            &id,
            &format!(r#"{{"build_id": {n}, "new": 1}}"#),
        );
        publisher
            .send_multipart([KOJI_TOPIC.as_bytes(), body.as_bytes()], 0)
            .unwrap();
        let path = dir.join(format!("{id}.json"));
        poll_until(Duration::from_millis(300), || {
            std::fs::read(&path).ok().map(|b| (b, body.clone()))
        })
    })
}

#[test]
fn fedmsg_endpoints_are_subscribed_directly_and_never_satisfy_signed_by() {
    let dir = temp_dir();
    let rules = FEDMSG_KOJI_RULE.to_string()
        + r#"  - name: needs-signature
    match:
      topic: "org.fedoraproject.**"
      signed_by: [anyone]
    run: {command: [/bin/true]}
"#;
    let t = fedmsg_trigger(dir.path(), &rules);
    let loaded = t.trigger.stderr.history().join("\n");
    assert!(loaded.contains("rule set ready rules=2"), "{loaded}");
    let fired = publish_until_fired(&t.publisher, dir.path(), "2026")
        .expect("the fedmsg event fired the rule");
    assert_eq!(
        fired.0,
        fired.1.as_bytes(),
        "stdin is the fedmsg body as received"
    );
    let out = hark_command()
        .args(["jobs", "list", "--json"])
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .output()
        .unwrap();
    let jobs = String::from_utf8_lossy(&out.stdout);
    assert!(jobs.contains("\"rule\":\"koji\""), "{jobs}");
    assert!(
        !jobs.contains("needs-signature"),
        "fedmsg events carry no verified signer: {jobs}"
    );
}

/// A message over the subscriber's 64 MiB limit makes libzmq drop the connection; the
/// daemon says so, counts the reconnect, connects again and runs the next event's rule.
#[test]
fn an_oversized_fedmsg_frame_costs_a_reconnect_and_the_daemon_keeps_running_rules() {
    let dir = temp_dir();
    let mut t = fedmsg_trigger(dir.path(), FEDMSG_KOJI_RULE);
    publish_until_fired(&t.publisher, dir.path(), "before").expect("the subscription works");
    let oversized = vec![b'x'; 64 * 1024 * 1024 + 1];
    t.publisher
        .send_multipart([KOJI_TOPIC.as_bytes(), &oversized], 0)
        .unwrap();
    drop(oversized);
    t.trigger
        .stderr
        .wait_for("the connection dropped", WAIT)
        .expect("the daemon logs the dropped connection");
    publish_until_fired(&t.publisher, dir.path(), "after")
        .expect("an event after the oversized frame fires the rule");
    assert!(t.trigger.try_status().is_none(), "the daemon exited");
    let scraped = http_get(&t.metrics);
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("hark_source_reconnects_total{") && !l.ends_with(" 0")),
        "{scraped}"
    );
}

/// `hark jobs log --follow ID` on the stack's state file.
fn follow_log(stack: &Stack, id: &str) -> Proc {
    Proc::spawn(
        "jobs-log",
        hark_command()
            .args(["jobs", "log", "--follow", id, "--state"])
            .arg(&stack.state),
    )
}

/// `hark jobs log -f` shows a running job's output as it comes and ends with the job;
/// afterwards `hark jobs log` shows the tail the state file keeps.
#[test]
fn jobs_log_follows_a_running_job_until_it_ends() {
    let stack = Stack::start(
        r#"
rules:
  - name: talk
    match: {topic: _lk.test.talk}
    run:
      command: [/bin/sh, -c, 'echo one; while [ ! -e "$GO" ]; do sleep 0.05; done; echo two']
      env: {GO: "@DIR@/go"}
"#,
    );
    stack.publish("_lk.test.talk", json!({}));
    let running = stack.running_job("talk");
    let id = running["id"].to_string();
    let mut follow = follow_log(&stack, &id);
    follow
        .stdout
        .wait_for("one", WAIT)
        .expect("the output so far, while the job runs");
    assert!(
        follow.try_status().is_none(),
        "--follow ended before the job did"
    );
    std::fs::write(stack.path("go"), "").unwrap();
    follow
        .stdout
        .wait_for("two", WAIT)
        .expect("the line written after following began");
    follow.wait_success(WAIT).expect("ends with the job");
    let status = follow.stderr.history().join("\n");
    assert!(
        status.contains(&format!("job {id} succeeded (exit 0)")),
        "{status}"
    );
    assert_eq!(
        follow.stdout.history(),
        ["one", "two"],
        "each line once, in order"
    );
    assert_eq!(hark_jobs(&stack, &["log", &id]), "one\ntwo\n");
}

/// A job that has printed nothing has no live file (it comes with the first line):
/// `hark jobs log` says so, and `--follow` started before the first line gets that line
/// from the live file while the job still runs (not from the stored tail afterwards).
#[test]
fn jobs_log_of_a_silent_job_says_so_and_follow_gets_its_first_line_later() {
    let stack = Stack::start(
        r#"
rules:
  - name: quiet
    match: {topic: _lk.test.quiet}
    run:
      command: [/bin/sh, -c, 'while [ ! -e "$GO" ]; do sleep 0.05; done; echo late; while [ ! -e "$END" ]; do sleep 0.05; done']
      env: {GO: "@DIR@/go", END: "@DIR@/end"}
"#,
    );
    stack.publish("_lk.test.quiet", json!({}));
    let running = stack.running_job("quiet");
    let id = running["id"].to_string();
    let job = running["id"].as_i64().expect("a job id");
    let live = hark::jobs::live::path(&hark::jobs::live::dir(&stack.state), job);
    assert!(
        !live.exists(),
        "a silent job has no live file yet: {}",
        live.display()
    );
    let out = hark_command()
        .args(["jobs", "log", &id, "--state"])
        .arg(&stack.state)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("job {id} is running and has printed nothing yet")),
        "{said}"
    );
    let mut follow = follow_log(&stack, &id);
    std::fs::write(stack.path("go"), "").unwrap();
    follow
        .stdout
        .wait_for("late", WAIT)
        .expect("the first line, written after following began");
    assert!(
        follow.try_status().is_none(),
        "the line came while the job runs, so from the live file"
    );
    assert!(
        live.exists(),
        "made with the first line: {}",
        live.display()
    );
    std::fs::write(stack.path("end"), "").unwrap();
    follow.wait_success(WAIT).expect("ends with the job");
    assert_eq!(follow.stdout.history(), ["late"]);
    assert!(!live.exists(), "removed when the job ended");
}

/// `hark status` (another process) shows what the running daemon hears: the relay by
/// name, with its heartbeats and the last event from it.
#[test]
fn hark_status_shows_that_the_daemon_really_receives_from_its_relay() {
    let stack = Stack::start("rules: []\n");
    let status = |stack: &Stack| -> Value {
        serde_json::from_str(&hark_status(stack, &["--json"])).unwrap_or(Value::Null)
    };
    let heard = poll_until(WAIT, || {
        let s = status(&stack);
        let r1 = s["sources"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == "r1")?
            .clone();
        (r1["last_event"].is_i64() && r1["last_heartbeat"].is_i64()).then_some(r1)
    })
    .unwrap_or_else(|| panic!("no heartbeat and event from r1 in {}", status(&stack)));
    assert_eq!(heard["kind"], "relay");
    assert_eq!(heard["silent"], false);
    let text = hark_status(&stack, &[]);
    let line = text
        .lines()
        .find(|l| l.starts_with("r1 ") && l.contains(" relay "))
        .unwrap_or_else(|| panic!("no source line for r1 in {text}"));
    assert!(line.contains(" up ") && line.contains(" ago"), "{line}");
}

fn hark_status(stack: &Stack, args: &[&str]) -> String {
    let out = hark_command()
        .arg("status")
        .args(args)
        .arg("--state")
        .arg(&stack.state)
        .arg("--rules")
        .arg(&stack.rules)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The job store commits with `synchronous=NORMAL`: a SIGKILL loses nothing (the commit is
/// in the WAL), but a power loss may take the last commits. That is simulated here: a kill
/// -9 during a burst, then the state file put back to a consistent copy taken earlier in
/// the same burst (what a disk that lost its last writes holds). The relay's journal and
/// the catch-up by sequence number must bring back every event the copy does not have,
/// and what the copy records as succeeded must never run again.
#[test]
fn a_power_loss_during_a_burst_loses_no_event_and_reruns_nothing_the_disk_kept() {
    use common::bus::{counts, publish_to, Bus};
    let mut bus = Bus::new(1);
    bus.start_trigger();
    let first = bus.publish(usize::MAX).expect("the relay acks");
    bus.wait_all_ran(std::slice::from_ref(&first));
    let targets = bus.targets();
    let key = bus.key.clone();
    let stream = std::thread::spawn(move || {
        (0..400)
            .filter_map(|n| publish_to(&targets, &key, json!({"n": n})))
            .collect::<Vec<String>>()
    });
    poll_until(WAIT, || (bus.ran().len() > 100).then_some(())).expect("the burst runs");
    let state = bus.dir.path().join("state.db");
    let copy = bus.dir.path().join("state-before-the-power-loss.db");
    rusqlite::Connection::open(&state)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(10))?;
            c.execute("VACUUM INTO ?1", [copy.display().to_string()])
        })
        .expect("a consistent copy of the state file");
    let kept: Vec<String> = {
        let c = rusqlite::Connection::open(&copy).expect("the copy opens");
        let mut q = c
            .prepare("SELECT uuid FROM done WHERE rule = 'record'")
            .expect("done markers");
        q.query_map([], |r| r.get(0))
            .expect("done markers")
            .map(|u| u.expect("a uuid"))
            .collect()
    };
    // Jobs that succeeded after the copy: what the power loss takes from the store.
    poll_until(WAIT, || (bus.ran().len() > kept.len() + 100).then_some(()))
        .expect("the burst goes on");
    bus.kill_trigger();
    let ran_before = bus.ran().len();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    std::fs::rename(&copy, &state).expect("the old copy becomes the state file");
    bus.start_trigger();
    let acked = stream.join().expect("the publisher");
    assert_eq!(acked.len(), 400, "the relay acked every event");
    let ran = bus.wait_all_ran(&acked);
    assert!(
        ran_before > kept.len(),
        "the store lost succeeded jobs ({ran_before} ran, the copy kept {})",
        kept.len()
    );
    let again: Vec<&String> = kept.iter().filter(|u| ran[*u] > 1).collect();
    assert!(
        again.is_empty(),
        "{} job(s) the disk kept as succeeded ran again: {:?}",
        again.len(),
        &again[..again.len().min(5)]
    );
    let counts = counts(&bus.ran());
    assert!(acked.iter().all(|u| counts[u] <= 2), "at most twice each");
}
