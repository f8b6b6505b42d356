//! Events per second matched against 10, 1,000 and 10,000 rules.
//!
//! Rules mix literal, `*` and `**` topics over many projects
//! (`org.projP.svcS.done`, `org.projP.*.done`, `org.projP.svcS.**`), ten rules per
//! project, each with one predicate on the event data. Events are spread over those
//! topics, so each one has a handful of candidate rules whatever the total, which is
//! what the topic index is for. Matching here is the full decision: topic, signers and
//! predicate, as `RuleSet::matching_into` does it for the daemon.
//!
//! `topic_normal` times `TopicPattern::matches` alone (grants, `hark tail --topic`, rule
//! explanations) on the patterns rule files are made of. `topic_worst` is the pattern that
//! used to freeze a daemon: K `**` each followed by a literal, against a topic of N
//! segments it never matches (every position of the pattern stays alive to the end), so
//! the time per match should grow with K × N and no faster.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hark::event::Event;
use hark::rules::compile::parse_str;
use hark::rules::RuleSet;
use hark::topic::TopicPattern;
use serde_json::json;

const RULES_PER_PROJECT: usize = 10;
const EVENTS: usize = 1_000;

fn rules_yaml(n: usize) -> String {
    let mut y = String::from("rules:\n");
    for i in 0..n {
        let p = i / RULES_PER_PROJECT;
        let s = i % 4;
        let topic = match i % 3 {
            0 => format!("org.proj{p}.svc{s}.done"),
            1 => format!("org.proj{p}.*.done"),
            _ => format!("org.proj{p}.svc{s}.**"),
        };
        let predicate = match i % 4 {
            0 => format!("data.n: {{gt: {}}}", i % 50),
            1 => "data.kind: {in: [build, test]}".to_string(),
            2 => "data.repo: master".to_string(),
            _ => "data.version: {dpkg_ge: '1.0-1'}".to_string(),
        };
        y.push_str(&format!(
            "  - name: r{i}\n    match:\n      topic: \"{topic}\"\n      where: {{{predicate}}}\n    run: {{command: [/bin/true]}}\n"
        ));
    }
    y
}

fn rule_set(n: usize) -> RuleSet {
    let file = parse_str(Path::new("bench.yaml"), &rules_yaml(n)).expect("bench rules compile");
    let (set, refused) = RuleSet::build(&[file]);
    assert!(refused.is_empty());
    set
}

fn events(n_rules: usize) -> Vec<Event> {
    let projects = n_rules.div_ceil(RULES_PER_PROJECT).max(1);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..EVENTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x % projects as u64) as usize;
            let s = (x >> 20) % 5;
            Event::from_value(json!({
                "tag": format!("org.proj{p}.svc{s}.done"),
                "uuid": "00000000-0000-0000-0000-000000000000",
                "format": "1.0",
                "time": "2024-01-01T00:00:00",
                "data": {"n": (x >> 32) % 100, "kind": "build", "repo": "master", "version": "1.2-3"}
            }))
            .expect("bench event")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules_match");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for n in [10usize, 1_000, 10_000] {
        let set = rule_set(n);
        let evs = events(n);
        let mut out = Vec::with_capacity(64);
        let fired: usize = evs
            .iter()
            .map(|e| {
                set.matching_into(e, &mut out);
                out.len()
            })
            .sum();
        println!(
            "{n} rules: {:.2} rules fire per event on average",
            fired as f64 / EVENTS as f64
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &evs, |b, evs| {
            b.iter(|| {
                let mut total = 0;
                for e in evs {
                    set.matching_into(black_box(e), &mut out);
                    total += out.len();
                }
                black_box(total)
            })
        });
    }
    group.finish();
}

/// Patterns of the kinds rule files hold, each against every bench event's topic.
fn topic_normal(c: &mut Criterion) {
    let patterns: Vec<TopicPattern> = [
        "org.proj3.svc1.done",
        "org.proj3.*.done",
        "org.proj3.svc1.**",
        "org.*.svc?.done",
        "org.{proj1,proj3}.**",
        "**.done",
        "org.**.svc1.**",
        "**",
    ]
    .iter()
    .map(|p| TopicPattern::parse(p).expect("bench pattern"))
    .collect();
    let topics: Vec<String> = events(100).into_iter().map(|e| e.topic).collect();
    let mut group = c.benchmark_group("topic_normal");
    group.throughput(Throughput::Elements((patterns.len() * topics.len()) as u64));
    group.bench_function("matches", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for p in &patterns {
                for t in &topics {
                    hits += usize::from(p.matches(black_box(t)));
                }
            }
            black_box(hits)
        })
    });
    group.finish();
}

fn topic_worst(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_worst");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(700));
    for stars in [8usize, 16, 31] {
        let pattern = TopicPattern::parse(&format!("{}y", "**.x.".repeat(stars)))
            .expect("worst-case pattern");
        for segments in [50usize, 100, 200] {
            let topic = vec!["x"; segments].join(".");
            group.bench_with_input(
                BenchmarkId::new(format!("{stars}x**"), segments),
                &topic,
                |b, t| b.iter(|| black_box(pattern.matches(black_box(t)))),
            );
        }
    }
    group.finish();
}

/// The same worst case through the daemon's path: one rule, the rule set's topic index.
fn rules_worst(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules_worst");
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(700));
    let sizes: Vec<usize> = std::env::var("HARK_BENCH_WORST_STARS")
        .ok()
        .and_then(|v| v.split(',').map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 16, 31]);
    for stars in sizes {
        let yaml = format!(
            "rules:\n  - name: worst\n    match: {{topic: \"{}y\"}}\n    run: {{command: [/bin/true]}}\n",
            "**.x.".repeat(stars)
        );
        let file = parse_str(Path::new("worst.yaml"), &yaml).expect("worst-case rule compiles");
        let (set, refused) = RuleSet::build(&[file]);
        assert!(refused.is_empty());
        for segments in [50usize, 100, 200] {
            let event = Event::from_value(json!({
                "tag": vec!["x"; segments].join("."),
                "uuid": "00000000-0000-0000-0000-000000000000",
                "format": "1.0",
                "time": "2024-01-01T00:00:00",
                "data": {}
            }))
            .expect("worst-case event");
            let mut out = Vec::new();
            group.bench_with_input(
                BenchmarkId::new(format!("{stars}x**"), segments),
                &event,
                |b, e| {
                    b.iter(|| {
                        set.matching_into(black_box(e), &mut out);
                        black_box(out.len())
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, topic_normal, topic_worst, rules_worst
}
criterion_main!(benches);
