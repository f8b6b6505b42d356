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

/// A broker with a plain and an amqps listener (client certificates required, signed by
/// the CA made here), or why the test cannot run here.
fn broker(dir: &Path) -> Option<(Broker, rabbitmq::Certs)> {
    if let Some(why) = rabbitmq::missing() {
        println!("SKIPPED: {why}");
        return None;
    }
    let certs = rabbitmq::make_certs(&dir.join("certs")).unwrap_or_else(|e| panic!("{e}"));
    let broker =
        Broker::start_with(&dir.join("node"), Some(&certs)).unwrap_or_else(|e| panic!("{e}"));
    Some((broker, certs))
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
        let trigger = self.spawn_trigger(url, state, &[]);
        trigger
            .stderr
            .wait_for("amqp broker test: consuming from queue", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        trigger
    }

    /// `hark trigger --amqp URL EXTRA...`, returned once ready (connected or not).
    fn spawn_trigger(&self, url: &str, state: &Path, extra: &[std::ffi::OsString]) -> Proc {
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
            .arg(state)
            .args(extra);
        spawn_ready("trigger", &mut cmd, "trigger ready")
    }

    /// `n` message ids `PREFIX-0000-4000-8000-<i, 12 digits>` and a message `{"id": ID}`
    /// for each.
    fn messages(&self, prefix: &str, n: usize) -> (Vec<String>, Vec<Message>) {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("{prefix}-0000-4000-8000-{i:012}"))
            .collect();
        let messages = ids
            .iter()
            .map(|id| self.message(id, json!({"id": id})))
            .collect();
        (ids, messages)
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
    let Some((mut broker, certs)) = broker(&dir.path().join("broker")) else {
        return;
    };
    a_message_fires_a_rule_with_its_body_and_headers(&broker);
    messages_published_while_the_trigger_is_down_run_after_its_restart(&broker);
    a_poison_message_is_rejected_once_and_does_not_block_the_queue(&broker);
    a_message_whose_job_could_not_be_filed_is_redelivered(&broker);
    fedora_messaging_publishes_and_the_rule_sees_topic_headers_and_body(&broker);
    tail_and_record_watch_a_broker_and_rules_test_reads_the_recording(&broker);
    tls_with_a_client_certificate_works_and_a_wrong_ca_is_named(&broker, &certs);
    fedora_messaging_receives_results_and_relayed_events(&broker);
    relay_amqp_out_over_amqps_with_a_client_certificate(&broker, &certs);
    let mut sink = SinkRelay::start(&broker.url());
    a_fedmsg_event_through_amqp_out_reaches_fedora_messaging(&broker, &sink);
    a_refused_message_is_sent_again_and_the_relay_keeps_serving(&broker, &sink);
    // These two restart the broker.
    a_broker_gone_fills_the_sink_then_drops_with_a_counter(&mut broker, &mut sink);
    a_broker_restart_mid_stream_loses_nothing_and_runs_nothing_twice(&mut broker);
}

/// A `hark relay --amqp-out URL --metrics ADDR --fedmsg-inbound EP`, name `sink-relay`,
/// granting `archive` `org.hark.sink.**`.
struct SinkRelay {
    dir: TempDir,
    relay: Proc,
    submit: String,
    fedmsg: String,
    metrics: String,
    key: hark::event::keys::SigningKey,
}

