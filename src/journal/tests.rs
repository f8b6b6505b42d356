use super::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn big_retention() -> Retention {
    Retention {
        max_age: Duration::from_secs(3650 * 24 * 3600),
        max_bytes: u64::MAX,
    }
}

fn frames(topic: &str, n: u64) -> Vec<Vec<u8>> {
    vec![
        topic.as_bytes().to_vec(),
        format!("{{\"n\":{n},\"topic\":\"{topic}\"}}").into_bytes(),
    ]
}

fn append_n(j: &mut Journal, topic: &str, n: u64, received_ms: i64) -> u64 {
    let mut first = 0;
    for i in 0..n {
        let seq = j
            .append(&frames(topic, i), topic, &format!("uuid-{i}"), received_ms)
            .expect("append");
        if i == 0 {
            first = seq;
        }
    }
    first
}

#[test]
fn a_new_journal_has_an_epoch_and_starts_at_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(&dir.path().join("j.sqlite"), big_retention()).expect("open");
    assert!(uuid::Uuid::parse_str(j.epoch()).is_ok(), "{}", j.epoch());
    assert_eq!(j.head_seq().expect("head"), 0);
    assert_eq!(j.first_seq().expect("first"), 1);
    assert_eq!(j.next_seq(), 1);
    assert!(j.range(1, 10).expect("range").is_empty());
}

#[test]
fn frames_come_back_byte_for_byte_in_seq_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(&dir.path().join("j.sqlite"), big_retention()).expect("open");
    let odd: Vec<Vec<u8>> = vec![
        b"org.example.x".to_vec(),
        vec![],
        vec![0, 255, 0xc3, 0x28, b'\n', 0],
        vec![7; 70_000],
    ];
    let s1 = j
        .append(&frames("a.b", 1), "a.b", "u1", 10)
        .expect("append");
    let s2 = j.append(&odd, "org.example.x", "u2", 11).expect("append");
    assert_eq!((s1, s2), (1, 2));
    let got = j.range(1, 10).expect("range");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].frames, frames("a.b", 1));
    assert_eq!(
        got[1],
        Entry {
            seq: 2,
            received_ms: 11,
            topic: "org.example.x".into(),
            uuid: "u2".into(),
            frames: odd,
        }
    );
    assert_eq!(j.range(2, 10).expect("range").len(), 1);
    assert_eq!(j.range(1, 1).expect("range")[0].seq, 1);
    assert!(j.range(3, 10).expect("range").is_empty());
}

#[test]
fn a_batch_takes_consecutive_seqs_in_one_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(&dir.path().join("j.sqlite"), big_retention()).expect("open");
    append_n(&mut j, "a", 3, 5);
    let burst: Vec<Vec<Vec<u8>>> = (0..5).map(|i| frames("b", i)).collect();
    let uuids: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    let entries: Vec<NewEntry> = burst
        .iter()
        .zip(&uuids)
        .map(|(f, u)| NewEntry {
            frames: f,
            topic: "b",
            uuid: u,
            received_ms: 6,
        })
        .collect();
    assert_eq!(j.next_seq(), 4);
    assert_eq!(j.append_batch(&entries).expect("batch"), 4);
    assert_eq!(j.head_seq().expect("head"), 8);
    let got = j.range(4, 100).expect("range");
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(got[4].uuid, "b4");
    assert_eq!(got[4].frames, frames("b", 4));
    assert_eq!(j.append_batch::<Vec<u8>>(&[]).expect("empty batch"), 9);
    assert_eq!(j.head_seq().expect("head"), 8);
}

#[test]
fn seqs_continue_across_reopen_and_a_new_file_is_a_new_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state/j.sqlite");
    let epoch = {
        let mut j = Journal::open(&path, big_retention()).expect("open");
        append_n(&mut j, "a", 4, 1);
        j.epoch().to_string()
    };
    let mut j = Journal::open(&path, big_retention()).expect("reopen");
    assert_eq!(j.epoch(), epoch);
    assert_eq!(j.head_seq().expect("head"), 4);
    assert_eq!(j.append(&frames("a", 9), "a", "u", 2).expect("append"), 5);
    drop(j);
    let other = Journal::open(&dir.path().join("other.sqlite"), big_retention()).expect("open");
    assert_ne!(other.epoch(), epoch);
    assert_eq!(other.next_seq(), 1);
}

