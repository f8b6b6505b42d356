//! History page time against journal size (`harness = false`):
//! `cargo bench --bench history_page`.
//!
//! Builds journals of 10^4, 10^5 and 10^6 events (five topics in turn, one second apart,
//! signed by `archive` or `buildd`, 500 bytes of JSON each, appended 10,000 per
//! transaction) and times one page of 25 for each kind of query `hark history` and the
//! HTTP API answer, on a fresh read-only connection as a query gets. Prints the median of
//! `HARK_BENCH_RUNS` (21) runs per cell as Markdown. A flat row is the point: every plan
//! walks indexes from a cursor, never the journal. Nothing here asserts a speed.
//! `HARK_BENCH_SIZES` (comma-separated, default `10000,100000,1000000`) picks the sizes.

use std::time::{Duration, Instant};

use hark::history::{self, Query};
use hark::journal::{Journal, NewEntry, Retention};
use hark::rules::compile::parse_condition;
use hark::topic::TopicPattern;

const TOPICS: &[&str] = &[
    "_lk.archive.package-upload",
    "_lk.archive.package-removed",
    "_lk.jobs.job-finished",
    "_lk.rebuild.requested",
    "org.debian.dev.salsa.push",
];
const BASE_MS: i64 = 1_700_000_000_000;

fn event(i: u64) -> (String, Vec<Vec<u8>>, String) {
    let topic = TOPICS[(i % TOPICS.len() as u64) as usize];
    let signer = if i.is_multiple_of(10) {
        "buildd"
    } else {
        "archive"
    };
    let uuid = format!("00000000-0000-4000-8000-{i:012}");
    let pad = "x".repeat(300);
    let json = format!(
        "{{\"data\":{{\"n\":{i},\"pkg\":\"p{}\",\"suite\":\"{}\",\"pad\":\"{pad}\"}},\"format\":\"1.0\",\
         \"signatures\":{{\"{signer}\":{{\"ed25519:0\":\"sig\"}},\"relay\":{{\"ed25519:0\":\"sig\"}}}},\
         \"tag\":\"{topic}\",\"time\":\"2024-01-01T00:00:00\",\"uuid\":\"{uuid}\"}}",
        i % 1000,
        if i.is_multiple_of(3) { "unstable" } else { "bookworm" },
    );
    (
        topic.to_string(),
        vec![topic.as_bytes().to_vec(), json.into_bytes()],
        uuid,
    )
}

fn build(path: &std::path::Path, n: u64) {
    let keep = Retention {
        max_age: Duration::MAX,
        max_bytes: u64::MAX,
    };
    let mut j = Journal::open(path, keep).expect("open journal");
    let mut i = 0;
    while i < n {
        let batch: Vec<(String, Vec<Vec<u8>>, String)> =
            (i..(i + 10_000).min(n)).map(event).collect();
        let entries: Vec<NewEntry<'_>> = batch
            .iter()
            .zip(i..)
            .map(|((topic, frames, uuid), k)| NewEntry {
                frames,
                topic,
                uuid,
                received_ms: BASE_MS + k as i64 * 1000,
            })
            .collect();
        j.append_batch(&entries).expect("append");
        i += batch.len() as u64;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("HARK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let sizes: Vec<u64> = std::env::var("HARK_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pattern = |s: &str| TopicPattern::parse(s).expect("pattern");
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        let started = Instant::now();
        build(&path, n);
        eprintln!("built {n} events in {:.1?}", started.elapsed());
        let last_hour = BASE_MS + n as i64 * 1000 - 3_600_000;
        let cases: Vec<(&str, Query, Option<&str>)> = vec![
            (
                "newest 25, no filter",
                Query {
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            ("oldest 25, no filter", Query::default(), None),
            (
                "literal topic",
                Query {
                    topics: vec![pattern("_lk.jobs.job-finished")],
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            (
                "topic glob `_lk.archive.*`",
                Query {
                    topics: vec![pattern("_lk.archive.*")],
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            (
                "glob `**.push`",
                Query {
                    topics: vec![pattern("**.push")],
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            (
                "last hour (--since 1h)",
                Query {
                    from_ms: Some(last_hour),
                    ..Query::default()
                },
                None,
            ),
            (
                "signer `buildd` (1 in 10)",
                Query {
                    signers: vec!["buildd".into()],
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            (
                "where `{data.suite: unstable}`",
                Query {
                    condition: Some(
                        parse_condition("where", "{data.suite: unstable}").expect("cond"),
                    ),
                    descending: true,
                    ..Query::default()
                },
                None,
            ),
            (
                "page 2 000 deep (cursor)",
                Query {
                    descending: true,
                    ..Query::default()
                },
                Some("deep"),
            ),
            ("by uuid (/id)", Query::default(), Some("uuid")),
        ];
        for (ci, (name, query, special)) in cases.iter().enumerate() {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let j = Journal::open_read_only(&path).expect("reader");
                let got = match special {
                    Some("uuid") => history::by_uuid(&j, &event(n / 2).2).expect("uuid").len(),
                    Some(_) => history::page(&j, query, Some(n / 2), 25)
                        .expect("page")
                        .events
                        .len(),
                    None => history::page(&j, query, None, 25)
                        .expect("page")
                        .events
                        .len(),
                };
                times.push(t.elapsed());
                assert!(got > 0, "{name}: nothing found");
            }
            if rows.len() <= ci {
                rows.push((name.to_string(), Vec::new()));
            }
            rows[ci].1.push(median(times));
        }
    }
    print!("| query (one page of 25, fresh connection) |");
    for n in &sizes {
        print!(" {n} events |");
    }
    println!();
    print!("|---|");
    for _ in &sizes {
        print!("---:|");
    }
    println!();
    for (name, times) in rows {
        print!("| {name} |");
        for t in times {
            print!(" {:.2} ms |", t.as_secs_f64() * 1000.0);
        }
        println!();
    }
}
