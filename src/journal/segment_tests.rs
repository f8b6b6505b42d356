//! Stored rows whose blobs live in segment files (`segments.rs`): what is read back, what
//! a crash or a full disk leaves, and what pruning deletes.

use super::*;
use std::path::PathBuf;

fn keep_all() -> Retention {
    Retention {
        max_age: Duration::from_secs(3650 * 24 * 3600),
        max_bytes: u64::MAX,
    }
}

/// The events of one big append: 100 events of about 1 KiB, topics alternating.
struct Burst {
    frames: Vec<Vec<Vec<u8>>>,
    topics: Vec<String>,
    uuids: Vec<String>,
    ms: i64,
}

impl Burst {
    fn new(tag: usize, ms: i64) -> Burst {
        let topics: Vec<String> = (0..100)
            .map(|i| if i % 2 == 0 { "org.a.x" } else { "org.b.y" }.to_string())
            .collect();
        let frames = (0..100)
            .map(|i| {
                vec![
                    topics[i].as_bytes().to_vec(),
                    format!(
                        "{{\"burst\":{tag},\"i\":{i},\"pad\":\"{}\"}}",
                        "p".repeat(1000)
                    )
                    .into_bytes(),
                ]
            })
            .collect();
        Burst {
            frames,
            uuids: (0..100).map(|i| format!("u-{tag}-{i}")).collect(),
            topics,
            ms,
        }
    }

    fn entries(&self) -> Vec<NewEntry<'_>> {
        (0..100)
            .map(|i| NewEntry {
                frames: &self.frames[i],
                topic: &self.topics[i],
                uuid: &self.uuids[i],
                received_ms: self.ms,
            })
            .collect()
    }
}

fn segment_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Segments::dir_of(path))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn assert_all_there(j: &Journal, bursts: &[Burst]) {
    let all = j.range(1, 100_000).expect("range");
    assert_eq!(all.len(), bursts.len() * 100);
    for (k, e) in all.iter().enumerate() {
        let (b, i) = (k / 100, k % 100);
        assert_eq!(e.seq, k as u64 + 1);
        assert_eq!(e.frames, bursts[b].frames[i], "seq {}", e.seq);
        assert_eq!(e.uuid, bursts[b].uuids[i]);
    }
}

#[test]
fn big_rows_live_in_segments_and_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, keep_all()).expect("open");
    let bursts: Vec<Burst> = (0..30).map(|b| Burst::new(b, 1000 + b as i64)).collect();
    for b in &bursts {
        j.append_batch(&b.entries()).expect("append");
    }
    let references: i64 = j
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM rounds WHERE length(events) = ?1",
            [segments::REF_LEN as i64],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(references, 30, "every burst's row refers to a segment");
    assert!(
        segment_files(&path).len() >= 2,
        "segments rotate: {:?}",
        segment_files(&path)
    );
    // A quiet moment: one event, stored inline.
    let lone = vec![b"org.a.x".to_vec(), b"{}".to_vec()];
    assert_eq!(
        j.append(&lone, "org.a.x", "lone", 2000).expect("lone"),
        3001
    );

    let reader = Journal::open_read_only(&path).expect("reader");
    for journal in [&j, &reader] {
        assert_eq!(journal.range(3001, 1).expect("range")[0].frames, lone);
        let found = journal.with_uuid("u-17-5").expect("by uuid");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, 17 * 100 + 6);
        assert_eq!(found[0].frames, bursts[17].frames[5]);
        let b_topic = journal
            .scan(&Scan {
                topic: Some("org.b.y"),
                limit: 10_000,
                ..Scan::default()
            })
            .expect("scan");
        assert_eq!(b_topic.len(), 1500);
        let in_time = journal.time_range(1010, 1012, 10_000).expect("time range");
        assert_eq!(in_time.len(), 300);
        assert_eq!(in_time[0].frames, bursts[10].frames[0]);
    }
    drop(reader);
    drop(j);
    let mut j = Journal::open(&path, keep_all()).expect("reopen");
    assert_eq!(j.head_seq().expect("head"), 3001);
    let more = Burst::new(30, 3000);
    assert_eq!(j.append_batch(&more.entries()).expect("append"), 3002);
    assert_eq!(
        j.range(3002, 100).expect("range")[99].frames,
        more.frames[99]
    );
}

#[test]
fn bytes_past_the_last_commit_are_cut_off_when_the_writer_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, keep_all()).expect("open");
    let mut bursts: Vec<Burst> = (0..3).map(|b| Burst::new(b, 1000)).collect();
    for b in &bursts {
        j.append_batch(&b.entries()).expect("append");
    }
    drop(j);
    // What a crash after the segment write and before the commit leaves: bytes past the
    // last row, and a segment no row refers to.
    let files = segment_files(&path);
    let last = files.last().expect("a segment").clone();
    let committed = std::fs::metadata(&last).expect("segment").len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        f.write_all(&[0xAB; 5000]).unwrap();
    }
    let stray = Segments::dir_of(&path).join(format!("{:020}.seg", 99_999));
    std::fs::write(&stray, [0xCD; 100]).unwrap();

    let mut j = Journal::open(&path, keep_all()).expect("reopen");
    assert_eq!(std::fs::metadata(&last).unwrap().len(), committed);
    assert!(!stray.exists(), "a segment no row refers to is deleted");
    let next = Burst::new(3, 2000);
    j.append_batch(&next.entries())
        .expect("append after the crash");
    bursts.push(next);
    assert_all_there(&j, &bursts);
    drop(j);
    assert_all_there(&Journal::open_read_only(&path).expect("reader"), &bursts);
}