#[test]
fn pruning_by_age_keeps_a_contiguous_tail_and_reports_the_first_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: u64::MAX,
        },
    )
    .expect("open");
    let now = 100 * DAY_MS;
    append_n(&mut j, "old", 3, now - 3 * DAY_MS);
    append_n(&mut j, "young", 2, now - 1000);
    // A row stamped old after a young one (a clock step) stays: only a prefix goes.
    append_n(&mut j, "stepped", 1, now - 5 * DAY_MS);
    let pruned = j.prune(now).expect("prune");
    assert_eq!(pruned.rows, 3);
    assert!(!pruned.more);
    assert_eq!(j.first_seq().expect("first"), 4);
    assert_eq!(j.head_seq().expect("head"), 6);
    assert_eq!(
        j.pruned_through_ms().expect("horizon"),
        Some(now - 3 * DAY_MS)
    );
    assert_eq!(
        j.range(1, 10)
            .expect("range")
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(j.prune(now).expect("prune again"), Pruned::default());
}

#[test]
fn pruning_by_size_drops_the_oldest_until_under_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(
        &path,
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 2500,
        },
    )
    .expect("open");
    let kib = vec![vec![b'x'; 1000]];
    for i in 0..5 {
        j.append(&kib, "t", &format!("u{i}"), 1000).expect("append");
    }
    assert_eq!(j.stored_bytes(), 5000);
    let pruned = j.prune(1000).expect("prune");
    assert_eq!((pruned.rows, pruned.bytes), (3, 3000));
    assert_eq!(j.stored_bytes(), 2000);
    assert_eq!(j.first_seq().expect("first"), 4);
    drop(j);
    let j = Journal::open(&path, Retention::default()).expect("reopen");
    assert_eq!(j.stored_bytes(), 2000);
}

#[test]
fn a_fully_pruned_journal_still_knows_its_head_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let retention = Retention {
        max_age: Duration::from_secs(1),
        max_bytes: u64::MAX,
    };
    let mut j = Journal::open(&path, retention).expect("open");
    append_n(&mut j, "a", 7, 0);
    assert_eq!(j.prune(DAY_MS).expect("prune").rows, 7);
    assert_eq!(j.first_seq().expect("first"), 8);
    drop(j);
    let mut j = Journal::open(&path, retention).expect("reopen");
    assert_eq!(j.head_seq().expect("head"), 7);
    assert_eq!(j.first_seq().expect("first"), 8);
    assert_eq!(
        j.append(&frames("a", 1), "a", "u", DAY_MS).expect("append"),
        8
    );
}

#[test]
fn pruning_is_bounded_per_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(1),
            max_bytes: u64::MAX,
        },
    )
    .expect("open");
    let f = frames("a", 0);
    let many: Vec<NewEntry> = (0..PRUNE_BATCH + 5)
        .map(|_| NewEntry {
            frames: &f,
            topic: "a",
            uuid: "u",
            received_ms: 0,
        })
        .collect();
    j.append_batch(&many).expect("batch");
    let first = j.prune(DAY_MS).expect("prune");
    assert_eq!(first.rows, PRUNE_BATCH as u64);
    assert!(first.more);
    let second = j.prune(DAY_MS).expect("prune");
    assert_eq!(second.rows, 5);
    assert!(!second.more);
}

