//! Pages against a brute-force filter over every row, in both orders and across pages.

use super::*;
use crate::journal::Retention;
use crate::rules::compile::parse_condition;
use std::time::Duration;

const TOPICS: &[&str] = &[
    "_lk.archive.package-upload",
    "_lk.archive.package-removed",
    "_lk.jobs.job-finished",
    "org.debian.dev.salsa.push",
    "_lk.archive.x.y",
];

fn event_json(topic: &str, i: u64, signer: &str) -> String {
    format!(
        "{{\"data\":{{\"n\":{i},\"suite\":\"{}\",\"pkg\":\"p{}\"}},\"format\":\"1.0\",\
         \"signatures\":{{\"{signer}\":{{\"ed25519:0\":\"x\"}},\"relay\":{{\"ed25519:0\":\"y\"}}}},\
         \"tag\":\"{topic}\",\"time\":\"2024-01-01T00:00:00\",\"uuid\":\"u-{i}\"}}",
        if i.is_multiple_of(3) {
            "unstable"
        } else {
            "bookworm"
        },
        i % 7
    )
}

/// `n` events over the topics in turn, received 1 s apart, signed by alice or bob.
fn journal(n: u64) -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(1 << 40),
            max_bytes: u64::MAX,
        },
    )
    .expect("open");
    for i in 0..n {
        let topic = TOPICS[(i % TOPICS.len() as u64) as usize];
        let signer = if i.is_multiple_of(4) { "bob" } else { "alice" };
        let frames = vec![
            topic.as_bytes().to_vec(),
            event_json(topic, i, signer).into_bytes(),
        ];
        j.append(
            &frames,
            topic,
            &format!("u-{i}"),
            1_000_000 + i as i64 * 1000,
        )
        .expect("append");
    }
    (dir, j)
}

fn all_pages(j: &Journal, q: &Query, limit: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = page(j, q, after, limit).expect("page");
        assert!(page.events.len() <= limit);
        seqs.extend(page.events.iter().map(|f| f.entry.seq));
        match page.next {
            None => return seqs,
            Some(n) => after = Some(n),
        }
    }
    panic!("pagination did not end");
}

fn brute(j: &Journal, q: &Query) -> Vec<u64> {
    let mut seqs: Vec<u64> = j
        .range(1, 1_000_000)
        .expect("range")
        .into_iter()
        .filter(|e| {
            let ev = parse_entry(e).expect("parse");
            q.from_ms.is_none_or(|f| e.received_ms >= f)
                && q.to_ms.is_none_or(|t| e.received_ms <= t)
                && q.admits(e, &ev)
        })
        .map(|e| e.seq)
        .collect();
    if q.descending {
        seqs.reverse();
    }
    seqs
}

fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).expect("pattern")
}

#[test]
fn every_filter_pages_to_exactly_the_brute_force_answer() {
    let (_dir, j) = journal(700);
    let queries = vec![
        Query::default(),
        Query {
            topics: vec![pat("_lk.archive.package-upload")],
            ..Query::default()
        },
        Query {
            topics: vec![pat("_lk.archive.*"), pat("org.debian.**")],
            ..Query::default()
        },
        Query {
            topics: vec![pat("**.push")],
            from_ms: Some(1_100_000),
            to_ms: Some(1_500_000),
            ..Query::default()
        },
        Query {
            signers: vec!["bob".into()],
            ..Query::default()
        },
        Query {
            contains: vec!["\"pkg\":\"p3\"".into()],
            topics: vec![pat("_lk.**")],
            ..Query::default()
        },
        Query {
            condition: Some(
                parse_condition("where", "{data.suite: unstable, data.n: {gt: 300}}")
                    .expect("condition"),
            ),
            ..Query::default()
        },
        Query {
            topics: vec![pat("nothing.here")],
            ..Query::default()
        },
        Query {
            from_ms: Some(9_000_000),
            ..Query::default()
        },
    ];
    for q in queries {
        for descending in [false, true] {
            let q = Query {
                descending,
                ..q.clone()
            };
            let want = brute(&j, &q);
            for limit in [1, 7, 100, 1000] {
                assert_eq!(all_pages(&j, &q, limit), want, "{q:?} limit {limit}");
            }
        }
    }
}

#[test]
fn a_page_is_bounded_and_its_cursor_resumes() {
    let (_dir, j) = journal(SCAN_BUDGET as u64 * 2 + 10);
    // A signer nobody has: no page walks more than the budget (plus one batch).
    let q = Query {
        signers: vec!["nobody".into()],
        ..Query::default()
    };
    let first = page(&j, &q, None, 10).expect("page");
    assert!(first.events.is_empty());
    assert!(first.examined <= SCAN_BUDGET + BATCH, "{}", first.examined);
    assert!(first.next.is_some(), "a short page says where to go on");
    assert!(all_pages(&j, &q, 10).is_empty());
}

#[test]
fn signers_and_uuid_lookup() {
    let (_dir, j) = journal(20);
    let found = by_uuid(&j, "u-4").expect("uuid");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].entry.seq, 5);
    assert_eq!(
        found[0].event.signers,
        vec!["bob".to_string(), "relay".to_string()]
    );
    assert!(by_uuid(&j, "u-404").expect("uuid").is_empty());
}