#[test]
fn pruned_segments_are_deleted_at_the_prune_after_the_one_that_emptied_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let retention = Retention {
        max_age: Duration::from_secs(3600),
        max_bytes: 1_500_000,
    };
    let mut j = Journal::open(&path, retention).expect("open");
    let bursts: Vec<Burst> = (0..40).map(|b| Burst::new(b, 1000)).collect();
    for b in &bursts {
        j.append_batch(&b.entries()).expect("append");
    }
    let before = segment_files(&path);
    assert!(before.len() >= 4, "{before:?}");
    while j.prune(1000).expect("prune").more {}
    let first = j.first_seq().expect("first");
    assert!(
        first > 2000,
        "the size limit pruned most rows (first seq {first})"
    );
    assert_eq!(
        segment_files(&path),
        before,
        "nothing is deleted by the prune that empties a segment"
    );
    j.prune(1000).expect("the next prune");
    let after = segment_files(&path);
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    // Segments rotate at an eighth of max_bytes here, so what is left on disk is the
    // retained frames and at most a quarter of max_bytes more (plus one row's overrun).
    let on_disk: u64 = after
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        on_disk <= j.stored_bytes() + 1_500_000 / 4 + 2 * 110_000,
        "{on_disk} bytes of segments for {} retained",
        j.stored_bytes()
    );
    let retained = j.range(first, 100_000).expect("every retained row reads");
    assert_eq!(retained.len() as u64, 4000 - first + 1);
    let k = (first - 1) as usize;
    assert_eq!(retained[0].frames, bursts[k / 100].frames[k % 100]);
}

/// A full disk while writing a segment: the append is refused, the segment keeps only
/// committed bytes, and appends work again once there is room. Needs root for the tmpfs.
#[test]
fn a_full_disk_under_a_segment_refuses_the_append_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_mount) = super::tests::Mount::tmpfs(dir.path(), "8m") else {
        println!("SKIPPED: cannot mount a tmpfs here (it needs root)");
        return;
    };
    // Another file holds half the disk, as logs or a build would.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4 << 20]).expect("filler");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, keep_all()).expect("open");
    let mut bursts: Vec<Burst> = Vec::new();
    let mut failed = None;
    for b in 0..200 {
        let burst = Burst::new(b, 1000);
        match j.append_batch(&burst.entries()) {
            Ok(_) => bursts.push(burst),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("the disk fills up");
    assert!(matches!(err, JournalError::Full), "{err:?}");
    assert_eq!(j.head_seq().expect("head"), bursts.len() as u64 * 100);
    let refused = Burst::new(999, 1000);
    assert!(j.append_batch(&refused.entries()).is_err(), "still full");
    // Only committed bytes are left: the last segment ends where its last row does.
    let last = last_extent(j.connection())
        .expect("query")
        .expect("a row in a segment");
    let files = segment_files(&path);
    assert_eq!(
        files
            .last()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned()),
        Some(format!("{:020}.seg", last.segment)),
        "{files:?}"
    );
    assert_eq!(
        std::fs::metadata(files.last().unwrap()).unwrap().len(),
        last.offset + last.len
    );
    std::fs::remove_file(&filler).expect("space returns");
    let next = Burst::new(500, 2000);
    let seq = j
        .append_batch(&next.entries())
        .expect("appends work again once there is room");
    assert_eq!(seq, bursts.len() as u64 * 100 + 1);
    bursts.push(next);
    assert_all_there(&j, &bursts);
    drop(j);
    assert_all_there(&Journal::open(&path, keep_all()).expect("reopen"), &bursts);
}

#[test]
fn a_copy_without_its_segments_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, keep_all()).expect("open");
    j.append_batch(&Burst::new(0, 1000).entries())
        .expect("append");
    drop(j);
    let copy = dir.path().join("copy.sqlite");
    std::fs::copy(&path, &copy).expect("copy the file alone");
    let reader = Journal::open_read_only(&copy).expect("the copy opens");
    let err = reader
        .range(1, 10)
        .expect_err("its rows' events are not there");
    let text = err.to_string();
    assert!(
        text.contains("copy.sqlite.segments") && text.contains("goes with its file"),
        "{text}"
    );
}

#[test]
fn a_format_2_file_is_read_as_it_is_and_marked_3_by_its_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.sqlite");
    let mut j = Journal::open(&path, keep_all()).expect("open");
    let lone = vec![b"t".to_vec(), b"{}".to_vec()];
    j.append(&lone, "t", "u", 1000).expect("append");
    // What a hark from before segments left: the same rows, format 2.
    j.connection()
        .execute("UPDATE meta SET value = 2 WHERE key = 'format'", [])
        .expect("format 2");
    drop(j);
    let format = |p: &Path| -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(format(&path), 2);
    let reader = Journal::open_read_only(&path).expect("a reader reads format 2");
    assert_eq!(reader.range(1, 10).expect("range")[0].frames, lone);
    drop(reader);
    assert_eq!(format(&path), 2, "a reader changes nothing");
    let mut j = Journal::open(&path, keep_all()).expect("a writer opens format 2");
    assert_eq!(format(&path), FORMAT);
    let burst = Burst::new(1, 2000);
    j.append_batch(&burst.entries())
        .expect("big rows after the upgrade");
    assert_eq!(j.range(1, 1).expect("range")[0].frames, lone);
    assert_eq!(j.range(2, 100).expect("range")[99].frames, burst.frames[99]);
}