#[test]
fn select_filters_by_topic_prefix_and_time_within_a_bounded_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(&dir.path().join("j.sqlite"), big_retention()).expect("open");
    for i in 0..20u64 {
        let topic = if i % 5 == 0 {
            "org.debian.dak.upload"
        } else {
            "org.other.thing"
        };
        j.append(&frames(topic, i), topic, &format!("u{i}"), 1000 + i as i64)
            .expect("append");
    }
    let wanted = Selection {
        from_seq: 1,
        topic_prefixes: vec!["org.debian.".into()],
        ..Selection::default()
    };
    let all = j.select(&wanted, 100, 100).expect("select");
    assert_eq!(
        all.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 6, 11, 16]
    );
    assert!(all.done);
    // A small scan window stops early and says where to go on.
    let part = j.select(&wanted, 100, 8).expect("select");
    assert_eq!(
        part.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 6]
    );
    assert_eq!(part.next_seq, 9);
    assert!(!part.done);
    // Several prefixes, one matching nothing; and an empty prefix is everything.
    let two = Selection {
        topic_prefixes: vec!["org.other.thing".into(), "net.".into()],
        ..wanted.clone()
    };
    assert_eq!(j.select(&two, 100, 100).expect("select").entries.len(), 16);
    let empty = Selection {
        topic_prefixes: vec![String::new()],
        ..wanted.clone()
    };
    assert_eq!(
        j.select(&empty, 100, 100).expect("select").entries.len(),
        20
    );
    // The limit stops at the last returned row.
    let limited = j.select(&wanted, 2, 100).expect("select");
    assert_eq!(limited.next_seq, 7);
    assert!(!limited.done);
    // Time range: rows received in 1005..=1009 are seqs 6..=10.
    let timed = j.time_range(1005, 1009, 100).expect("time range");
    assert_eq!(
        timed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    assert!(j
        .time_range(5000, 6000, 100)
        .expect("time range")
        .is_empty());
    assert_eq!(j.time_range(0, 5000, 3).expect("time range").len(), 3);
}

#[test]
fn a_reader_beside_the_writer_sees_new_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut writer = Journal::open(&path, big_retention()).expect("open");
    append_n(&mut writer, "a", 2, 1);
    let reader = Journal::open_read_only(&path).expect("reader");
    assert_eq!(reader.epoch(), writer.epoch());
    assert_eq!(reader.head_seq().expect("head"), 2);
    append_n(&mut writer, "a", 3, 2);
    assert_eq!(reader.head_seq().expect("head"), 5);
    assert_eq!(reader.range(1, 10).expect("range").len(), 5);
    let mut reader = reader;
    assert!(matches!(
        reader.append(&frames("a", 1), "a", "u", 1),
        Err(JournalError::ReadOnly)
    ));
}

#[test]
fn a_file_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    drop(Journal::open(&path, big_retention()).expect("open"));
    let conn = Connection::open(&path).expect("sqlite");
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'format'", [])
        .expect("update");
    drop(conn);
    let err = Journal::open(&path, big_retention()).expect_err("format 99");
    assert!(matches!(err, JournalError::NotAJournal(..)), "{err}");
}

