//! Relays found through DNS SRV records, served by a real dnsmasq on a random loopback port
//! with a zone each test writes (TTL 1 s). Publishers and the trigger follow the records:
//! when they change, both move to the new relay without a restart, and every event runs
//! its rule exactly once.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::time::Duration;

use common::{
    free_endpoint, free_port, hark_command, poll_until, run_ok, spawn_ready, temp_dir, write_file,
    Proc, TempDir,
};
use hark::discovery::{Resolver, Service};

const DOMAIN: &str = "hark.test";
const WAIT: Duration = Duration::from_secs(60);

const RULES: &str = r#"
rules:
  - name: record
    match: {topic: _lk.test.discovery}
    run:
      command: [/bin/sh, -c, 'echo "$HARK_UUID" >> "$LOG"']
      env: {LOG: "@DIR@/ran.log"}
      stdin: none
"#;

fn dnsmasq() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A port number from a `tcp://127.0.0.1:PORT` endpoint.
fn port(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint}"))
}

/// One SRV record: service, relay host, port, priority, weight.
type Srv = (Service, &'static str, u16, u16, u16);

/// dnsmasq answering for [`DOMAIN`] only, restarted on the same port for a new zone.
struct Dns {
    dir: PathBuf,
    addr: SocketAddr,
    proc: Option<Proc>,
}

impl Dns {
    /// A port for the server; it starts with the first zone served.
    fn new(dir: &Path) -> Dns {
        Dns {
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            proc: None,
        }
    }

    /// Replace the zone: stop the server by PID, start it again with the new records, and
    /// wait (bounded) until it answers with them.
    fn serve(&mut self, zone: &[Srv]) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let mut conf = format!(
            "port={}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             keep-in-foreground\npid-file=\nlocal-ttl=1\nlocal=/{DOMAIN}/\n",
            self.addr.port()
        );
        for host in ["relay-a", "relay-b"] {
            conf.push_str(&format!("host-record={host}.{DOMAIN},127.0.0.1\n"));
        }
        for (service, host, port, priority, weight) in zone {
            conf.push_str(&format!(
                "srv-host={}.{DOMAIN},{host}.{DOMAIN},{port},{priority},{weight}\n",
                service.label()
            ));
        }
        let path = write_file(&self.dir, "dnsmasq.conf", &conf);
        let binary = dnsmasq().expect("checked by the caller");
        let proc = Proc::spawn(
            "dnsmasq",
            Command::new(binary).arg(format!("--conf-file={}", path.display())),
        );
        self.proc = Some(proc);
        let resolver = Resolver::new(&[self.addr]).expect("a resolver");
        let mut want: Vec<String> = zone
            .iter()
            .filter(|r| r.0 == Service::Submit)
            .map(|r| format!("tcp://127.0.0.1:{}", r.2))
            .collect();
        want.sort();
        let answered = poll_until(Duration::from_secs(20), || {
            resolver.forget();
            let mut got: Vec<String> = resolver
                .lookup(DOMAIN, Service::Submit)
                .ok()?
                .records
                .into_iter()
                .map(|r| r.endpoint)
                .collect();
            got.sort();
            (got == want).then_some(())
        });
        assert!(answered.is_some(), "dnsmasq never answered with {want:?}");
    }
}

struct Relay {
    submit: String,
    publish: String,
    replay: String,
    proc: Option<Proc>,
}

impl Relay {
    fn records(&self, host: &'static str, priority: u16) -> Vec<Srv> {
        vec![
            (Service::Submit, host, port(&self.submit), priority, 10),
            (Service::Publish, host, port(&self.publish), priority, 10),
            (Service::Replay, host, port(&self.replay), priority, 10),
        ]
    }
}

struct Site {
    dir: TempDir,
    keys: common::TestKeys,
    dns: Dns,
    relays: Vec<Relay>,
    /// hark.yaml pointing discovery at the test's nameserver.
    config: PathBuf,
}

