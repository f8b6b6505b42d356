//! A bus for the delivery and invariant tests: relays with journals and replay sockets,
//! one trigger connected to all of them, publishing with acks, and the log of what the
//! rule's command ran (one uuid a line, by default). Real processes on loopback, random
//! ports, one temp dir; every wait bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    free_endpoint, hark_command, poll_until, spawn_ready, temp_dir, write_file, Proc, TempDir,
};
use hark::bus::publish::{build_event, submit_all, Target};
use hark::config::ZmqConfig;
use hark::event::keys::SigningKey;
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(60);

pub const RULES: &str = r#"
rules:
  - name: record
    match: {topic: _lk.test.delivery}
    run:
      command: [/bin/sh, -c, 'echo "$HARK_UUID" >> "$LOG"']
      env: {LOG: "@DIR@/ran.log"}
      stdin: none
"#;

/// One relay's endpoints and journal; the process when it runs.
pub struct Relay {
    pub name: String,
    pub submit: String,
    pub publish: String,
    pub replay: String,
    pub journal: PathBuf,
    pub extra: Vec<String>,
    pub proc: Option<Proc>,
}

pub struct Bus {
    pub dir: TempDir,
    pub trusted: PathBuf,
    pub relay_key: PathBuf,
    pub key: SigningKey,
    pub relays: Vec<Relay>,
    /// The trigger's hark.yaml.
    pub trigger_yaml: String,
    /// Extra environment of the trigger (its jobs inherit it).
    pub trigger_env: Vec<(String, String)>,
    pub trigger: Option<Proc>,
}

impl Bus {
    pub fn new(relays: usize) -> Bus {
        let dir = temp_dir();
        let keys = super::test_keys(dir.path());
        let d = dir.path().display().to_string();
        write_file(
            &dir.path().join("rules.d"),
            "50-test.yaml",
            &RULES.replace("@DIR@", &d),
        );
        let relays = (0..relays)
            .map(|i| Relay {
                name: format!("r{i}"),
                submit: free_endpoint(),
                publish: free_endpoint(),
                replay: free_endpoint(),
                journal: dir.path().join(format!("journal-{i}.db")),
                extra: Vec::new(),
                proc: None,
            })
            .collect();
        let mut bus = Bus {
            dir,
            trusted: keys.trusted,
            relay_key: keys.relay_secret,
            key: keys.archive,
            relays,
            trigger_yaml: String::new(),
            trigger_env: Vec::new(),
            trigger: None,
        };
        for i in 0..bus.relays.len() {
            bus.start_relay(i);
        }
        bus
    }

    pub fn start_relay(&mut self, i: usize) {
        let r = &self.relays[i];
        let proc = spawn_ready(
            &r.name,
            hark_command()
                .args(["relay", "--submit", &r.submit, "--publish", &r.publish])
                .args([
                    "--replay",
                    &r.replay,
                    "--grant",
                    "archive=**",
                    "--name",
                    &r.name,
                ])
                .arg("--journal")
                .arg(&r.journal)
                .arg("--key")
                .arg(&self.relay_key)
                .arg("--trusted")
                .arg(&self.trusted)
                .args(&r.extra),
            "relay ready",
        );
        self.relays[i].proc = Some(proc);
    }

    pub fn kill_relay(&mut self, i: usize) {
        if let Some(mut p) = self.relays[i].proc.take() {
            p.kill();
        }
    }

    pub fn start_trigger(&mut self) {
        let mut cmd = hark_command();
        cmd.args(["trigger", "--grant", "archive=**"]);
        for r in &self.relays {
            cmd.args(["--connect", &r.publish, "--replay", &r.replay]);
        }
        cmd.arg("--rules")
            .arg(self.dir.path().join("rules.d"))
            .arg("--state")
            .arg(self.dir.path().join("state.db"))
            .arg("--trusted")
            .arg(&self.trusted)
            .arg("--config")
            .arg(write_file(self.dir.path(), "hark.yaml", &self.trigger_yaml))
            .envs(self.trigger_env.iter().map(|(k, v)| (k, v)));
        self.trigger = Some(spawn_ready("trigger", &mut cmd, "trigger ready"));
    }

    /// The rules file the trigger loads (RULES until a test rewrites it).
    pub fn rules_file(&self) -> PathBuf {
        self.dir.path().join("rules.d/50-test.yaml")
    }

    /// SIGHUP to the trigger: reload the rules now.
    pub fn sighup_trigger(&self) {
        if let Some(t) = &self.trigger {
            let pid = nix::unistd::Pid::from_raw(t.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        }
    }

    pub fn kill_trigger(&mut self) {
        if let Some(mut t) = self.trigger.take() {
            t.kill();
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        self.relays
            .iter()
            .map(|r| Target::Acking {
                submit: r.submit.clone(),
            })
            .collect()
    }

    /// Publish one event to every relay; its uuid if at least one acked.
    pub fn publish(&self, n: usize) -> Option<String> {
        publish_to(&self.targets(), &self.key, json!({"n": n}))
    }

    pub fn ran(&self) -> Vec<String> {
        read_lines(&self.dir.path().join("ran.log"))
    }

    /// Wait until every uuid in `expected` ran; return how often each ran.
    pub fn wait_all_ran(&self, expected: &[String]) -> HashMap<String, usize> {
        let done = poll_until(WAIT, || {
            let counts = counts(&self.ran());
            expected
                .iter()
                .all(|u| counts.contains_key(u))
                .then_some(counts)
        });
        done.unwrap_or_else(|| {
            let counts = counts(&self.ran());
            let missing: Vec<&String> = expected
                .iter()
                .filter(|u| !counts.contains_key(*u))
                .collect();
            panic!(
                "{} of {} events never ran, e.g. {:?}",
                missing.len(),
                expected.len(),
                &missing[..missing.len().min(5)]
            )
        })
    }
}

/// Publish one `_lk.test.delivery` event with `data` to every target; its uuid if at least
/// one acked.
pub fn publish_to(targets: &[Target], key: &SigningKey, data: Value) -> Option<String> {
    let event = build_event("_lk.test.delivery", data, key, None, None).ok()?;
    let uuid = event["uuid"].as_str()?.to_string();
    submit_all(
        targets,
        &event,
        Duration::from_secs(15),
        &ZmqConfig::default(),
    )
    .into_iter()
    .any(|(_, r)| r.is_ok())
    .then_some(uuid)
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn counts(lines: &[String]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for l in lines {
        *c.entry(l.clone()).or_insert(0) += 1;
    }
    c
}