/// SQLite's `max_page_count` stands in for a full disk: the write fails with the typed
/// error, nothing is counted or half-written, and appends work again once there is room.
#[test]
fn a_full_disk_refuses_appends_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 5_000,
        },
    )
    .expect("open");
    let event = vec![b"t".to_vec(), vec![b'x'; 1024]];
    for i in 0..10 {
        j.append(&event, "t", &format!("u{i}"), 1000)
            .expect("append");
    }
    let pages: i64 = j
        .connection()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("page_count");
    let cap: i64 = j
        .connection()
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })
        .expect("max_page_count");
    assert_eq!(cap, pages);
    let mut full = None;
    for i in 0..200 {
        match j.append(&event, "t", &format!("f{i}"), 1000) {
            Ok(_) => {}
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the capped file fills up");
    assert!(matches!(err, JournalError::Full), "{err:?}");
    assert_eq!(err.reason(), "journal-unavailable");
    let head = j.head_seq().expect("head");
    let bytes = j.stored_bytes();
    // Still full: the same answer, the same head, nothing written.
    assert!(matches!(
        j.append(&event, "t", "again", 1000),
        Err(JournalError::Full)
    ));
    assert_eq!(j.head_seq().expect("head"), head);
    assert_eq!(j.stored_bytes(), bytes);
    assert_eq!(j.range(1, 1000).expect("range").len() as u64, head);
    // Pruning frees pages inside the file, so appends go on without it growing.
    let pruned = j.prune(1000).expect("prune while full");
    assert!(pruned.rows > 0);
    assert_eq!(
        j.append(&event, "t", "after-prune", 1000).expect("append"),
        head + 1
    );
    // Or the disk gets room again.
    j.connection()
        .query_row("PRAGMA max_page_count = 1073741823", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("uncap");
    for i in 0..50 {
        j.append(&event, "t", &format!("r{i}"), 1000)
            .expect("append after room");
    }
    assert_eq!(j.head_seq().expect("head"), head + 51);
    let tail = j.range(head, 100).expect("range");
    assert_eq!(tail.first().map(|e| e.seq), Some(head));
    assert!(
        tail.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "seqs stay contiguous across the outage"
    );
}

/// The same on a real, tiny tmpfs, which needs root to mount; skipped otherwise.
#[test]
fn a_real_full_tmpfs_refuses_appends_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for the 20 first appends: each commit writes whole 16 KiB pages to the WAL.
    let mount = Mount::tmpfs(dir.path(), "4m");
    let Some(_mount) = mount else {
        println!("SKIPPED: cannot mount a tmpfs here (it needs root)");
        return;
    };
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, big_retention()).expect("open");
    let event = vec![b"t".to_vec(), vec![b'x'; 1024]];
    for i in 0..20 {
        j.append(&event, "t", &format!("u{i}"), 1000)
            .expect("append");
    }
    // Another file takes the rest of the disk, as logs or a build would.
    let filler = dir.path().join("filler");
    fill(&filler);
    let mut failed = None;
    for i in 0..5000 {
        if let Err(e) = j.append(&event, "t", &format!("f{i}"), 1000) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("a full tmpfs refuses appends");
    println!("full tmpfs: {err}");
    assert!(
        matches!(err, JournalError::Full | JournalError::Io(_)),
        "{err:?}"
    );
    assert_eq!(err.reason(), "journal-unavailable");
    let head = j.head_seq().expect("head");
    assert!(j.append(&event, "t", "still-full", 1000).is_err());
    assert_eq!(j.head_seq().expect("head"), head);
    std::fs::remove_file(&filler).expect("space returns");
    for i in 0..20 {
        j.append(&event, "t", &format!("r{i}"), 1000)
            .expect("appends work again once there is room");
    }
    let all = j.range(1, 10_000).expect("range");
    assert_eq!(all.len() as u64, head + 20);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    drop(j);
    let j = Journal::open(&path, big_retention()).expect("reopen after the outage");
    assert_eq!(j.head_seq().expect("head"), head + 20);
}

fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    // Whatever the page cache held is now refused too.
    let _ = f.sync_all();
}

pub(super) struct Mount(std::path::PathBuf);

impl Mount {
    pub(super) fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Append throughput at both durability levels, 1 KiB events: single appends against
/// batches of 100 and 512. `cargo test --release --lib journal::tests::append_throughput
/// -- --ignored --nocapture`
#[test]
#[ignore]
fn append_throughput() {
    let event = vec![b"org.example.bench".to_vec(), vec![b'x'; 1024]];
    for durability in [Durability::Full, Durability::Normal] {
        for batch in [1usize, 100, 512] {
            let dir = tempfile::tempdir_in(".").expect("tempdir on the real disk");
            let mut j =
                Journal::open_with(&dir.path().join("j.sqlite"), big_retention(), durability)
                    .expect("open");
            let total = if batch == 1 { 2_000 } else { 51_200 };
            let entries: Vec<NewEntry> = (0..batch)
                .map(|_| NewEntry {
                    frames: &event,
                    topic: "org.example.bench",
                    uuid: "0190c0de-0000-7000-8000-000000000000",
                    received_ms: 1,
                })
                .collect();
            let start = std::time::Instant::now();
            for _ in 0..total / batch {
                j.append_batch(&entries).expect("append");
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{durability:?} batch {batch:>3}: {total} events in {secs:.2} s = {:.0} events/s",
                total as f64 / secs
            );
        }
    }
}

#[test]
fn a_snapshot_does_not_see_a_prune_in_the_middle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut writer = Journal::open(
        &path,
        Retention {
            max_age: Duration::from_secs(1),
            max_bytes: u64::MAX,
        },
    )
    .expect("open");
    append_n(&mut writer, "a", 5, 0);
    let reader = Journal::open_read_only(&path).expect("reader");
    let seen = reader
        .snapshot(|r| {
            let first = r.first_seq()?;
            assert_eq!(writer.prune(DAY_MS)?.rows, 5);
            Ok::<_, JournalError>((first, r.range(first, 10)?.len()))
        })
        .expect("snapshot");
    assert_eq!(seen, (1, 5));
    assert_eq!(reader.first_seq().expect("first"), 6);
}