impl Site {
    /// Two relays and a nameserver, none of them running yet.
    fn new() -> Option<Site> {
        if dnsmasq().is_none() {
            eprintln!("SKIPPED: dnsmasq is not installed (Debian package dnsmasq-base)");
            return None;
        }
        let dir = temp_dir();
        let keys = common::test_keys(dir.path());
        let d = dir.path().display().to_string();
        write_file(
            &dir.path().join("rules.d"),
            "50-test.yaml",
            &RULES.replace("@DIR@", &d),
        );
        let dns = Dns::new(dir.path());
        let config = write_file(
            dir.path(),
            "hark.yaml",
            &format!("discovery:\n  nameservers: [\"{}\"]\n", dns.addr),
        );
        let relays = (0..2)
            .map(|_| Relay {
                submit: free_endpoint(),
                publish: free_endpoint(),
                replay: free_endpoint(),
                proc: None,
            })
            .collect();
        Some(Site {
            dir,
            keys,
            dns,
            relays,
            config,
        })
    }

    fn start_relay(&mut self, i: usize) {
        let r = &self.relays[i];
        let journal = self.dir.path().join(format!("journal-{i}.db"));
        let proc = spawn_ready(
            &format!("relay{i}"),
            hark_command()
                .args(["relay", "--submit", &r.submit, "--publish", &r.publish])
                .args(["--replay", &r.replay, "--grant", "archive=**"])
                .args(["--name", &format!("relay{i}")])
                .arg("--journal")
                .arg(journal)
                .arg("--key")
                .arg(&self.keys.relay_secret)
                .arg("--trusted")
                .arg(&self.keys.trusted),
            "relay ready",
        );
        self.relays[i].proc = Some(proc);
    }

    fn start_trigger(&self) -> Proc {
        spawn_ready(
            "trigger",
            hark_command()
                .args(["trigger", "--srv", DOMAIN, "--grant", "archive=**"])
                .arg("--config")
                .arg(&self.config)
                .arg("--rules")
                .arg(self.dir.path().join("rules.d"))
                .arg("--state")
                .arg(self.dir.path().join("state.db"))
                .arg("--trusted")
                .arg(&self.keys.trusted),
            "trigger ready",
        )
    }

    fn publish_command(&self) -> Command {
        let mut cmd = hark_command();
        cmd.args(["publish", "--srv", DOMAIN, "--timeout", "3s", "--no-spool"])
            .arg("--config")
            .arg(&self.config)
            .arg("--key")
            .arg(self.keys.trusted.join("archive.key_secret"));
        cmd
    }

    fn ran(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let text = std::fs::read_to_string(self.dir.path().join("ran.log")).unwrap_or_default();
        for line in text.lines() {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// Wait until every uuid ran; panic naming the ones that did not.
    fn wait_ran(&self, uuids: &[String]) -> HashMap<String, usize> {
        poll_until(WAIT, || {
            let ran = self.ran();
            uuids.iter().all(|u| ran.contains_key(u)).then_some(ran)
        })
        .unwrap_or_else(|| {
            let ran = self.ran();
            let missing: Vec<&String> = uuids.iter().filter(|u| !ran.contains_key(*u)).collect();
            panic!(
                "{} of {} events never ran: {missing:?}",
                missing.len(),
                uuids.len()
            )
        })
    }
}

/// A long-running `hark publish --json-lines`: one event per line written, its uuid read
/// back from stdout.
struct Publisher {
    proc: Proc,
    stdin: ChildStdin,
    n: usize,
}

impl Publisher {
    fn publish(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                self.n += 1;
                writeln!(self.stdin, "{{\"n\": {}}}", self.n).expect("write to the publisher");
                self.stdin.flush().expect("flush the publisher's stdin");
                self.proc
                    .stdout
                    .next_line(Duration::from_secs(30))
                    .unwrap_or_else(|| panic!("event {} was not published", self.n))
            })
            .collect()
    }
}

