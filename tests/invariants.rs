//! The daemon's delivery guarantees under generated trouble: proptest makes short sequences
//! of publishes (jobs that finish, jobs that overrun their timeout), rule reloads (a new
//! version of the rules file, or a broken one, then SIGHUP), SIGKILLs of the trigger (with
//! events published while it is down) and SIGKILLs of the relay, run against a real
//! `hark relay` (with its journal) and `hark trigger` on 127.0.0.1 (tests/common/bus.rs).
//! Then it checks what docs/architecture.md promises ("Delivery", "Containment", rules):
//!
//! - every acked event's job ran: nothing acked is lost, across relay and trigger kills;
//! - the store files one job per (rule, event), never two;
//! - a command starts again for the same event only in a later life of the trigger, after
//!   a kill ("jobs that were `running` are `pending` again and run once more"): each start
//!   of the trigger runs an event's job at most once, so with no kill exactly once;
//! - no job outlives its timeout: a job that overruns is recorded `timed_out` within
//!   `timeout + grace` (+ slack for the loaded machine), and no process it started is left,
//!   even of the runs a trigger kill cut short;
//! - a broken rules file keeps the last good version (its events still run), and every run
//!   used a version that was written; after the last reload, new events use the new one.
//!
//! Bounded: few cases (PROPTEST_CASES), each a handful of steps; every wait has a deadline.
//! The seed is printed first (tests/prop_support); a failure is not shrunk (each case is
//! seconds of real processes) but saved to proptest-regressions/invariants.txt.

mod common;
mod prop_support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::bus::{read_lines, Bus, WAIT};
use common::{hark_command, poll_until, run_ok, write_file};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

/// The rule's timeout and grace, in ms; a long job sleeps far beyond them.
const TIMEOUT_MS: i64 = 2000;
const GRACE_MS: i64 = 1000;
/// How late the store may record a timed-out job on this loaded 2-core machine.
const SLACK_MS: i64 = 1500;

/// The rule, version `gen`: the command logs its start (uuid, its pid, its sleep's pid,
/// the version, which life of the trigger ran it: `INV_TRIGGER`, inherited), naps for `data.nap` seconds, and logs its end. (`$$` is a template's `$`.)
fn rules(dir: &Path, gen: u32) -> String {
    format!(
        r#"
rules:
  - name: inv
    match: {{topic: _lk.test.delivery}}
    vars:
      nap: {{from: data.nap, pattern: '^[0-9]+(\.[0-9]+)?$', default: "0"}}
    run:
      command: [/bin/sh, -c, 'sleep "$1" & echo "start $HARK_UUID $$$$ $! $GEN $INV_TRIGGER" >> "$LOG"; wait $!; echo "end $HARK_UUID $GEN" >> "$LOG"', inv, "${{nap}}"]
      env: {{LOG: "{}/ran.log", GEN: "{gen}"}}
      stdin: none
      timeout: {TIMEOUT_MS}ms
      grace: {GRACE_MS}ms
    concurrency: {{limit: 32}}
"#,
        dir.display()
    )
}

const BROKEN: &str = "rules:\n  - name: inv\n    match: {topic: [\n";

#[derive(Debug, Clone)]
enum Step {
    /// One event; a long one overruns the timeout.
    Publish { long: bool },
    /// Rewrite the rules file (a new version, or a broken file) and SIGHUP.
    Reload { valid: bool },
    /// SIGKILL the trigger, publish this many events while it is down, start it again.
    KillTrigger { while_down: u8 },
    /// SIGKILL the relay and start it again on the same journal.
    KillRelay,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // About one publish in four overruns: enough to overlap kills, few enough that
        // the timeouts do not dominate the run time.
        5 => prop::bool::weighted(0.25).prop_map(|long| Step::Publish { long }),
        2 => any::<bool>().prop_map(|valid| Step::Reload { valid }),
        2 => (0u8..3).prop_map(|while_down| Step::KillTrigger { while_down }),
        2 => Just(Step::KillRelay),
    ]
}

/// One line of ran.log.
#[derive(Debug)]
enum Line {
    Start {
        uuid: String,
        pids: [i32; 2],
        gen: u32,
        /// Which start of the trigger ran it.
        life: u32,
    },
    End {
        uuid: String,
    },
}

fn parse_log(dir: &Path) -> Vec<Line> {
    read_lines(&dir.join("ran.log"))
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let num = |i: usize| -> i64 {
                w.get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("ran.log: {l:?}"))
            };
            match w[0] {
                "start" => Line::Start {
                    uuid: w[1].to_string(),
                    pids: [num(2) as i32, num(3) as i32],
                    gen: num(4) as u32,
                    life: num(5) as u32,
                },
                "end" => Line::End {
                    uuid: w[1].to_string(),
                },
                _ => panic!("ran.log: {l:?}"),
            }
        })
        .collect()
}