#[test]
fn a_second_writer_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let first = Journal::open(&path, big_retention()).expect("open");
    let err = Journal::open(&path, big_retention()).expect_err("second writer");
    assert!(matches!(err, JournalError::InUse(_)), "{err}");
    // Readers are fine beside the writer.
    assert!(Journal::open_read_only(&path).is_ok());
    drop(first);
    // The lock is an flock, shared with any child another test of this process forks
    // meanwhile (a job's supervisor holds it until it closes its fds): wait that out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reopened = loop {
        match Journal::open(&path, big_retention()) {
            Err(JournalError::InUse(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other,
        }
    };
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

#[test]
fn a_format_1_file_is_converted_by_its_writer_and_refused_by_a_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.sqlite");
    {
        let conn = Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE entries (seq INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL,
                 topic TEXT NOT NULL, uuid TEXT NOT NULL, bytes INTEGER NOT NULL,
                 frames BLOB NOT NULL);
             CREATE INDEX entries_received ON entries(received_ms);
             CREATE INDEX entries_topic ON entries(topic);
             INSERT INTO meta VALUES ('format', 1), ('epoch', 'old-epoch'),
                 ('created_ms', 0), ('pruned_seq', 4), ('pruned_ms', 50);",
        )
        .expect("format 1 schema");
        // Seqs 5..=7 (1..=4 were pruned); 7 was stamped before 6 (a clock step).
        for (seq, ms, topic) in [(5u64, 100i64, "a.x"), (6, 300, "b.y"), (7, 200, "a.x")] {
            let mut blob = Vec::new();
            let f = frames(topic, seq);
            encode_frames(&f, &mut blob);
            let bytes: usize = f.iter().map(Vec::len).sum();
            conn.execute(
                "INSERT INTO entries VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![seq as i64, ms, topic, format!("u{seq}"), bytes as i64, blob],
            )
            .expect("row");
        }
    }
    let err = Journal::open_read_only(&path).expect_err("a reader cannot convert");
    assert!(err.to_string().contains("format 1"), "{err}");
    let mut j = Journal::open(&path, big_retention()).expect("convert");
    assert_eq!(j.epoch(), "old-epoch");
    assert_eq!(
        (j.first_seq().expect("first"), j.head_seq().expect("head")),
        (5, 7)
    );
    let got = j.range(1, 10).expect("range");
    assert_eq!(
        got.iter()
            .map(|e| (e.seq, e.received_ms, e.topic.as_str(), e.uuid.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (5, 100, "a.x", "u5"),
            (6, 300, "b.y", "u6"),
            (7, 300, "a.x", "u7")
        ]
    );
    assert_eq!(got[0].frames, frames("a.x", 5));
    assert_eq!(
        j.topics_with_prefix("", 10).expect("topics"),
        Some(vec!["a.x".to_string(), "b.y".to_string()])
    );
    assert_eq!(
        j.stored_bytes(),
        got.iter()
            .map(|e| e.frames.iter().map(|f| f.len() as u64).sum::<u64>())
            .sum::<u64>()
    );
    // Later appends are never stamped before the newest time written.
    assert_eq!(
        j.append(&frames("a.x", 8), "a.x", "u8", 250)
            .expect("append"),
        8
    );
    assert_eq!(j.entry(8).expect("entry").map(|e| e.received_ms), Some(300));
    drop(j);
    assert!(Journal::open_read_only(&path).is_ok(), "converted for good");
}