/// A relay moves as an admin would move it: the new relay joins the old one in DNS, the
/// submit records then name only the new one (publishers move), and last the old one
/// leaves the publish records too (subscribers leave it once nothing is published there).
#[test]
fn publishers_and_the_trigger_follow_the_srv_records_to_a_new_relay() {
    let Some(mut site) = Site::new() else { return };
    let (a, trigger, mut publisher) = site.start_on_relay_a();
    let (a_submit, a_publish) = (
        site.relays[0].submit.clone(),
        site.relays[0].publish.clone(),
    );

    let mut all = publisher.publish(5);
    site.wait_ran(&all);
    publisher
        .proc
        .stderr
        .wait_for(&format!("published by {a_submit}"), WAIT)
        .expect("the publisher used relay a");

    // Relay b comes up and joins relay a in every record.
    site.start_relay(1);
    let b = site.relays[1].records("relay-b", 10);
    let both: Vec<Srv> = a.iter().chain(&b).copied().collect();
    site.dns.serve(&both);
    let (b_submit, b_publish) = (
        site.relays[1].submit.clone(),
        site.relays[1].publish.clone(),
    );
    trigger
        .stderr
        .wait_for(&format!("added={b_publish}"), WAIT)
        .expect("the trigger subscribed to relay b");
    all.extend(publisher.publish(5));

    // Only relay b takes submissions: the publisher (running all along) moves within a TTL.
    let moving: Vec<Srv> = both
        .iter()
        .filter(|r| r.0 != Service::Submit || r.1 == "relay-b")
        .copied()
        .collect();
    site.dns.serve(&moving);
    let moved = (0..30).any(|_| {
        all.extend(publisher.publish(1));
        publisher
            .proc
            .stderr
            .wait_for(&format!("published by {b_submit}"), Duration::from_secs(2))
            .is_ok()
    });
    assert!(moved, "the publisher never moved to relay b");

    // Relay a leaves DNS and stops.
    site.dns.serve(&b);
    trigger
        .stderr
        .wait_for(&format!("removed={a_publish}"), WAIT)
        .expect("the trigger left relay a");
    if let Some(mut p) = site.relays[0].proc.take() {
        p.kill();
    }
    all.extend(publisher.publish(5));

    let ran = site.wait_ran(&all);
    let twice: Vec<&String> = all.iter().filter(|u| ran[*u] != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
}

impl Site {
    /// Relay a alone in DNS, a trigger and a long-running publisher following the records.
    fn start_on_relay_a(&mut self) -> (Vec<Srv>, Proc, Publisher) {
        self.start_relay(0);
        let a = self.relays[0].records("relay-a", 10);
        self.dns.serve(&a);
        let trigger = self.start_trigger();
        let (proc, stdin) = Publisher::spawn(self);
        (a, trigger, Publisher { proc, stdin, n: 0 })
    }
}

impl Publisher {
    fn spawn(site: &Site) -> (Proc, ChildStdin) {
        Proc::spawn_with_stdin(
            "publisher",
            site.publish_command()
                .args(["--json-lines", "_lk.test.discovery"])
                .env("HARK_LOG", "info"),
        )
    }
}

#[test]
fn a_publisher_tries_the_next_priority_when_the_best_relay_is_down() {
    let Some(mut site) = Site::new() else { return };
    site.start_relay(0);
    site.start_relay(1);
    let zone: Vec<Srv> = site.relays[0]
        .records("relay-a", 10)
        .into_iter()
        .chain(site.relays[1].records("relay-b", 20))
        .collect();
    site.dns.serve(&zone);
    let publish_once = |site: &Site| {
        let mut cmd = site.publish_command();
        cmd.args(["_lk.test.discovery", "--data", "{}"])
            .env("HARK_LOG", "info");
        let mut proc = Proc::spawn("publish", &mut cmd);
        proc.wait_success(WAIT).expect("published");
        proc.stderr.history().join("\n")
    };
    let (a, b) = (site.relays[0].submit.clone(), site.relays[1].submit.clone());
    let log = publish_once(&site);
    assert!(log.contains(&format!("published by {a}")), "{log}");
    assert!(
        !log.contains(&format!("published by {b}")),
        "priority 20 was used too: {log}"
    );

    if let Some(mut p) = site.relays[0].proc.take() {
        p.kill();
    }
    let log = publish_once(&site);
    assert!(log.contains(&format!("published by {b}")), "{log}");
}

#[test]
fn a_domain_that_is_not_one_is_refused_before_anything_is_looked_up() {
    let out = hark_command()
        .args([
            "publish",
            "--srv",
            "tcp://relay:5571",
            "_lk.test.x",
            "--data",
            "{}",
        ])
        .output()
        .expect("run hark publish");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a domain name"), "{err}");
}

/// `hark tail --srv` and `hark record --srv` find the relay in DNS as the trigger does.
#[test]
fn tail_and_record_find_the_relay_through_srv_records() {
    let Some(mut site) = Site::new() else { return };
    site.start_relay(0);
    site.dns.serve(&site.relays[0].records("relay-a", 10));
    let watch = |what: &str, extra: &[&str]| {
        let mut cmd = hark_command();
        cmd.args([what, "--srv", DOMAIN, "--count", "2", "--timeout", "60s"])
            .args(["--topic", "_lk.test.**"])
            .args(extra)
            .arg("--config")
            .arg(&site.config)
            .arg("--trusted")
            .arg(&site.keys.trusted);
        Proc::spawn(what, &mut cmd)
    };
    let recording = site.dir.path().join("recorded.jsonl");
    let mut tail = watch("tail", &["--json"]);
    let mut record = watch("record", &["--out", &recording.display().to_string()]);
    // Both subscribe asynchronously: publish until both have their two events.
    let mut published = Vec::new();
    let done = poll_until(WAIT, || {
        let mut cmd = site.publish_command();
        cmd.args(["_lk.test.discovery", "--data", "{}"]);
        if let Ok(out) = run_ok("publish", &mut cmd, WAIT) {
            published.extend(out);
        }
        (tail.try_status().is_some() && record.try_status().is_some()).then_some(())
    });
    assert!(
        done.is_some(),
        "tail or record never got two events through DNS"
    );
    tail.wait_success(WAIT).expect("tail reached --count");
    record.wait_success(WAIT).expect("record reached --count");
    let shown = tail.stdout.history().join("\n");
    let recorded = std::fs::read_to_string(&recording).unwrap_or_default();
    assert_eq!(recorded.lines().count(), 2, "{recorded}");
    for text in [&shown, &recorded] {
        let uuids = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| published.iter().any(|p| v.to_string().contains(p.as_str())))
            .count();
        assert_eq!(uuids, 2, "not the events published ({published:?}): {text}");
    }
}