struct Run {
    bus: Bus,
    /// Acked uuids and whether the job overruns.
    acked: Vec<(String, bool)>,
    /// Versions of the rules file written (valid ones), and whether the file is broken now.
    gens: Vec<u32>,
    broken: bool,
    /// How many times the trigger was started.
    life: u32,
}

impl Run {
    /// Start the trigger, its next life.
    fn start_trigger(&mut self) {
        self.life += 1;
        self.bus.trigger_env = vec![("INV_TRIGGER".into(), self.life.to_string())];
        self.bus.start_trigger();
    }

    fn publish(&mut self, long: bool) {
        let nap = if long { "30" } else { "0.1" };
        if let Some(uuid) =
            common::bus::publish_to(&self.bus.targets(), &self.bus.key, json!({ "nap": nap }))
        {
            self.acked.push((uuid, long));
        }
    }

    /// Until the trigger has stored an event of the relay, "when it last stored an event"
    /// (what a restarted trigger catches up from) is not defined by the scenario: the
    /// guarantees are checked from then on. Those first events are not counted.
    fn warm_up(&self) {
        let started = poll_until(WAIT, || {
            let uuid =
                common::bus::publish_to(&self.bus.targets(), &self.bus.key, json!({"nap": "0"}))?;
            poll_until(Duration::from_secs(5), || {
                parse_log(self.bus.dir.path())
                    .iter()
                    .any(|l| matches!(l, Line::End { uuid: u } if *u == uuid))
                    .then_some(())
            })
        });
        assert!(started.is_some(), "the trigger runs no event");
    }

    fn write_rules(&mut self, valid: bool) {
        let path = self.bus.rules_file();
        let text = if valid {
            let gen = self.gens.last().copied().unwrap_or(0) + 1;
            self.gens.push(gen);
            rules(self.bus.dir.path(), gen)
        } else {
            BROKEN.to_string()
        };
        // Written whole and renamed, as an admin's editor or config management would.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("rules");
        std::fs::rename(&tmp, &path).expect("rules");
        self.broken = !valid;
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Step::Publish { long } => self.publish(long),
            Step::Reload { valid } => {
                self.write_rules(valid);
                self.bus.sighup_trigger();
            }
            Step::KillTrigger { while_down } => {
                // A daemon does not start on a broken file it never loaded: the admin's
                // next version comes first.
                if self.broken {
                    self.write_rules(true);
                }
                self.bus.kill_trigger();
                for _ in 0..while_down {
                    self.publish(false);
                }
                self.start_trigger();
            }
            Step::KillRelay => {
                self.bus.kill_relay(0);
                self.bus.start_relay(0);
            }
        }
    }
}

/// The jobs in the store, once none is pending or running.
fn settled_jobs(state: &Path) -> Vec<Value> {
    let list = || {
        let mut cmd = hark_command();
        cmd.args(["jobs", "list", "--json", "--limit", "100000", "--state"])
            .arg(state);
        run_ok("hark jobs", &mut cmd, WAIT)
            .expect("hark jobs list")
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("a job as JSON"))
            .collect::<Vec<_>>()
    };
    poll_until(WAIT, || {
        let jobs = list();
        jobs.iter()
            .all(|j| j["state"] != "pending" && j["state"] != "running")
            .then_some(jobs)
    })
    .unwrap_or_else(|| panic!("jobs still live after {WAIT:?}: {:?}", list()))
}

fn alive(pid: i32) -> bool {
    // Ours only if it is still a `sleep 30` or the rule's shell (pids get reused).
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("INV_TRIGGER") || c == "sleep\u{0}30\u{0}"
        })
        .unwrap_or(false)
}