#[test]
fn pruning_by_age_cuts_a_stored_row_and_its_topics_still_lead_to_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(
        &dir.path().join("j.sqlite"),
        Retention {
            max_age: Duration::from_secs(1),
            max_bytes: u64::MAX,
        },
    )
    .expect("open");
    // One append, so one stored row: three old events, two young ones of another topic.
    let f: Vec<Vec<Vec<u8>>> = (0..5)
        .map(|i| frames(if i < 3 { "old" } else { "young" }, i))
        .collect();
    let uuids: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
    let burst: Vec<NewEntry> = (0..5)
        .map(|i| NewEntry {
            frames: &f[i],
            topic: if i < 3 { "old" } else { "young" },
            uuid: &uuids[i],
            received_ms: if i < 3 { 0 } else { DAY_MS },
        })
        .collect();
    j.append_batch(&burst).expect("append");
    append_n(&mut j, "old", 1, DAY_MS);
    let pruned = j.prune(DAY_MS).expect("prune");
    assert_eq!((pruned.rows, pruned.more), (3, false));
    assert_eq!(j.first_seq().expect("first"), 4);
    let young = j
        .scan(&Scan {
            topic: Some("young"),
            limit: 10,
            ..Scan::default()
        })
        .expect("scan");
    assert_eq!(young.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(young[0].frames, frames("young", 3));
    let old = j
        .scan(&Scan {
            topic: Some("old"),
            descending: true,
            limit: 10,
            ..Scan::default()
        })
        .expect("scan");
    assert_eq!(old.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6]);
    // Once every row of a topic is gone, the topic is not listed any more.
    j.retention = Retention {
        max_age: Duration::from_secs(1),
        max_bytes: 0,
    };
    assert_eq!(j.prune(DAY_MS).expect("prune").rows, 3);
    assert_eq!(j.topics_with_prefix("", 10).expect("topics"), Some(vec![]));
    assert_eq!(j.first_seq().expect("first"), 7);
    assert_eq!(j.head_seq().expect("head"), 6);
}

#[test]
fn lookups_by_uuid_read_the_filters_and_survive_a_split_and_an_old_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let retention = Retention {
        max_age: Duration::from_millis(DAY_MS as u64),
        max_bytes: u64::MAX,
    };
    let mut j = Journal::open(&path, retention).expect("open");
    // One stored row of 10 (received at 0..9 ms), then rows of one; "dup" twice.
    let batch: Vec<(Vec<Vec<u8>>, String)> = (0..10u64)
        .map(|i| (frames("a.b", i), format!("row-{i}")))
        .collect();
    let entries: Vec<NewEntry<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, (f, u))| NewEntry {
            frames: f,
            topic: "a.b",
            uuid: u,
            received_ms: i as i64,
        })
        .collect();
    j.append_batch(&entries).expect("batch");
    for (i, uuid) in ["dup", "x", "dup"].into_iter().enumerate() {
        j.append(&frames("c.d", i as u64), "c.d", uuid, DAY_MS)
            .expect("append");
    }
    let seqs = |j: &Journal, uuid: &str| -> Vec<u64> {
        j.with_uuid(uuid)
            .expect("lookup")
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert!(j.uuid_filters);
    assert_eq!(seqs(&j, "row-7"), vec![8]);
    assert_eq!(seqs(&j, "dup"), vec![13, 11], "newest first");
    assert!(seqs(&j, "nowhere").is_empty());
    // Age prunes the row of ten in two: 0..=4 ms go, the rest is written again.
    j.prune(DAY_MS + 5).expect("prune");
    assert_eq!(j.first_seq().expect("first"), 6);
    assert!(seqs(&j, "row-2").is_empty());
    assert_eq!(seqs(&j, "row-7"), vec![8]);
    let filters: i64 = j
        .connection()
        .query_row("SELECT COUNT(*) FROM round_uuids", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        filters, 4,
        "one filter per stored row, none left for pruned rows"
    );

    // A file written before the filters: a reader walks it, a writer adds them.
    j.connection()
        .execute_batch("DELETE FROM round_uuids; DELETE FROM meta WHERE key = 'uuid_filters';")
        .expect("make it old");
    drop(j);
    let reader = Journal::open_read_only(&path).expect("reader");
    assert!(!reader.uuid_filters);
    assert_eq!(seqs(&reader, "dup"), vec![13, 11]);
    drop(reader);
    let j = Journal::open(&path, retention).expect("writer");
    assert!(j.uuid_filters);
    assert_eq!(seqs(&j, "row-9"), vec![10]);
    assert_eq!(seqs(&j, "dup"), vec![13, 11]);

    // An older hark appended a row without a filter (flag still set): the next writer
    // fills it in.
    j.connection()
        .execute("DELETE FROM round_uuids WHERE first_seq = 13", [])
        .expect("drop the newest filter");
    // Lookups go through the filters (they do not walk): without its filter, row 13 is
    // not found until a writer fills it in.
    assert_eq!(seqs(&j, "dup"), vec![11]);
    drop(j);
    let j = Journal::open(&path, retention).expect("writer");
    assert_eq!(seqs(&j, "dup"), vec![13, 11]);
}
