//! Scheduler backlog benchmark (`harness = false`): `cargo bench --bench scheduler_backlog`.
//!
//! Drives the pure scheduler (no store, no processes) with 1,000 / 10,000 / 100,000 events
//! that all arrive before any job finishes, then runs the queue down: every start is
//! finished at once and the freed slot dispatched, until nothing is left. Two rules:
//! - `coalesce`: a coalescing rule (10 events per key), whose jobs then queue behind the
//!   rule's default limit of 1;
//! - `limit-1`: a plain rule with concurrency limit 1, so every event is a job in one queue.
//!
//! Events are filed in bursts of 512 with a dispatch after each, as the daemon does. The
//! table gives the median ns per event for filing and for running down; with indexed
//! dispatch both stay flat as the backlog grows (a rescan per dispatch would grow linearly).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) this is a smoke test: small
//! backlogs, one round, and a check that every job ran exactly once.
//!
//! Knobs (environment): `HARK_BENCH_RUNS` (5 rounds), `HARK_BENCH_MAX_BACKLOG` (100000).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hark::event::Event;
use hark::jobs::runner::{Finished, Outcome};
use hark::jobs::{Effect, Scheduler, SchedulerOptions};
use hark::rules::compile::parse_str;
use hark::rules::events::from_loose;
use hark::rules::RuleSet;
use serde_json::json;
use support::{env_num, median};

const BURST: usize = 512;
const EVENTS_PER_KEY: usize = 10;

const RULES: &str = "rules:
  - name: coalesce
    match: {topic: bench.coalesce}
    run: {command: [/bin/true, '${data.key}']}
    coalesce: {key: '${data.key}', quiet: 1s}
  - name: limit-1
    match: {topic: bench.limit}
    run: {command: [/bin/true, '${data.n}']}
    concurrency: {limit: 1}
";

fn rule_set() -> Arc<RuleSet> {
    let file = parse_str(Path::new("bench.yaml"), RULES).expect("bench rules compile");
    let (set, refused) = RuleSet::build(&[file]);
    assert!(refused.is_empty(), "bench rules refused");
    Arc::new(set)
}

fn events(topic: &str, n: usize) -> Vec<Arc<Event>> {
    let keys = (n / EVENTS_PER_KEY).max(1);
    (0..n)
        .map(|i| {
            Arc::new(
                from_loose(json!({
                    "tag": topic,
                    "uuid": format!("ev-{i}"),
                    "data": {"n": i, "key": format!("k{}", i % keys)},
                }))
                .expect("bench event"),
            )
        })
        .collect()
}

struct Round {
    /// Rendering the rule's keys for every event, nothing else: what merely reading a
    /// backlog of this size from memory costs, the floor under `file_ns`.
    touch_ns: f64,
    file_ns: f64,
    run_ns: f64,
    runs: usize,
}

fn round(rules: &Arc<RuleSet>, rule: &str, events: &[Arc<Event>]) -> Round {
    let mut sched = Scheduler::new(
        rules.clone(),
        SchedulerOptions {
            config_pools: BTreeMap::new(),
            log_limit: 1024,
            tail_limit: 1024,
        },
    );
    sched.add_ids(1..i64::try_from(events.len()).unwrap_or(i64::MAX) + 1);
    let rule = rules.rule(rule).cloned().expect("bench rule");
    let mut now = 0i64;
    let mut starts = Vec::new();

    let t = Instant::now();
    let mut keys = 0usize;
    for event in events {
        keys += rule
            .coalesce_key(event)
            .ok()
            .flatten()
            .map_or(0, |k| k.len());
        keys += rule
            .concurrency_key(event)
            .ok()
            .flatten()
            .map_or(0, |k| k.len());
    }
    std::hint::black_box(keys);
    let touch = t.elapsed();

    let t = Instant::now();
    for burst in events.chunks(BURST) {
        for event in burst {
            sched
                .on_match(now, &rule, event)
                .expect("enough ids reserved");
        }
        sched.dispatch(now);
        collect_starts(&mut sched, &mut starts);
        now += 1;
    }
    let file = t.elapsed();

    // Past every coalescing window: everything is due and waits only for its slot.
    now += 10_000;
    let t = Instant::now();
    let mut runs = 0;
    sched.dispatch(now);
    collect_starts(&mut sched, &mut starts);
    while let Some(id) = starts.pop() {
        runs += 1;
        sched.on_finished(now, id, finished(), 0);
        sched.dispatch(now);
        collect_starts(&mut sched, &mut starts);
    }
    let run = t.elapsed();
    assert_eq!(
        (sched.pending_count(), sched.running_count()),
        (0, 0),
        "the queue ran down"
    );
    let n = events.len() as f64;
    Round {
        touch_ns: touch.as_nanos() as f64 / n,
        file_ns: file.as_nanos() as f64 / n,
        run_ns: run.as_nanos() as f64 / n,
        runs,
    }
}

fn collect_starts(sched: &mut Scheduler, starts: &mut Vec<i64>) {
    for effect in sched.take_effects() {
        if let Effect::Start(l) = effect {
            starts.push(l.id);
        }
    }
}

fn finished() -> Finished {
    Finished {
        outcome: Outcome::Success,
        output_tail: String::new(),
        output_bytes: 0,
        duration: Duration::from_millis(1),
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let max = if smoke {
        10_000
    } else {
        env_num("HARK_BENCH_MAX_BACKLOG", 100_000).max(1_000)
    };
    let rounds = if smoke {
        1
    } else {
        env_num("HARK_BENCH_RUNS", 5).max(1)
    };
    let sizes: Vec<usize> = [1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&s| s <= max)
        .collect();
    let rules = rule_set();
    println!(
        "scheduler backlog: median of {rounds} round(s), bursts of {BURST}, ns per event{}",
        if smoke { " (smoke)" } else { "" }
    );
    println!(
        "{:<10} {:>9} {:>8} {:>13} {:>12} {:>14}",
        "rule", "backlog", "runs", "touch ns/ev", "file ns/ev", "run-down ns/ev"
    );
    for (rule, topic) in [("coalesce", "bench.coalesce"), ("limit-1", "bench.limit")] {
        for &n in &sizes {
            let evs = events(topic, n);
            let mut touch = Vec::new();
            let mut file = Vec::new();
            let mut run = Vec::new();
            let mut runs = 0;
            for _ in 0..rounds {
                let r = round(&rules, rule, &evs);
                touch.push(r.touch_ns);
                file.push(r.file_ns);
                run.push(r.run_ns);
                runs = r.runs;
            }
            let expected = if rule == "coalesce" {
                (n / EVENTS_PER_KEY).max(1)
            } else {
                n
            };
            assert_eq!(runs, expected, "{rule}: every job ran exactly once");
            println!(
                "{:<10} {:>9} {:>8} {:>13.0} {:>12.0} {:>14.0}",
                rule,
                n,
                runs,
                median(touch).unwrap_or(0.0),
                median(file).unwrap_or(0.0),
                median(run).unwrap_or(0.0)
            );
        }
    }
}