fn check(run: &mut Run) {
    let dir = run.bus.dir.path().to_path_buf();
    // The last version must be loaded for the last check: write one if the file is broken.
    if run.broken || run.gens.len() > 1 {
        run.write_rules(true);
        run.bus.sighup_trigger();
    }
    let last_gen = *run.gens.last().expect("a version");

    // Every acked event's job ran (started; a short one also ended).
    let pending = |log: &[Line]| -> Vec<String> {
        run.acked
            .iter()
            .filter(|(u, long)| {
                !log.iter().any(|l| match l {
                    Line::Start { uuid, .. } if *long => uuid == u,
                    Line::End { uuid } => uuid == u,
                    _ => false,
                })
            })
            .map(|(u, _)| u.clone())
            .collect()
    };
    let waited = poll_until(WAIT, || pending(&parse_log(&dir)).is_empty().then_some(()));
    assert!(
        waited.is_some(),
        "acked events whose job never ran: {:?}",
        pending(&parse_log(&dir))
    );

    // After the last reload (SIGHUP), new events run with the last version.
    let probe = poll_until(Duration::from_secs(30), || {
        run.publish(false);
        let (uuid, _) = run.acked.last().cloned()?;
        let found = poll_until(Duration::from_secs(10), || {
            parse_log(&dir).into_iter().find_map(|l| match l {
                Line::Start { uuid: u, gen, .. } if u == uuid => Some(gen),
                _ => None,
            })
        });
        (found == Some(last_gen)).then_some(())
    });
    assert!(
        probe.is_some(),
        "events after the last reload do not run version {last_gen}"
    );

    let jobs = settled_jobs(&dir.join("state.db"));
    let log = parse_log(&dir);
    let long: HashMap<&str, bool> = run.acked.iter().map(|(u, l)| (u.as_str(), *l)).collect();

    // One job per (rule, event) in the store.
    let mut filed: HashMap<String, Vec<&Value>> = HashMap::new();
    for job in &jobs {
        for e in job["events"].as_array().into_iter().flatten() {
            let uuid = e["uuid"].as_str().unwrap_or_default().to_string();
            filed.entry(uuid).or_default().push(job);
        }
    }
    for (uuid, is_long) in &run.acked {
        let js = filed.get(uuid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(js.len(), 1, "event {uuid} is in {} jobs: {js:?}", js.len());
        let job = js[0];
        if *is_long {
            assert_eq!(job["state"], "timed_out", "{job}");
            let took =
                job["finished"].as_i64().unwrap_or(i64::MAX) - job["started"].as_i64().unwrap_or(0);
            assert!(
                took <= TIMEOUT_MS + GRACE_MS + SLACK_MS,
                "job {} ran {took} ms with a {TIMEOUT_MS} ms timeout and {GRACE_MS} ms grace",
                job["id"]
            );
        } else {
            assert_eq!(job["state"], "succeeded", "{job}");
        }
    }

    // A second start of the same event only in a later life of the trigger (after a kill):
    // each life starts an event's job at most once.
    let mut lives: HashMap<&str, Vec<u32>> = HashMap::new();
    let valid: BTreeSet<u32> = run.gens.iter().copied().collect();
    for line in &log {
        match line {
            Line::Start {
                uuid, gen, life, ..
            } => {
                assert!(
                    valid.contains(gen),
                    "{uuid} ran version {gen}: never written"
                );
                let seen = lives.entry(uuid).or_default();
                assert!(
                    seen.iter().all(|l| l < life),
                    "{uuid} started in trigger life {life} after starting in {seen:?}: run twice without a kill"
                );
                seen.push(*life);
            }
            Line::End { uuid } => {
                assert!(
                    !long.get(uuid.as_str()).copied().unwrap_or(false),
                    "{uuid} outlived its timeout: it ended by itself"
                );
            }
        }
    }

    // No process of any run is left, including runs a trigger kill cut short.
    let deadline =
        Instant::now() + Duration::from_millis((TIMEOUT_MS + GRACE_MS + SLACK_MS) as u64);
    for line in &log {
        if let Line::Start { uuid, pids, .. } = line {
            for pid in pids {
                let gone = poll_until(deadline.saturating_duration_since(Instant::now()), || {
                    (!alive(*pid)).then_some(())
                });
                assert!(
                    gone.is_some(),
                    "pid {pid} of {uuid}'s job outlives it: {} {:?}; ran.log:\n{}",
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default(),
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).into_owned())
                        .unwrap_or_default(),
                    read_lines(&dir.join("ran.log")).join("\n")
                );
            }
        }
    }
}

/// `cases` scenarios; failures saved to proptest-regressions/`name`.txt.
fn property(name: &'static str, cases: u32) {
    let mut config = prop_support::config(name, cases);
    // Each case is seconds of real processes: report the failing case, do not shrink it.
    config.max_shrink_iters = 0;
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(&prop::collection::vec(step(), 3..8), |steps| {
        eprintln!("scenario: {steps:?}");
        let mut bus = Bus::new(1);
        // Heartbeats often, so an event lost on the way after a relay restart is missed
        // for a moment only.
        let relay_yaml = write_file(bus.dir.path(), "relay.yaml", "relay:\n  heartbeat: 300ms\n");
        bus.kill_relay(0);
        bus.relays[0].extra = vec!["--config".into(), relay_yaml.display().to_string()];
        bus.start_relay(0);
        let mut run = Run {
            bus,
            acked: Vec::new(),
            gens: Vec::new(),
            broken: false,
            life: 0,
        };
        run.write_rules(true);
        run.start_trigger();
        run.warm_up();
        for s in &steps {
            run.step(s);
        }
        check(&mut run);
        eprintln!(
            "case passed: {} events acked, {:.1} s so far",
            run.acked.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn acked_events_run_once_or_again_only_after_a_kill_and_no_job_outlives_its_timeout() {
    property("invariants", 8);
}