/// A relay that joins DNS later is caught up from when the trigger began listening: the
/// events it took before the trigger knew of it run too, once each.
#[test]
fn a_relay_learned_of_later_is_caught_up_on_what_it_took_before() {
    let Some(mut site) = Site::new() else { return };
    let (a, trigger, mut publisher) = site.start_on_relay_a();
    let mut all = publisher.publish(3);
    site.wait_ran(&all);

    // Relay b takes events while no record names it yet.
    site.start_relay(1);
    let b_submit = site.relays[1].submit.clone();
    for n in 0..4 {
        let mut cmd = hark_command();
        cmd.args([
            "publish",
            "--relay",
            &b_submit,
            "--timeout",
            "10s",
            "--no-spool",
        ])
        .arg("--key")
        .arg(site.keys.trusted.join("archive.key_secret"))
        .args([
            "_lk.test.discovery",
            "--data",
            &format!("{{\"early\": {n}}}"),
        ]);
        all.extend(run_ok("publish to b", &mut cmd, WAIT).expect("relay b took it"));
    }

    // Now DNS names b for subscribers (publish and replay records) as well.
    let b: Vec<Srv> = site.relays[1]
        .records("relay-b", 10)
        .into_iter()
        .filter(|r| r.0 != Service::Submit)
        .collect();
    site.dns
        .serve(&a.iter().chain(&b).copied().collect::<Vec<Srv>>());
    trigger
        .stderr
        .wait_for(&format!("added={}", site.relays[1].publish), WAIT)
        .expect("the trigger subscribed to relay b");
    all.extend(publisher.publish(2));

    let ran = site.wait_ran(&all);
    let twice: Vec<&String> = all.iter().filter(|u| ran[*u] != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    trigger
        .stderr
        .wait_for("is new here: fetching what it received since", WAIT)
        .expect("the catch-up is logged");
}