impl SinkRelay {
    fn start(url: &str) -> SinkRelay {
        let dir = temp_dir();
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let key = common::keypair(&keys, "archive");
        let (submit, fedmsg) = (common::free_endpoint(), common::free_endpoint());
        let metrics = format!("127.0.0.1:{}", common::free_port());
        let mut cmd = hark_command();
        cmd.args(["relay", "--submit", &submit, "--fedmsg-inbound", &fedmsg])
            .args(["--publish", &common::free_endpoint(), "--metrics", &metrics])
            .args(["--no-journal", "--name", "sink-relay", "--trusted"])
            .arg(&keys)
            .args(["--grant", "archive=org.hark.sink.**"])
            .args(["--amqp-out", url])
            .arg("--config")
            .arg(write_file(dir.path(), "relay.yaml", ""));
        let relay = spawn_ready("relay", &mut cmd, "relay ready");
        relay
            .stderr
            .wait_for("amqp relay sink: publishing to exchange", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        SinkRelay {
            dir,
            relay,
            submit,
            fedmsg,
            metrics,
            key,
        }
    }

    /// Submit an event on `topic` and wait for the relay's ack: its uuid.
    fn publish(&self, topic: &str, data: Value) -> String {
        common::publish_acked(&self.submit, &self.key, topic, data)
    }

    /// A sample of the relay's /metrics, 0 when absent.
    fn metric(&self, sample: &str) -> f64 {
        let text = common::net::try_http(&self.metrics, "GET /metrics HTTP/1.0\r\n\r\n", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The relay's log lines so far that contain `needle`.
    fn logged(&self, needle: &str) -> Vec<String> {
        self.relay
            .stderr
            .history()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }
}

/// Take messages from `queue` until there are `n` (or the wait is over).
fn take_n(broker: &Broker, queue: &str, n: usize) -> Vec<rabbitmq::Taken> {
    let mut got = Vec::new();
    poll_until(WAIT, || {
        got.extend(
            rabbitmq::take(&broker.url(), queue, n - got.len()).unwrap_or_else(|e| panic!("{e}")),
        );
        (got.len() >= n).then_some(())
    })
    .unwrap_or_else(|| panic!("{n} messages in {queue}; got {}: {got:?}", got.len()));
    got
}

/// `hark relay --amqp-out amqps://...` with amqp.ca, amqp.cert and amqp.key from
/// hark.yaml (the broker verifies the client's certificate): what it admits arrives, and
/// no log line shows the password.
fn relay_amqp_out_over_amqps_with_a_client_certificate(broker: &Broker, certs: &rabbitmq::Certs) {
    let queue = "relay-tls";
    rabbitmq::declare(&broker.url(), queue, &[("amq.topic", "org.hark.tls.#")])
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_dir();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let key = common::keypair(&keys, "archive");
    let config = write_file(
        dir.path(),
        "relay.yaml",
        &format!(
            "amqp:\n  ca: \"{}\"\n  cert: \"{}\"\n  key: \"{}\"\n",
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    );
    let submit = common::free_endpoint();
    let tls_url = broker.tls_url().expect("the broker has an amqps listener");
    let mut cmd = hark_command();
    cmd.args([
        "relay",
        "--submit",
        &submit,
        "--publish",
        &common::free_endpoint(),
    ])
    .args(["--no-journal", "--name", "tls-relay", "--trusted"])
    .arg(&keys)
    .args(["--grant", "archive=org.hark.tls.**"])
    .args(["--amqp-out", &tls_url])
    .arg("--config")
    .arg(&config);
    let relay = spawn_ready("relay", &mut cmd, "relay ready");
    let line = relay
        .stderr
        .wait_for("amqp relay sink: publishing to exchange", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("amqps://guest:***@localhost:"), "{line}");
    let uuid = common::publish_acked(&submit, &key, "org.hark.tls.x", json!({"over": "amqps"}));
    let got = take_n(broker, queue, 1);
    assert_eq!(got[0].message_id.as_deref(), Some(uuid.as_str()));
    assert_eq!(got[0].routing_key, "org.hark.tls.x");
    let body: Value = serde_json::from_slice(&got[0].body).expect("a JSON body");
    assert_eq!(body, json!({"over": "amqps"}));
    assert_eq!(got[0].headers["hark-relay"], "tls-relay");
    let leaked: Vec<String> = relay
        .stderr
        .history()
        .into_iter()
        .filter(|l| l.contains("guest:guest"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the password stays out of logs: {leaked:?}"
    );
}

/// A fedmsg message (as Python's fedmsg sends it to the relay's inbound socket) through
/// `--amqp-out`, read by fedora-messaging's own consumer: its `msg` is the body, its
/// `msg_id` the message id, its `timestamp` the `sent-at` header.
fn a_fedmsg_event_through_amqp_out_reaches_fedora_messaging(broker: &Broker, sink: &SinkRelay) {
    let queue = "fm-fedmsg";
    let topic = "org.fedoraproject.prod.buildsys.build.state.change";
    rabbitmq::declare(&broker.url(), queue, &[("amq.topic", topic)])
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).expect("PUB");
    publisher.connect(&sink.fedmsg).expect("connect");
    let msg = r#"{"build_id": 42, "name": "caf\u00e9", "new": 1}"#;
    // PUB connect has its own slow-joiner window: send (fresh ids) until one arrives.
    let mut sent = Vec::new();
    poll_until(WAIT, || {
        let id = format!("2026-fedmsg-{}", sent.len());
        let body = common::messages::python_fedmsg_body(topic, &id, msg);
        publisher
            .send_multipart([topic.as_bytes(), body.as_bytes()], 0)
            .expect("send");
        sent.push(id);
        std::thread::sleep(Duration::from_millis(200));
        broker.queue_depth(queue).ok().filter(|d| d.0 >= 1)
    })
    .unwrap_or_else(|| panic!("no fedmsg message reached {queue}"));
    let mut consume = common::peer_command("fm_consume.py");
    consume.args([&broker.url(), queue, "1"]);
    let lines = common::run_ok("fm_consume", &mut consume, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let m: Value = serde_json::from_str(lines.last().expect("a message")).expect("JSON line");
    assert_eq!(m["topic"], topic, "{m}");
    assert!(
        sent.iter().any(|id| m["id"] == id.as_str()),
        "the msg_id is the message id: {m}"
    );
    assert_eq!(
        m["body"],
        json!({"build_id": 42, "name": "café", "new": 1}),
        "{m}"
    );
    assert_eq!(m["headers"]["hark-format"], "fedmsg", "{m}");
    assert_eq!(m["headers"]["hark-relay"], "sink-relay", "{m}");
    assert_eq!(
        m["headers"]["sent-at"], "2023-11-14T22:13:20.000000+00:00",
        "fedmsg's timestamp: {m}"
    );
    assert_eq!(m["severity"], 20, "{m}");
}

/// A queue that refuses publishes when full (x-overflow: reject-publish): the broker nacks
/// the relay's second message. The sink logs and counts it, sends it again after the
/// backoff until the queue has room, and loses and doubles nothing; the relay acks every
/// submission meanwhile.
fn a_refused_message_is_sent_again_and_the_relay_keeps_serving(broker: &Broker, sink: &SinkRelay) {
    let queue = "sink-full";
    let arguments = serde_json::Map::from_iter([
        ("x-max-length".to_string(), json!(1)),
        ("x-overflow".to_string(), json!("reject-publish")),
    ]);
    rabbitmq::declare_with(
        &broker.url(),
        queue,
        &[("amq.topic", "org.hark.sink.full.#")],
        &arguments,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let retried = r#"hark_amqp_out_retried_total{sink="relay",reason="nacked"}"#;
    let before = sink.metric(retried);
    let first = sink.publish("org.hark.sink.full.x", json!({"n": 1}));
    let second = sink.publish("org.hark.sink.full.x", json!({"n": 2}));
    sink.relay
        .stderr
        .wait_for("the broker refused (nacked) a message", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    poll_until(WAIT, || (sink.metric(retried) > before).then_some(()))
        .unwrap_or_else(|| panic!("{retried} counts the refusal"));
    // The relay keeps serving while its sink is refused.
    let third = sink.publish("org.hark.sink.full.x", json!({"n": 3}));
    // Each take makes room for one more; the sink's retries fill it again.
    let mut got: Vec<String> = Vec::new();
    poll_until(Duration::from_secs(60), || {
        for m in rabbitmq::take(&broker.url(), queue, 10).unwrap_or_else(|e| panic!("{e}")) {
            got.push(m.message_id.expect("a message id"));
        }
        (got.len() >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("all three arrive in the end: {got:?}"));
    assert_eq!(got, [first, second, third], "in order, each once");
    std::thread::sleep(Duration::from_millis(500));
    let more = rabbitmq::take(&broker.url(), queue, 10).unwrap_or_else(|e| panic!("{e}"));
    assert!(more.is_empty(), "nothing twice: {more:?}");
}

/// The broker stopped under a relay with `--amqp-out`: the relay acks every submission;
/// its sink keeps the first 1,000 (and the batch it was sending) and drops the rest with
/// one log line and `hark_amqp_out_dropped_total`; once the broker is back, the kept ones
/// arrive in order, once each, and the sink says how many were dropped.
fn a_broker_gone_fills_the_sink_then_drops_with_a_counter(
    broker: &mut Broker,
    sink: &mut SinkRelay,
) {
    let queue = "sink-outage";
    rabbitmq::declare(
        &broker.url(),
        queue,
        &[("amq.topic", "org.hark.sink.outage.#")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dropped_metric = r#"hark_amqp_out_dropped_total{sink="relay"}"#;
    assert_eq!(sink.metric(dropped_metric), 0.0);
    broker.stop();
    let total = hark::bus::amqp_out::CAPACITY + hark::bus::amqp_out::BATCH + 150;
    let ids: Vec<String> = (0..total)
        .map(|i| sink.publish("org.hark.sink.outage.x", json!({"i": i})))
        .collect();
    let dropped = sink.metric(dropped_metric) as usize;
    assert!(
        (150..=total - hark::bus::amqp_out::CAPACITY).contains(&dropped),
        "{dropped} of {total} dropped"
    );
    let warned = sink.logged("dropping new ones");
    assert_eq!(warned.len(), 1, "one line for the outage: {warned:?}");
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    let kept = total - dropped;
    let got = take_n(broker, queue, kept);
    let got: Vec<String> = got.into_iter().map(|m| m.message_id.expect("id")).collect();
    assert_eq!(
        got,
        ids[..kept],
        "the first {kept} arrive, in order, once each"
    );
    let back = sink
        .relay
        .stderr
        .wait_for("the broker takes messages again", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        back.contains(&format!("{dropped} were dropped meanwhile")),
        "{back}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let more = rabbitmq::take(&broker.url(), queue, 10).unwrap_or_else(|e| panic!("{e}"));
    assert!(more.is_empty(), "nothing twice: {more:?}");
    // The relay still serves, and its sink with it.
    let after = sink.publish("org.hark.sink.outage.x", json!({"after": true}));
    let got = take_n(broker, queue, 1);
    assert_eq!(got[0].message_id.as_deref(), Some(after.as_str()));
    let _ = &sink.dir;
}

/// `hark tail --amqp --json` and `hark record --amqp --out` watch Fedora-style traffic
/// (published by fedora-messaging) from server-named queues of their own, and `hark rules
/// test --events` on the recording fires the shipped Fedora mirror rules as the daemon
/// would.
fn tail_and_record_watch_a_broker_and_rules_test_reads_the_recording(broker: &Broker) {
    let dir = temp_dir();
    let recording = dir.path().join("fedora.jsonl");
    let watch = |cmd: &str| -> Proc {
        let mut c = hark_command();
        c.args([cmd, "--amqp", &broker.url(), "--amqp-name", "fedora"])
            .args(["--amqp-bind", "amq.topic=org.fedoraproject.prod.#"])
            .args(["--count", "4", "--timeout", "60s"])
            .arg("--config")
            .arg(write_file(dir.path(), "hark.yaml", ""));
        if cmd == "tail" {
            c.arg("--json");
        } else {
            c.arg("--out").arg(&recording);
        }
        let p = Proc::spawn(cmd, &mut c);
        p.stderr
            .wait_for("amqp broker fedora: consuming from queue", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        p
    };
    let mut tail = watch("tail");
    // The start-up line names the broker (without the password), the queue and bindings.
    let subscribing = poll_until(WAIT, || {
        tail.stderr
            .history()
            .into_iter()
            .find(|l| l.contains("subscribing to"))
    })
    .expect("tail says what it subscribes to");
    let shown_url = broker.url().replace("guest:guest", "guest:***");
    assert!(
        subscribing.contains(&format!(
            "subscribing to amqp broker fedora at {shown_url}, a server-named queue bound to amq.topic:org.fedoraproject.prod.#"
        )),
        "{subscribing}"
    );
    let mut record = watch("record");
    let data = common::repo_root().join("tests/data/amqp");
    let mut publish = common::peer_command("fm_publish.py");
    publish.arg(broker.url());
    for f in [
        "pungi-compose-status-change.json",
        "koji-build-state-change.json",
        "bodhi-compose-complete.json",
        "bodhi-update-complete-stable.json",
    ] {
        publish.arg(data.join(f));
    }
    let published: BTreeMap<String, String> = common::run_ok("fm_publish", &mut publish, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 3).then(|| (f[2].to_string(), f[1].to_string()))
        })
        .collect();
    assert_eq!(published.len(), 4, "{published:?}");

    let shown: Vec<Value> = tail
        .stdout
        .take(4, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    tail.wait_success(WAIT).expect("tail exits 0 after --count");
    let seen: BTreeMap<String, String> = shown
        .iter()
        .map(|e| {
            assert_eq!(e["broker"], "fedora", "{e}");
            assert!(e["headers"]["sent-at"].is_string(), "{e}");
            (
                e["topic"].as_str().expect("topic").to_string(),
                e["uuid"].as_str().expect("uuid").to_string(),
            )
        })
        .collect();
    assert_eq!(seen, published, "tail shows each message, its id as uuid");
    let bodhi = shown
        .iter()
        .find(|e| e["topic"] == "org.fedoraproject.prod.bodhi.update.complete.stable")
        .expect("the bodhi update");
    assert_eq!(
        bodhi["headers"]["fedora_messaging_schema"],
        "bodhi.update.complete.stable.v1"
    );
    assert_eq!(bodhi["data"]["update"]["status"], "stable");

    record
        .wait_success(WAIT)
        .expect("record exits 0 after --count");
    let text = std::fs::read_to_string(&recording).expect("the recording");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        !text.contains("guest:guest"),
        "the recording does not keep the password: {text}"
    );

    let mut test = hark_command();
    test.args(["rules", "test"])
        .arg(common::repo_root().join("rules.d/55-fedora-mirror.yaml"))
        .arg("--events")
        .arg(&recording)
        .arg("--json");
    let reports: Vec<Value> = common::run_ok("rules test", &mut test, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let fired: BTreeMap<String, Vec<String>> = reports
        .iter()
        .map(|r| {
            let rules = r["fires"]
                .as_array()
                .expect("fires")
                .iter()
                .map(|f| f["rule"].as_str().expect("rule").to_string())
                .collect();
            assert_eq!(
                published.get(r["topic"].as_str().expect("topic")),
                r["uuid"].as_str().map(str::to_string).as_ref(),
                "{r}"
            );
            (r["topic"].as_str().expect("topic").to_string(), rules)
        })
        .collect();
    let p = "org.fedoraproject.prod.";
    let expected: BTreeMap<String, Vec<String>> = [
        ("pungi.compose.status.change", vec!["fedora-rawhide-sync"]),
        ("buildsys.build.state.change", vec![]),
        ("bodhi.compose.complete", vec!["fedora-updates-sync"]),
        ("bodhi.update.complete.stable", vec![]),
    ]
    .into_iter()
    .map(|(t, r)| (format!("{p}{t}"), r.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(fired, expected, "{reports:?}");
}

/// The sinks: a trigger with `amqp.results_exchange` publishes its `_hark.job.*` results,
/// and `hark relay --amqp-out` every event it admits, to amq.topic in fedora-messaging's
/// format; fedora-messaging's own consumer (api.consume) reads both from one queue.
fn fedora_messaging_receives_results_and_relayed_events(broker: &Broker) {
    let queue = "fm-sink";
    rabbitmq::declare(
        &broker.url(),
        queue,
        &[
            ("amq.topic", "_hark.job.succeeded"),
            ("amq.topic", "org.hark.relayed.#"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let s = Scenario::new("results", "");
    write_file(
        s.dir.path(),
        "hark.yaml",
        "amqp:\n  results_exchange: amq.topic\n",
    );
    let _trigger = s.trigger(&broker.url(), &s.path("state.db"));
    let id = "4e500000-0000-4000-8000-000000000001";
    rabbitmq::publish(&broker.url(), &[s.message(id, json!({"n": 1}))])
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_runs(&[id]);

    let keys = s.path("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    common::keypair(&keys, "archive");
    let submit = common::free_endpoint();
    let mut relay = hark_command();
    relay
        .args([
            "relay",
            "--submit",
            &submit,
            "--publish",
            &common::free_endpoint(),
        ])
        .args(["--no-journal", "--name", "test-relay", "--trusted"])
        .arg(&keys)
        .args(["--grant", "archive=org.hark.relayed.**"])
        .args(["--amqp-out", &broker.url()])
        .arg("--config")
        .arg(write_file(s.dir.path(), "relay.yaml", ""));
    let relay = spawn_ready("relay", &mut relay, "relay ready");
    relay
        .stderr
        .wait_for("amqp relay sink: publishing to exchange", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut publish = hark_command();
    publish
        .args(["publish", "--no-spool", "--relay", &submit, "--key"])
        .arg(keys.join("archive.key_secret"))
        .args(["org.hark.relayed.x", "--data", r#"{"repo": "master"}"#]);
    let relayed = common::run_ok("publish", &mut publish, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let relayed = relayed
        .last()
        .expect("publish prints the uuid")
        .trim()
        .to_string();

    let mut consume = common::peer_command("fm_consume.py");
    consume.args([&broker.url(), queue, "2"]);
    let lines: Vec<Value> = common::run_ok("fm_consume", &mut consume, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let result = lines
        .iter()
        .find(|m| m["topic"] == "_hark.job.succeeded")
        .unwrap_or_else(|| panic!("a result: {lines:?}"));
    assert_eq!(result["body"]["rule"], "results", "{result}");
    assert_eq!(result["body"]["events"], json!([id]), "{result}");
    assert_eq!(result["body"]["exit_code"], 0, "{result}");
    assert_eq!(result["headers"]["fedora_messaging_schema"], "base.message");
    assert_eq!(result["headers"]["hark-rule"], "results");
    assert!(result["headers"]["sent-at"].is_string(), "{result}");
    assert_eq!(result["severity"], 20);
    let event = lines
        .iter()
        .find(|m| m["topic"] == "org.hark.relayed.x")
        .unwrap_or_else(|| panic!("the relayed event: {lines:?}"));
    assert_eq!(event["id"], relayed.as_str(), "its uuid is the message id");
    assert_eq!(event["body"], json!({"repo": "master"}));
    assert_eq!(event["headers"]["hark-relay"], "test-relay");
    assert_eq!(event["headers"]["hark-format"], "laniakea");
    assert!(event["headers"]["sent-at"].is_string(), "{event}");
}

/// amqps with the CA and a client certificate made at test time (the broker verifies the
/// peer and requires a certificate): messages run. Trusting another CA, or giving no
/// client certificate, fails with a log line that names the cause, and keeps retrying.
fn tls_with_a_client_certificate_works_and_a_wrong_ca_is_named(
    broker: &Broker,
    certs: &rabbitmq::Certs,
) {
    let s = Scenario::new("tls", "");
    let tls_url = broker.tls_url().expect("the broker has an amqps listener");
    let flags = |ca: &Path, client: bool| -> Vec<std::ffi::OsString> {
        let mut f: Vec<std::ffi::OsString> = vec!["--amqp-ca".into(), ca.into()];
        if client {
            f.extend([
                "--amqp-cert".into(),
                certs.client_cert.clone().into(),
                "--amqp-key".into(),
                certs.client_key.clone().into(),
            ]);
        }
        f
    };

    // The first failed attempts' log lines, until one names `cause`. With TLS 1.3 a client
    // learns of a refusal after its side of the handshake: from the broker's alert, or now
    // and then only from the reset that follows it; one of the first attempts (0.2 s
    // backoff, doubling) gets the alert.
    let attempts = |extra: &[std::ffi::OsString], cause: &str| -> Vec<String> {
        let mut bad = s.spawn_trigger(&tls_url, &s.path("bad.db"), extra);
        let mut lines = Vec::new();
        while lines.len() < 6 {
            let line = bad
                .stderr
                .wait_for("cannot connect to amqps://", WAIT)
                .unwrap_or_else(|e| panic!("{e}"));
            let named = line.contains(cause);
            lines.push(line);
            if named {
                break;
            }
        }
        bad.terminate(WAIT).expect("stops on SIGTERM");
        lines
    };
    let lines = attempts(&flags(&certs.other_ca, true), "UnknownIssuer");
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("UnknownIssuer") && last.contains("not signed by a CA in amqp.ca"),
        "a wrong CA is named as the cause: {lines:#?}"
    );
    assert!(last.contains("connecting again in"), "{last}");

    let lines = attempts(&flags(&certs.ca, false), "CertificateRequired");
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("CertificateRequired") && last.contains("set amqp.cert and amqp.key"),
        "a missing client certificate is named as the cause: {lines:#?}"
    );

    let good = flags(&certs.ca, true);
    let trigger = s.spawn_trigger(&tls_url, &s.path("state.db"), &good);
    trigger
        .stderr
        .wait_for("amqp broker test: consuming from queue", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let id = "71500000-0000-4000-8000-000000000001";
    rabbitmq::publish(&broker.url(), &[s.message(id, json!({"over": "tls"}))])
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_runs(&[id]);
    assert_eq!(
        std::fs::read_to_string(s.path(&format!("out/{id}.body"))).expect("stdin"),
        r#"{"over":"tls"}"#
    );
}

/// Messages are published one after another (each confirmed by the broker) while the
/// broker is stopped by PID and started again on the same ports and node directory, then
/// its queue is deleted under the running trigger. The trigger reconnects with backoff,
/// declares its queue and bindings again, and every message runs exactly once: those
/// filed before the stop are not run again when the broker redelivers them (their ack
/// may have been lost), since the store files a (rule, message_id) once.
fn a_broker_restart_mid_stream_loses_nothing_and_runs_nothing_twice(broker: &mut Broker) {
    let s = Scenario::new("restart", "");
    let trigger = s.trigger(&broker.url(), &s.path("state.db"));
    let (ids, messages) = s.messages("ae500000", 60);
    let url = broker.url();
    // The publisher retries a message until the broker confirms it, as fedora-messaging's
    // does; a confirm lost in the stop may make it send one twice (same message_id).
    let publisher = std::thread::spawn(move || {
        for m in messages {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while let Err(e) = rabbitmq::publish(&url, std::slice::from_ref(&m)) {
                assert!(std::time::Instant::now() < deadline, "publishing: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    poll_until(WAIT, || (s.runs().len() >= 10).then_some(()))
        .unwrap_or_else(|| panic!("ten ran before the restart: {:?}", s.runs()));
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    let before = s.runs().len();
    assert!(
        before < ids.len(),
        "the restart is mid-stream ({before} ran)"
    );
    trigger
        .stderr
        .wait_for("connecting again in", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // Backoff tops out at 10 s; the broker may take 20 s to boot.
    trigger
        .stderr
        .wait_for(
            "amqp broker test: consuming from queue",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    publisher
        .join()
        .expect("the publisher got every message confirmed");
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    let runs = s.wait_runs(&all);
    poll_until(WAIT, || {
        broker
            .queue_depth("hark-restart")
            .ok()
            .filter(|d| *d == (0, 0))
    })
    .unwrap_or_else(|| panic!("all acked: {:?}", broker.queue_depth("hark-restart")));
    assert_eq!(runs.len(), ids.len(), "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "each ran once: {runs:?}");

    // The queue deleted under the trigger: the broker cancels its consumer, the trigger
    // declares the queue and binds it again, and new messages reach it.
    broker
        .ctl(&["delete_queue", "hark-restart"])
        .unwrap_or_else(|e| panic!("{e}"));
    trigger
        .stderr
        .wait_for("amqp broker test: consuming from queue", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let id = "ae500000-0000-4000-8000-000000000100";
    rabbitmq::publish(&broker.url(), &[s.message(id, json!({}))]).unwrap_or_else(|e| panic!("{e}"));
    s.wait_runs(&[id]);
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
    let (ids, messages) = s.messages("d0000000", 5);
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
    // Its end recorded too: a job whose end cannot be recorded runs again after a crash
    // (the at-least-once that is allowed), which is not what this scenario is about.
    poll_until(WAIT, || {
        let db = rusqlite::Connection::open(&state).ok()?;
        let done: i64 = db
            .query_row("SELECT count(*) FROM done", [], |r| r.get(0))
            .ok()?;
        (done >= 1).then_some(())
    })
    .expect("the first job's success is in the store");
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
