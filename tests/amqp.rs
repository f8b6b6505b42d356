//! The AMQP source against a real RabbitMQ (Debian's rabbitmq-server, started by
//! tests/support/rabbitmq.rs on loopback with random ports): a message fires a rule with
//! its body on stdin and its headers in `HARK_HEADERS` and in rules; messages published
//! while the trigger is down run once it is back (durable queue); a poison message is
//! rejected once and does not block the queue; a message whose job could not be filed (a
//! full state disk) is redelivered to the next trigger and runs once.
//!
//! A broker takes 10-20 s to boot on a loaded machine, so the scenarios that can share one
//! run in one test, each on a queue and routing keys of its own.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::rabbitmq::{self, Broker, Message};
use common::{hark_command, poll_until, spawn_ready, temp_dir, write_file, Proc, TempDir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A broker, or why the test cannot run here.
fn broker(dir: &Path) -> Option<Broker> {
    if let Some(why) = rabbitmq::missing() {
        println!("SKIPPED: {why}");
        return None;
    }
    Some(Broker::start(dir).unwrap_or_else(|e| panic!("{e}")))
}

/// Rules and outputs for one scenario: the rule `name` fires on `org.hark.test.<name>.**`
/// from broker `test` and writes each message's stdin and headers under `out/`.
struct Scenario {
    dir: TempDir,
    name: String,
    /// `EXCHANGE=KEY` the queue is bound with.
    bind: String,
}

impl Scenario {
    fn new(name: &str, where_: &str) -> Scenario {
        Self::on(
            name,
            &format!("org.hark.test.{name}.**"),
            &format!("amq.topic=org.hark.test.{name}.#"),
            where_,
        )
    }

    /// The rule `name` on topics `topic`, the queue bound with `bind`.
    fn on(name: &str, topic: &str, bind: &str, where_: &str) -> Scenario {
        let dir = temp_dir();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("out dir");
        let rule = format!(
            "rules:\n  - name: {name}\n    match:\n      topic: \"{topic}\"\n      where: {{broker: test{where_}}}\n    run:\n      command: [/bin/sh, -c, 'cat > \"$OUT/$HARK_UUID.body\"; printf %s \"$HARK_HEADERS\" > \"$OUT/$HARK_UUID.headers\"; echo \"$HARK_UUID\" >> \"$OUT/runs\"']\n      env: {{OUT: \"{}\"}}\n    concurrency: {{limit: 4}}\n",
            out.display()
        );
        write_file(&dir.path().join("rules.d"), "50-amqp.yaml", &rule);
        write_file(dir.path(), "hark.yaml", "");
        Scenario {
            dir,
            name: name.to_string(),
            bind: bind.to_string(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `hark trigger --amqp URL` on this scenario's queue, state in `state`; returns once
    /// it consumes.
    fn trigger(&self, url: &str, state: &Path) -> Proc {
        let mut cmd = hark_command();
        cmd.args(["trigger", "--amqp", url, "--amqp-name", "test"])
            .args(["--amqp-queue", &format!("hark-{}", self.name)])
            .args(["--amqp-bind", &self.bind])
            .args(["--amqp-prefetch", "16"])
            .arg("--config")
            .arg(self.path("hark.yaml"))
            .arg("--rules")
            .arg(self.path("rules.d"))
            .arg("--state")
            .arg(state);
        let trigger = spawn_ready("trigger", &mut cmd, "trigger ready");
        trigger
            .stderr
            .wait_for("amqp broker test: consuming from queue", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        trigger
    }

    fn message(&self, id: &str, body: Value) -> Message {
        Message {
            exchange: "amq.topic".into(),
            routing_key: format!("org.hark.test.{}.x", self.name),
            body: body.to_string().into_bytes(),
            message_id: Some(id.into()),
            headers: serde_json::Map::from_iter([
                ("fedora_messaging_severity".to_string(), json!(20)),
                ("sent-at".to_string(), json!("2026-12-02T16:00:00+00:00")),
            ]),
        }
    }

    /// How often each uuid ran so far.
    fn runs(&self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(self.path("out/runs")).unwrap_or_default();
        let mut n = BTreeMap::new();
        for line in text.lines() {
            *n.entry(line.to_string()).or_insert(0) += 1;
        }
        n
    }

    /// Wait until every one of `ids` ran; then the runs.
    fn wait_runs(&self, ids: &[&str]) -> BTreeMap<String, usize> {
        poll_until(WAIT, || {
            let runs = self.runs();
            ids.iter().all(|id| runs.contains_key(*id)).then_some(runs)
        })
        .unwrap_or_else(|| panic!("not all of {ids:?} ran: {:?}", self.runs()))
    }
}

#[test]
fn a_trigger_consumes_a_queue_on_a_real_broker() {
    let dir = temp_dir();
    let Some(broker) = broker(&dir.path().join("broker")) else {
        return;
    };
    a_message_fires_a_rule_with_its_body_and_headers(&broker);
    messages_published_while_the_trigger_is_down_run_after_its_restart(&broker);
    a_poison_message_is_rejected_once_and_does_not_block_the_queue(&broker);
    a_message_whose_job_could_not_be_filed_is_redelivered(&broker);
    fedora_messaging_publishes_and_the_rule_sees_topic_headers_and_body(&broker);
}

/// The fixtures (tests/data/amqp/), which the schema packages validate, published by
/// fedora-messaging's api.publish.
fn fedora_messaging_publishes_and_the_rule_sees_topic_headers_and_body(broker: &Broker) {
    let s = Scenario::on(
        "bodhi-stable",
        "org.fedoraproject.prod.**",
        "amq.topic=org.fedoraproject.prod.#",
        ", headers.fedora_messaging_schema: bodhi.update.complete.stable.v1, data.update.status: stable",
    );
    let _trigger = s.trigger(&broker.url(), &s.path("state.db"));
    let data = common::repo_root().join("tests/data/amqp");
    let fixtures = [
        "pungi-compose-status-change.json",
        "koji-build-state-change.json",
        "bodhi-compose-complete.json",
        "bodhi-update-complete-stable.json",
    ];
    let mut publish = common::peer_command("fm_publish.py");
    publish.arg(broker.url());
    publish.args(fixtures.iter().map(|f| data.join(f)));
    let out = common::run_ok("fm_publish", &mut publish, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), 4, "four messages published: {out:?}");
    let bodhi = out
        .iter()
        .find(|l| l.ends_with(" org.fedoraproject.prod.bodhi.update.complete.stable"))
        .and_then(|l| l.split(' ').nth(1))
        .expect("the bodhi message's id")
        .to_string();
    let runs = s.wait_runs(&[&bodhi]);
    let body: Value = serde_json::from_str(
        &std::fs::read_to_string(s.path(&format!("out/{bodhi}.body"))).expect("stdin"),
    )
    .expect("the body is JSON");
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("bodhi-update-complete-stable.json")).expect("fixture"),
    )
    .expect("fixture JSON");
    assert_eq!(
        body, fixture["body"],
        "the body on stdin is what was published"
    );
    let headers: Value = serde_json::from_str(
        &std::fs::read_to_string(s.path(&format!("out/{bodhi}.headers"))).expect("headers"),
    )
    .expect("HARK_HEADERS is JSON");
    assert_eq!(headers["fedora_messaging_schema_package"], "bodhi_messages");
    assert_eq!(headers["fedora_messaging_user_alice"], true);
    assert_eq!(headers["fedora_messaging_rpm_python-requests"], true);
    assert_eq!(headers["fedora_messaging_severity"], 20);
    assert!(headers["sent-at"].is_string(), "{headers}");
    // Only the bodhi stable update matches; give the others time to have been delivered.
    poll_until(WAIT, || {
        broker
            .queue_depth("hark-bodhi-stable")
            .ok()
            .filter(|d| *d == (0, 0))
    })
    .expect("all four consumed and acked");
    assert_eq!(
        s.runs().len(),
        1,
        "only the bodhi stable update ran: {runs:?}"
    );
}

fn a_message_fires_a_rule_with_its_body_and_headers(broker: &Broker) {
    let s = Scenario::new("fires", ", headers.fedora_messaging_severity: 20");
    let _trigger = s.trigger(&broker.url(), &s.path("state.db"));
    let mut m = s.message(
        "c0ffee00-0000-4000-8000-000000000001",
        json!({"n": 1, "who": "amqp"}),
    );
    m.headers
        .insert("fedora_messaging_user_alice".into(), json!(true));
    let mut quiet = s.message("c0ffee00-0000-4000-8000-000000000002", json!({"n": 2}));
    quiet
        .headers
        .insert("fedora_messaging_severity".into(), json!(10));
    rabbitmq::publish(&broker.url(), &[quiet, m]).unwrap_or_else(|e| panic!("{e}"));
    let runs = s.wait_runs(&["c0ffee00-0000-4000-8000-000000000001"]);
    let body = std::fs::read_to_string(s.path("out/c0ffee00-0000-4000-8000-000000000001.body"))
        .expect("stdin was written");
    assert_eq!(body, r#"{"n":1,"who":"amqp"}"#, "the body on stdin");
    let headers: Value = serde_json::from_str(
        &std::fs::read_to_string(s.path("out/c0ffee00-0000-4000-8000-000000000001.headers"))
            .expect("headers were written"),
    )
    .expect("HARK_HEADERS is JSON");
    assert_eq!(headers["fedora_messaging_user_alice"], true);
    assert_eq!(headers["sent-at"], "2026-12-02T16:00:00+00:00");
    assert!(
        !runs.contains_key("c0ffee00-0000-4000-8000-000000000002"),
        "headers.fedora_messaging_severity: 20 does not match 10: {runs:?}"
    );
    let (ready, unacked) = poll_until(WAIT, || {
        broker
            .queue_depth("hark-fires")
            .ok()
            .filter(|d| *d == (0, 0))
    })
    .unwrap_or_else(|| {
        panic!(
            "both messages acked: {:?}",
            broker.queue_depth("hark-fires")
        )
    });
    assert_eq!((ready, unacked), (0, 0));
}

fn messages_published_while_the_trigger_is_down_run_after_its_restart(broker: &Broker) {
    let s = Scenario::new("durable", "");
    let state = s.path("state.db");
    let mut first = s.trigger(&broker.url(), &state);
    first.terminate(WAIT).expect("the trigger stops on SIGTERM");
    let ids: Vec<String> = (0..5)
        .map(|i| format!("d0000000-0000-4000-8000-00000000000{i}"))
        .collect();
    let messages: Vec<Message> = ids
        .iter()
        .map(|id| s.message(id, json!({"id": id})))
        .collect();
    rabbitmq::publish(&broker.url(), &messages).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.runs().is_empty(),
        "nothing consumes while the trigger is down"
    );
    let _second = s.trigger(&broker.url(), &state);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let runs = s.wait_runs(&ids);
    assert!(runs.values().all(|n| *n == 1), "each ran once: {runs:?}");
}

fn a_poison_message_is_rejected_once_and_does_not_block_the_queue(broker: &Broker) {
    let s = Scenario::new("poison", "");
    let trigger = s.trigger(&broker.url(), &s.path("state.db"));
    let mut poison = s.message("bad00000-0000-4000-8000-000000000000", json!({}));
    poison.body = b"{this is not json".to_vec();
    let good = s.message("900d0000-0000-4000-8000-000000000000", json!({"ok": true}));
    rabbitmq::publish(&broker.url(), &[poison, good]).unwrap_or_else(|e| panic!("{e}"));
    s.wait_runs(&["900d0000-0000-4000-8000-000000000000"]);
    let depth = poll_until(WAIT, || {
        broker
            .queue_depth("hark-poison")
            .ok()
            .filter(|d| *d == (0, 0))
    });
    assert_eq!(
        depth,
        Some((0, 0)),
        "the poison message is gone, not requeued"
    );
    let rejected: Vec<String> = trigger
        .stderr
        .history()
        .into_iter()
        .filter(|l| l.contains("rejecting a message that cannot become an event"))
        .collect();
    assert_eq!(rejected.len(), 1, "rejected once: {rejected:?}");
    assert!(rejected[0].contains("malformed-json"), "{}", rejected[0]);
    assert_eq!(
        s.runs().len(),
        1,
        "only the good message ran: {:?}",
        s.runs()
    );
}

fn a_message_whose_job_could_not_be_filed_is_redelivered(broker: &Broker) {
    let s = Scenario::new("filing", "");
    let Some(disk) = common::Tmpfs::mount(&s.path("state"), "4m") else {
        println!("SKIPPED (store failure scenario): needs root for tmpfs");
        return;
    };
    let state = disk.0.join("state.db");
    let mut trigger = s.trigger(&broker.url(), &state);
    // A first message, so the state file has what it needs before the disk fills.
    rabbitmq::publish(
        &broker.url(),
        &[s.message("f0000000-0000-4000-8000-000000000000", json!({}))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    s.wait_runs(&["f0000000-0000-4000-8000-000000000000"]);
    let filler = disk.0.join("filler");
    common::fill_disk(&filler);
    let ids: Vec<String> = (1..=3)
        .map(|i| format!("f0000000-0000-4000-8000-00000000000{i}"))
        .collect();
    let messages: Vec<Message> = ids.iter().map(|id| s.message(id, json!({}))).collect();
    rabbitmq::publish(&broker.url(), &messages).unwrap_or_else(|e| panic!("{e}"));
    trigger
        .stderr
        .wait_for("state store cannot commit", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, unacked) = broker
        .queue_depth("hark-filing")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(unacked >= 1, "what could not be filed is not acked");
    // The daemon dies before the store recovers.
    trigger.kill();
    std::fs::remove_file(&filler).expect("free the disk");
    let _again = s.trigger(&broker.url(), &state);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let runs = s.wait_runs(&ids);
    assert!(runs.values().all(|n| *n == 1), "each ran once: {runs:?}");
}
