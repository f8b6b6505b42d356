//! The relay journal: every frame the relay publishes, with its seq, in SQLite, written
//! before it is published and acked, so that subscribers can fetch what they missed.
//!
//! A journal file has one `epoch` (a UUID made when the file is created) and seq numbers
//! that keep increasing across reopens of that file; a new epoch starts only with a new
//! file. Events are contiguous: appends add at the head, [`Journal::prune`] only removes a
//! prefix, so the retained events are exactly `first_seq..=head_seq`. Each append is
//! stored as one SQLite row holding all its events (split past [`ROW_EVENTS`]), so a
//! relay's burst costs one row, not one per event; the API below is per event all the
//! same. The replay protocol built on it lives in [`replay`]; its wire format is in
//! docs/architecture.md.
//!
//! Everything here blocks on disk. The relay's socket thread is a plain thread, which is
//! where it belongs; never call it from the tokio loop.

pub mod replay;
mod segments;
mod uuid_filter;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use segments::{Extent, Mark, Segments};

use crate::event::Frame;

/// Suggested `hark.yaml` default for `relay.journal.max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Suggested `hark.yaml` default for `relay.journal.max_bytes` (1 GiB of stored frames).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Suggested `hark.yaml` default for `relay.replay` (the relay's ROUTER replay socket).
pub const DEFAULT_REPLAY_ENDPOINT: &str = "tcp://127.0.0.1:5573";
/// The ack `reason` the relay gives when it refuses a submission it could not journal.
pub const REFUSAL_REASON: &str = "journal-unavailable";

/// Rows removed by one [`Journal::prune`] call at most, so that pruning after a long
/// outage never stalls the socket thread in one huge transaction; call again while
/// [`Pruned::more`] says so.
const PRUNE_BATCH: i64 = 10_000;

/// How much the journal keeps. A row goes when it is older than `max_age` or when the
/// stored frames would exceed `max_bytes` without it (the oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// When an append is considered written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so an acked event survives
    /// power loss and a kernel crash, not just the relay being killed. The default: an
    /// ack is a promise to the publisher, who then forgets the event.
    #[default]
    Full,
    /// `synchronous=NORMAL` in WAL mode: commits survive the relay process dying but the
    /// last ones may be lost with the machine. Measured and kept only for comparison.
    Normal,
}

/// Why the journal could not do something. Any of these on an append means the relay
/// must refuse the submission with [`REFUSAL_REASON`]; none leaves the journal unusable,
/// so the next append is tried afresh.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal's disk is full")]
    Full,
    #[error("the journal cannot read or write its file: {0}")]
    Io(String),
    #[error("the journal was opened read-only")]
    ReadOnly,
    #[error("{0} is in use by another writer (another relay on the same state directory?)")]
    InUse(String),
    #[error("{0} is not a hark journal: {1}")]
    NotAJournal(String, String),
    #[error("journal row {seq} is damaged: {why}")]
    Damaged { seq: u64, why: String },
    #[error("journal: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => JournalError::Full,
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked,
            ) => JournalError::Io(e.to_string()),
            _ => JournalError::Sqlite(e),
        }
    }
}

impl JournalError {
    /// The ack reason for a submission refused because of this error.
    pub fn reason(&self) -> &'static str {
        REFUSAL_REASON
    }
}

pub type Result<T> = std::result::Result<T, JournalError>;

/// One event to append: the multipart frames exactly as published. A frame is anything
/// that holds bytes: the relay journals the libzmq messages it received and then publishes
/// them, uncopied.
#[derive(Debug)]
pub struct NewEntry<'a, F = Vec<u8>> {
    pub frames: &'a [F],
    pub topic: &'a str,
    pub uuid: &'a str,
    /// When the relay received it, milliseconds since the Unix epoch.
    pub received_ms: i64,
}

/// One journaled event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub received_ms: i64,
    pub topic: String,
    pub uuid: String,
    pub frames: Vec<Vec<u8>>,
}

/// What one [`Journal::prune`] call removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub rows: u64,
    pub bytes: u64,
    /// More rows are due to go; call again.
    pub more: bool,
}

/// A selection of journal rows for [`Journal::select`]: a seq range, optionally narrowed
/// by receive time and topic prefixes (bytewise, as a ZeroMQ SUB prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub from_seq: u64,
    /// Inclusive; `None` is the head.
    pub to_seq: Option<u64>,
    /// Inclusive bounds on `received_ms`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Empty selects every topic.
    pub topic_prefixes: Vec<String>,
}

/// The result of [`Journal::select`]: matching rows in seq order, and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub entries: Vec<Entry>,
    /// The first seq not yet examined; the next call starts here.
    pub next_seq: u64,
    /// Every row of the selection up to its end (or the head) has been examined.
    pub done: bool,
}

/// The journal as stored. One row holds one append's events (a relay's poll round, or
/// several rounds that shared a commit), so that a burst costs one row insert instead of
/// one per event with two index updates each: that was most of the journal's CPU
/// (docs/benchmarks.md, "With the journal on and off"). `round_topics` keeps one row per
/// topic per row of `rounds`, which is what history's topic walks seek through; receive
/// times never decrease with seq (appends clamp them), so `rounds_last_ms` finds a time.
/// `round_uuids` holds a filter of each row's uuids ([`uuid_filter`]) for lookups by uuid;
/// `meta.uuid_filters` says every row has one (files written before it get theirs when a
/// writer next opens them).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rounds (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    events BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rounds_last_ms ON rounds(last_ms);
CREATE TABLE IF NOT EXISTS round_topics (
    topic TEXT NOT NULL,
    first_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS round_topics_walk ON round_topics(topic, first_seq);
CREATE TABLE IF NOT EXISTS round_uuids (
    first_seq INTEGER PRIMARY KEY,
    filter BLOB NOT NULL
);
";

/// One ordered walk over journal rows for [`Journal::scan`] (history queries): rows past
/// `after` in the walk's direction, up to `bound`, optionally of one exact topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Newest first.
    pub descending: bool,
    /// Exclusive: the walk starts past this seq (a keyset cursor).
    pub after: Option<u64>,
    /// Inclusive: the walk ends at this seq.
    pub bound: Option<u64>,
    /// Exactly this topic (through the topic index).
    pub topic: Option<&'a str>,
    /// Inclusive bounds on `received_ms`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
}

/// SQLite page size of a new journal file, in bytes.
const JOURNAL_PAGE_SIZE: i64 = 16_384;

/// The journal format this code writes; a file with another one is refused, not guessed at,
/// except format 1 (one row per event), which a writer converts when it opens it, and
/// format 2 (every row inline), which it reads as it is and marks 3 (rows may then refer
/// to segments, which a hark reading format 2 would not understand).
const FORMAT: i64 = 3;
const FORMAT_INLINE: i64 = 2;
const FORMAT_PER_EVENT: i64 = 1;

/// Most events, and most bytes of frames, in one stored row: a bigger append is split, so
/// that a reader decoding one row for a page of results never decodes much more.
const ROW_EVENTS: usize = 1024;
const ROW_BYTES: usize = 1 << 20;

pub struct Journal {
    conn: Connection,
    epoch: String,
    read_only: bool,
    retention: Retention,
    /// The last seq written; survives pruning through `meta.pruned_seq`.
    head_seq: u64,
    /// The newest receive time written: later appends are stamped no earlier.
    last_ms: i64,
    /// Sum of `rounds.bytes`, kept here so appends need not ask SQLite.
    stored_bytes: u64,
    /// Every stored row has its `round_uuids` filter.
    uuid_filters: bool,
    /// Where big rows keep their blobs.
    segments: Segments,
    durability: Durability,
    /// A writer holds an exclusive lock on `<file>.lock` while open: `head_seq` is
    /// cached here, so a second writer would hand out the same seqs.
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("epoch", &self.epoch)
            .field("head_seq", &self.head_seq)
            .field("stored_bytes", &self.stored_bytes)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Open (creating if needed) the journal file with `synchronous=FULL`.
    pub fn open(path: &Path, retention: Retention) -> Result<Journal> {
        Journal::open_with(path, retention, Durability::Full)
    }

    pub fn open_with(path: &Path, retention: Retention, durability: Durability) -> Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| JournalError::Io(format!("{}: {e}", dir.display())))?;
        }
        let lock = lock_writer(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Before the first write fixes it. 16 KiB pages cut the CPU of a busy relay's
        // appends by about a third against SQLite's 4 KiB (fewer WAL frames, checksums
        // and page splits per event), while a lone event's commit writes 34 KB instead of
        // 11 (64 KiB pages would save more CPU but write 131 KB); docs/benchmarks.md.
        // A file created with other pages keeps them.
        conn.pragma_update(None, "page_size", JOURNAL_PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // IMMEDIATE so two processes creating the same file cannot both mint an epoch.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let format: Option<i64> = meta_get(&tx, "format")?;
        match format {
            None => {
                let epoch = uuid::Uuid::new_v4().to_string();
                let created = chrono::Utc::now().timestamp_millis();
                let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
                put.execute(params!["format", FORMAT])?;
                put.execute(params!["epoch", epoch])?;
                put.execute(params!["created_ms", created])?;
                put.execute(params!["pruned_seq", 0i64])?;
                put.execute(params!["uuid_filters", 1i64])?;
            }
            Some(f @ (FORMAT | FORMAT_INLINE)) => {
                if f == FORMAT_INLINE {
                    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'format'", [FORMAT])?;
                }
                // Also when the newest row has none: a hark from before the filters wrote
                // to this file since (a downgrade and back).
                let newest_unfiltered: bool = tx.query_row(
                    "SELECT COALESCE((SELECT MAX(first_seq) FROM rounds), 0)
                         > COALESCE((SELECT MAX(first_seq) FROM round_uuids), 0)",
                    [],
                    |r| r.get(0),
                )?;
                if newest_unfiltered || meta_get::<i64>(&tx, "uuid_filters")?.is_none() {
                    add_uuid_filters(&tx, path, &Segments::reader(path))?;
                }
            }
            Some(FORMAT_PER_EVENT) => {
                convert_per_event_rows(&tx)?;
                tx.execute(MARK_UUID_FILTERS, [])?;
            }
            Some(other) => {
                return Err(JournalError::NotAJournal(
                    path.display().to_string(),
                    format!("format {other}, this hark reads format {FORMAT}"),
                ))
            }
        }
        tx.commit()?;
        let last = last_extent(&conn)?;
        let mut journal = Journal::from_conn(conn, path, false)?;
        journal.segments = Segments::writer(path, last, retention.max_bytes)?;
        journal.retention = retention;
        journal.durability = durability;
        journal._lock = Some(lock);
        Ok(journal)
    }

    /// Open an existing journal for reading only, e.g. from a replay thread beside the
    /// writer (WAL lets it read while the relay appends).
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Journal::from_conn(conn, path, true)
    }

    fn from_conn(conn: Connection, path: &Path, read_only: bool) -> Result<Journal> {
        let not_journal =
            |why: &str| JournalError::NotAJournal(path.display().to_string(), why.into());
        let epoch: String = meta_get(&conn, "epoch")?.ok_or_else(|| not_journal("no epoch"))?;
        match meta_get::<i64>(&conn, "format")? {
            Some(FORMAT | FORMAT_INLINE) => {}
            Some(FORMAT_PER_EVENT) => {
                return Err(not_journal(
                    "format 1 (one row per event): the relay converts it when it next opens it",
                ))
            }
            other => {
                return Err(not_journal(&format!(
                    "format {}, this hark reads format {FORMAT}",
                    other.map_or("none".into(), |f| f.to_string())
                )))
            }
        }
        let (head_seq, _) = head_and_first(&conn)?;
        let uuid_filters = meta_get::<i64>(&conn, "uuid_filters")?.is_some();
        // Only the writer needs the sum, and it reads every row: a reader (a history
        // query, the HTTP API) opening a journal of 10^6 events must not pay for it.
        let (stored, last_ms): (i64, Option<i64>) = if read_only {
            (0, None)
        } else {
            (
                conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM rounds", [], |r| {
                    r.get(0)
                })?,
                conn.query_row(
                    "SELECT (SELECT last_ms FROM rounds ORDER BY first_seq DESC LIMIT 1)",
                    [],
                    |r| r.get(0),
                )?,
            )
        };
        let last_ms = match last_ms {
            Some(ms) => ms,
            None => meta_get(&conn, "pruned_ms")?.unwrap_or(i64::MIN),
        };
        Ok(Journal {
            conn,
            epoch,
            read_only,
            retention: Retention::default(),
            head_seq,
            last_ms,
            stored_bytes: u64::try_from(stored).unwrap_or(0),
            uuid_filters,
            segments: Segments::reader(path),
            durability: Durability::Full,
            _lock: None,
        })
    }

    /// The UUID of this journal file; the relay stamps it as `unsigned.epoch`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The seq the next append gets. The relay stamps it into the event before building
    /// the frames it then appends.
    pub fn next_seq(&self) -> u64 {
        self.head_seq + 1
    }

    /// The last seq written (0 before the first append). A reader asks the file, since
    /// the writer may have moved on.
    pub fn head_seq(&self) -> Result<u64> {
        if self.read_only {
            Ok(head_and_first(&self.conn)?.0)
        } else {
            Ok(self.head_seq)
        }
    }

    /// The oldest seq still retained; `head_seq + 1` when nothing is.
    pub fn first_seq(&self) -> Result<u64> {
        Ok(head_and_first(&self.conn)?.1)
    }

    /// The newest `received_ms` among pruned rows: a time range starting at or before it
    /// may have lost events. `None` while nothing has been pruned.
    pub fn pruned_through_ms(&self) -> Result<Option<i64>> {
        meta_get(&self.conn, "pruned_ms")
    }

    /// Bytes of frames currently stored (what `max_bytes` bounds), as the writer counts
    /// them; a read-only journal does not count them and gives 0.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Append one event; durable (per [`Durability`]) when this returns its seq.
    pub fn append(
        &mut self,
        frames: &[Vec<u8>],
        topic: &str,
        uuid: &str,
        received_ms: i64,
    ) -> Result<u64> {
        self.append_batch(&[NewEntry {
            frames,
            topic,
            uuid,
            received_ms,
        }])
    }

    /// Append a burst in one transaction (one fsync). The entries get consecutive seqs
    /// starting at [`Journal::next_seq`], which is returned; on error none is written
    /// and the seqs are not used up. A receive time earlier than one already written (the
    /// clock stepped back) is stored as that one, so that times never decrease with seq.
    pub fn append_batch<F: Frame>(&mut self, entries: &[NewEntry<'_, F>]) -> Result<u64> {
        if self.read_only {
            return Err(JournalError::ReadOnly);
        }
        let first = self.next_seq();
        if entries.is_empty() {
            return Ok(first);
        }
        let mark = self.segments.mark();
        let written = write_rows(
            &mut self.conn,
            &mut self.segments,
            &mark,
            self.durability,
            first,
            self.last_ms,
            entries,
        );
        // A failed commit rolls back (the transaction is dropped) and so do the segments;
        // the counters below only move once the rows are on disk, so a failure leaves
        // nothing half-counted.
        let (added, last_ms) = match written {
            Ok(w) => w,
            Err(e) => {
                self.segments.rollback(&mark);
                return Err(e);
            }
        };
        self.head_seq += entries.len() as u64;
        self.last_ms = last_ms;
        self.stored_bytes += added;
        Ok(first)
    }

    /// Drop the oldest events that are older than `max_age` at `now_ms` or that push the
    /// stored bytes over `max_bytes`, at most [`PRUNE_BATCH`] per call (or one stored row,
    /// if that holds more). Over `max_bytes`, whole stored rows go, the oldest first; by
    /// age, a stored row whose first events are too old is written again with the rest.
    pub fn prune(&mut self, now_ms: i64) -> Result<Pruned> {
        if self.read_only {
            return Err(JournalError::ReadOnly);
        }
        let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms.saturating_sub(max_age_ms);
        let excess = self.stored_bytes.saturating_sub(self.retention.max_bytes);
        let tx = self.conn.transaction()?;
        // Walk from the oldest event: it goes while it is too old or bytes are still in
        // excess. Stopping at the first event that may stay keeps the events contiguous.
        let mut rows = 0u64;
        let mut freed = 0u64;
        let mut more = false;
        let mut horizon: Option<i64> = None;
        // Whole stored rows that go, and the row cut in two (its first seq, how many
        // topics it has, the events that stay).
        let mut whole_through: Option<u64> = None;
        let mut split: Option<(u64, usize, Vec<Entry>)> = None;
        {
            let mut oldest =
                tx.prepare_cached("SELECT first_seq, events FROM rounds ORDER BY first_seq")?;
            let mut cursor = oldest.query([])?;
            'rows: while let Some(row) = cursor.next()? {
                let first_seq = seq_from_sql(row.get(0)?);
                let blob = events_of(&self.segments, row, 1)?;
                let events = decode_round(first_seq, &blob)?;
                if freed < excess {
                    // Over the size limit: the whole row goes, so that a journal at its
                    // limit never writes a big row again for every small append.
                    let n = events.len() as u64;
                    if rows > 0 && rows + n > PRUNE_BATCH as u64 {
                        more = true;
                        break 'rows;
                    }
                    rows += n;
                    for e in &events {
                        freed += e.bytes();
                        horizon = Some(horizon.map_or(e.received_ms, |h| h.max(e.received_ms)));
                    }
                    whole_through = Some(first_seq);
                    continue;
                }
                for (i, e) in events.iter().enumerate() {
                    let stays = e.received_ms >= cutoff_ms;
                    if stays || rows == PRUNE_BATCH as u64 {
                        more = !stays;
                        if i > 0 {
                            let rest = events[i..].iter().map(EventRef::to_entry).collect();
                            let mut topics: Vec<&str> = events.iter().map(|e| e.topic).collect();
                            topics.sort_unstable();
                            topics.dedup();
                            split = Some((first_seq, topics.len(), rest));
                        }
                        break 'rows;
                    }
                    rows += 1;
                    freed += e.bytes();
                    horizon = Some(horizon.map_or(e.received_ms, |h| h.max(e.received_ms)));
                }
                whole_through = Some(first_seq);
            }
        }
        let Some(newest_ms) = horizon else {
            drop(tx);
            self.prune_segments(self.first_seq()?);
            return Ok(Pruned::default());
        };
        // Topic rows are written in seq order, so the ones of removed rows are a rowid
        // prefix: those before the first that points at a row still there.
        let drop_topics = |through: u64| {
            tx.execute(
                "DELETE FROM round_topics WHERE rowid < COALESCE(
                     (SELECT rowid FROM round_topics WHERE first_seq > ?1 ORDER BY rowid LIMIT 1),
                     (SELECT MAX(rowid) FROM round_topics) + 1)",
                params![seq_sql(through)],
            )
        };
        let mut through_seq = 0;
        if let Some(first) = whole_through {
            tx.execute(
                "DELETE FROM rounds WHERE first_seq <= ?1",
                params![seq_sql(first)],
            )?;
            tx.execute(
                "DELETE FROM round_uuids WHERE first_seq <= ?1",
                params![seq_sql(first)],
            )?;
            drop_topics(first)?;
            through_seq = tx.query_row(
                "SELECT COALESCE((SELECT first_seq FROM rounds ORDER BY first_seq LIMIT 1), ?1) - 1",
                params![seq_sql(self.head_seq + 1)],
                |r| r.get::<_, i64>(0),
            )?;
        }
        if let Some((old_first, topics, rest)) = split {
            let new_first = rest.first().map_or(old_first, |e| e.seq);
            for table in ["rounds", "round_uuids"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE first_seq = ?1"),
                    params![seq_sql(old_first)],
                )?;
            }
            // Inline: segments take appends only, in seq order (segments.rs).
            let mut writer = RowWriter::new(&tx, false, None)?;
            for e in &rest {
                writer.push(e.seq, e.received_ms, &e.topic, &e.uuid, &e.frames)?;
            }
            writer.finish()?;
            // Its topic rows stay where they are in rowid order, pointing at the rewritten
            // row (a topic only its pruned part had matches nothing there, which is fine).
            tx.execute(
                "UPDATE round_topics SET first_seq = ?2 WHERE rowid IN
                     (SELECT rowid FROM round_topics WHERE first_seq = ?1 ORDER BY rowid LIMIT ?3)",
                params![
                    seq_sql(old_first),
                    seq_sql(new_first),
                    i64::try_from(topics).unwrap_or(i64::MAX)
                ],
            )?;
            through_seq = seq_sql(new_first) - 1;
        }
        let previous_ms: Option<i64> = meta_get(&tx, "pruned_ms")?;
        let horizon = previous_ms.map_or(newest_ms, |p| p.max(newest_ms));
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_seq', ?1), ('pruned_ms', ?2)",
            params![through_seq, horizon],
        )?;
        tx.commit()?;
        self.stored_bytes = self.stored_bytes.saturating_sub(freed);
        self.prune_segments(seq_from_sql(through_seq).saturating_add(1));
        Ok(Pruned {
            rows,
            bytes: freed,
            more,
        })
    }

    /// Delete the segments that hold nothing from `first_retained` on (segments.rs).
    fn prune_segments(&mut self, first_retained: u64) {
        if let Err(e) = self.segments.prune(first_retained) {
            // The rows are gone; a segment left behind is deleted by a later prune.
            tracing::warn!("cannot delete a pruned journal segment: {e}");
        }
    }

    /// Up to `limit` rows from `from_seq` on, in seq order.
    pub fn range(&self, from_seq: u64, limit: usize) -> Result<Vec<Entry>> {
        let selected = self.select(
            &Selection {
                from_seq,
                ..Selection::default()
            },
            limit,
            limit,
        )?;
        Ok(selected.entries)
    }

    /// Up to `limit` rows with `received_ms` in `from_ms..=to_ms`, in seq order, starting
    /// at the first seq received at or after `from_ms`.
    pub fn time_range(&self, from_ms: i64, to_ms: i64, limit: usize) -> Result<Vec<Entry>> {
        let Some((from_seq, to_seq)) = self.seqs_for_time(from_ms, to_ms)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut selection = Selection {
            from_seq,
            to_seq: Some(to_seq),
            from_ms: Some(from_ms),
            to_ms: Some(to_ms),
            topic_prefixes: Vec::new(),
        };
        while out.len() < limit {
            let got = self.select(&selection, limit - out.len(), limit.max(1024))?;
            out.extend(got.entries);
            if got.done {
                break;
            }
            selection.from_seq = got.next_seq;
        }
        Ok(out)
    }

    /// The seq span that holds the rows received in `from_ms..=to_ms`: from the first
    /// seq received at or after `from_ms` to the last received at or before `to_ms`.
    /// Receive times never decrease with seq (appends see to that), so this is two seeks
    /// in the time index and a look into the two stored rows at the ends.
    pub fn seqs_for_time(&self, from_ms: i64, to_ms: i64) -> Result<Option<(u64, u64)>> {
        let mut first_after = self.conn.prepare_cached(
            "SELECT first_seq, events FROM rounds WHERE last_ms >= ?1
             ORDER BY last_ms, first_seq LIMIT 1",
        )?;
        let first = match first_after.query(params![from_ms])?.next()? {
            Some(row) => {
                let first_seq = seq_from_sql(row.get(0)?);
                let blob = events_of(&self.segments, row, 1)?;
                decode_round(first_seq, &blob)?
                    .iter()
                    .find(|e| e.received_ms >= from_ms)
                    .map(|e| e.seq)
            }
            None => None,
        };
        let Some(first) = first else { return Ok(None) };
        // The last row that starts at or before `to_ms` holds the span's end: the first
        // row ending after it, if that starts in time, else the row before that one.
        let mut after = self.conn.prepare_cached(
            "SELECT first_seq, first_ms, events FROM rounds WHERE last_ms > ?1
             ORDER BY last_ms, first_seq LIMIT 1",
        )?;
        let mut last = None;
        if let Some(row) = after.query(params![to_ms])?.next()? {
            let first_ms: i64 = row.get(1)?;
            if first_ms <= to_ms {
                let first_seq = seq_from_sql(row.get(0)?);
                let blob = events_of(&self.segments, row, 2)?;
                let events = decode_round(first_seq, &blob)?;
                last = events
                    .iter()
                    .rev()
                    .find(|e| e.received_ms <= to_ms)
                    .map(|e| e.seq);
            }
        }
        if last.is_none() {
            last = self
                .conn
                .query_row(
                    "SELECT last_seq FROM rounds WHERE last_ms <= ?1
                     ORDER BY last_ms DESC, first_seq DESC LIMIT 1",
                    params![to_ms],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .map(seq_from_sql);
        }
        Ok(match last {
            Some(last) if first <= last => Some((first, last)),
            _ => None,
        })
    }

    /// Rows of `selection` in seq order: at most `limit` of them, examining at most
    /// `scan` seqs, so that a narrow topic filter over a long journal still answers in
    /// bounded time. Continue from [`Selected::next_seq`] until [`Selected::done`].
    pub fn select(&self, selection: &Selection, limit: usize, scan: usize) -> Result<Selected> {
        let head = self.head_seq()?;
        let end = selection.to_seq.map_or(head, |t| t.min(head));
        let from = selection.from_seq.max(1);
        if from > end || limit == 0 {
            return Ok(Selected {
                entries: Vec::new(),
                next_seq: from,
                done: from > end,
            });
        }
        let window_end = end.min(from.saturating_add(scan.max(1) as u64 - 1));
        let from_ms = selection.from_ms.unwrap_or(i64::MIN);
        let to_ms = selection.to_ms.unwrap_or(i64::MAX);
        let prefixes = &selection.topic_prefixes;
        let every_topic = prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty());
        let mut entries = Vec::new();
        self.walk(from, window_end, None, false, |e| {
            if e.received_ms >= from_ms
                && e.received_ms <= to_ms
                && (every_topic
                    || prefixes
                        .iter()
                        .any(|p| e.topic.as_bytes().starts_with(p.as_bytes())))
            {
                entries.push(e.to_entry());
            }
            entries.len() < limit
        })?;
        let next_seq = if entries.len() == limit {
            entries.last().map_or(window_end + 1, |e| e.seq + 1)
        } else {
            window_end + 1
        };
        Ok(Selected {
            done: next_seq > end,
            entries,
            next_seq,
        })
    }

    /// Rows of one [`Scan`] in its order. With a topic, `round_topics` makes this a seek
    /// and a walk of the stored rows holding that topic only, however long the journal is.
    pub fn scan(&self, scan: &Scan<'_>) -> Result<Vec<Entry>> {
        let (lo, hi) = if scan.descending {
            (scan.bound, scan.after.map(|a| a.saturating_sub(1)))
        } else {
            (scan.after.map(|a| a.saturating_add(1)), scan.bound)
        };
        let lo = lo.unwrap_or(0);
        let hi = hi.unwrap_or(u64::MAX);
        if lo > hi || scan.limit == 0 {
            return Ok(Vec::new());
        }
        let from_ms = scan.from_ms.unwrap_or(i64::MIN);
        let to_ms = scan.to_ms.unwrap_or(i64::MAX);
        let mut out = Vec::new();
        self.walk(lo, hi, scan.topic, scan.descending, |e| {
            if e.received_ms >= from_ms
                && e.received_ms <= to_ms
                && scan.topic.is_none_or(|t| t == e.topic)
            {
                out.push(e.to_entry());
            }
            out.len() < scan.limit
        })?;
        Ok(out)
    }

    /// Visit the events with seqs in `lo..=hi` in seq order (reversed when `descending`),
    /// only from stored rows holding `topic` if one is given, until `visit` says stop.
    fn walk(
        &self,
        lo: u64,
        hi: u64,
        topic: Option<&str>,
        descending: bool,
        mut visit: impl FnMut(&EventRef<'_>) -> bool,
    ) -> Result<()> {
        let order = if descending { "DESC" } else { "ASC" };
        // The row holding `lo` starts at or before it.
        let start = "(SELECT COALESCE(MAX(first_seq), 0) FROM rounds WHERE first_seq <= ?1)";
        let sql = match topic {
            Some(_) => format!(
                "SELECT r.first_seq, r.events FROM round_topics t INDEXED BY round_topics_walk
                 JOIN rounds r ON r.first_seq = t.first_seq
                 WHERE t.topic = ?3 AND t.first_seq >= {start} AND t.first_seq <= ?2
                 ORDER BY t.first_seq {order}"
            ),
            None => format!(
                "SELECT first_seq, events FROM rounds
                 WHERE first_seq >= {start} AND first_seq <= ?2
                 ORDER BY first_seq {order}"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = match topic {
            Some(t) => stmt.query(params![seq_sql(lo), seq_sql(hi), t])?,
            None => stmt.query(params![seq_sql(lo), seq_sql(hi)])?,
        };
        while let Some(row) = rows.next()? {
            let first_seq = seq_from_sql(row.get(0)?);
            let blob = events_of(&self.segments, row, 1)?;
            let mut events = decode_round(first_seq, &blob)?;
            events.retain(|e| e.seq >= lo && e.seq <= hi);
            if descending {
                events.reverse();
            }
            for e in &events {
                if !visit(e) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The distinct topics starting with `prefix`, in byte order, found by skipping
    /// through the topic index (one seek per topic, not a walk over the rows); `None` when
    /// there are more than `max`.
    pub fn topics_with_prefix(&self, prefix: &str, max: usize) -> Result<Option<Vec<String>>> {
        let mut next = self.conn.prepare_cached(
            "SELECT MIN(topic) FROM round_topics INDEXED BY round_topics_walk WHERE topic > ?1",
        )?;
        let mut first = self.conn.prepare_cached(
            "SELECT MIN(topic) FROM round_topics INDEXED BY round_topics_walk WHERE topic >= ?1",
        )?;
        let mut found = Vec::new();
        let mut current: Option<String> = first.query_row([prefix], |r| r.get(0))?;
        while let Some(topic) = current.take() {
            if !topic.starts_with(prefix) {
                break;
            }
            if found.len() == max {
                return Ok(None);
            }
            current = next.query_row([&topic], |r| r.get(0))?;
            found.push(topic);
        }
        Ok(Some(found))
    }

    /// The rows carrying this uuid (or fedmsg msg_id), newest first: one, unless
    /// different publishers reused it outside the dedupe window. It reads each stored
    /// row's uuid filter and decodes only the rows that may hold it; a file whose rows
    /// have no filters yet (written by an older hark, opened read-only) is walked.
    pub fn with_uuid(&self, uuid: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        if self.uuid_filters {
            let h = uuid_filter::hash(uuid);
            let mut candidates = Vec::new();
            {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT first_seq, filter FROM round_uuids ORDER BY first_seq DESC",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    // A damaged filter reads as "may hold": the row is decoded and checked.
                    let filter = row.get_ref(1)?.as_blob().unwrap_or_default();
                    if uuid_filter::may_hold(filter, h) {
                        candidates.push(seq_from_sql(row.get(0)?));
                    }
                }
            }
            let mut stmt = self
                .conn
                .prepare_cached("SELECT events FROM rounds WHERE first_seq = ?1")?;
            for first_seq in candidates {
                let mut rows = stmt.query(params![seq_sql(first_seq)])?;
                let Some(row) = rows.next()? else {
                    continue;
                };
                let blob = events_of(&self.segments, row, 0)?;
                let events = decode_round(first_seq, &blob)?;
                out.extend(
                    events
                        .iter()
                        .rev()
                        .filter(|e| e.uuid == uuid)
                        .map(EventRef::to_entry),
                );
                if out.len() >= 16 {
                    break;
                }
            }
            out.truncate(16);
            return Ok(out);
        }
        self.walk(0, u64::MAX, None, true, |e| {
            if e.uuid == uuid {
                out.push(e.to_entry());
            }
            out.len() < 16
        })?;
        Ok(out)
    }

    /// The row of one seq, if retained.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>> {
        Ok(self
            .scan(&Scan {
                after: Some(seq.saturating_sub(1)),
                bound: Some(seq),
                limit: 1,
                ..Scan::default()
            })?
            .pop())
    }

    /// Run `f` on one read snapshot, so that a reader on another connection sees the
    /// head, the first retained seq and the rows as of one moment, not a prune between.
    pub fn snapshot<T, E: From<JournalError>>(
        &self,
        f: impl FnOnce(&Journal) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(JournalError::from)?;
        let out = f(self);
        // Nothing was written; ending the read transaction either way is enough.
        drop(tx);
        out
    }

    #[cfg(test)]
    fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Write `entries` as stored rows from seq `first` in one transaction, big rows into
/// `segments` (fsynced before the commit at [`Durability::Full`]); the bytes of frames
/// added and the newest receive time.
fn write_rows<F: Frame>(
    conn: &mut Connection,
    segments: &mut Segments,
    mark: &Mark,
    durability: Durability,
    first: u64,
    mut last_ms: i64,
    entries: &[NewEntry<'_, F>],
) -> Result<(u64, i64)> {
    let mut added = 0u64;
    let tx = conn.transaction()?;
    {
        let mut rows = RowWriter::new(&tx, true, Some((&mut *segments, mark)))?;
        for (seq, entry) in (first..).zip(entries) {
            last_ms = last_ms.max(entry.received_ms);
            added += rows.push(seq, last_ms, entry.topic, entry.uuid, entry.frames)?;
        }
        rows.finish()?;
    }
    if durability == Durability::Full {
        segments.sync()?;
    }
    tx.commit()?;
    Ok((added, last_ms))
}

/// The segment extent of the newest row that has one.
fn last_extent(conn: &Connection) -> Result<Option<Extent>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT events FROM rounds WHERE length(events) = {} ORDER BY first_seq DESC",
        segments::REF_LEN
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if let Some(extent) = Extent::decode(blob_of_column(row, 0)?) {
            return Ok(Some(extent));
        }
    }
    Ok(None)
}

/// Writes events into stored rows of at most [`ROW_EVENTS`] events and [`ROW_BYTES`]
/// bytes, with their `round_topics`, inside the caller's transaction; rows of at least
/// [`segments::MIN_BYTES`] into the segments, when given.
struct RowWriter<'t> {
    insert: rusqlite::CachedStatement<'t>,
    topic: rusqlite::CachedStatement<'t>,
    uuids: rusqlite::CachedStatement<'t>,
    blob: Vec<u8>,
    /// The hashes of this row's uuids, for its filter.
    hashes: Vec<u64>,
    first: Option<(u64, i64)>,
    last: (u64, i64),
    events: usize,
    bytes: u64,
    topics: Vec<String>,
    /// Write `round_topics` rows (not when a pruned row is written again: it keeps its own).
    with_topics: bool,
    segments: Option<(&'t mut Segments, &'t Mark)>,
}

impl<'t> RowWriter<'t> {
    fn new(
        tx: &'t rusqlite::Transaction<'_>,
        with_topics: bool,
        segments: Option<(&'t mut Segments, &'t Mark)>,
    ) -> Result<Self> {
        Ok(RowWriter {
            with_topics,
            segments,
            insert: tx.prepare_cached(
                "INSERT INTO rounds (first_seq, last_seq, first_ms, last_ms, bytes, events)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            topic: tx
                .prepare_cached("INSERT INTO round_topics (topic, first_seq) VALUES (?1, ?2)")?,
            uuids: tx
                .prepare_cached("INSERT INTO round_uuids (first_seq, filter) VALUES (?1, ?2)")?,
            blob: Vec::new(),
            hashes: Vec::new(),
            first: None,
            last: (0, 0),
            events: 0,
            bytes: 0,
            topics: Vec::new(),
        })
    }

    /// Add one event; the bytes of its frames.
    fn push<F: Frame>(
        &mut self,
        seq: u64,
        received_ms: i64,
        topic: &str,
        uuid: &str,
        frames: &[F],
    ) -> Result<u64> {
        if self.events == ROW_EVENTS || self.blob.len() >= ROW_BYTES {
            self.finish()?;
        }
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        encode_event(&mut self.blob, received_ms, topic, uuid, frames);
        self.hashes.push(uuid_filter::hash(uuid));
        self.first.get_or_insert((seq, received_ms));
        self.last = (seq, received_ms);
        self.events += 1;
        self.bytes += bytes;
        if self.with_topics && !self.topics.iter().any(|t| t == topic) {
            self.topics.push(topic.to_string());
        }
        Ok(bytes)
    }

    /// Store what was pushed since the last row.
    fn finish(&mut self) -> Result<()> {
        let Some((first_seq, first_ms)) = self.first.take() else {
            return Ok(());
        };
        let reference;
        let stored: &[u8] = match &mut self.segments {
            Some((segments, mark)) if self.blob.len() >= segments::MIN_BYTES => {
                reference = segments.write(mark, first_seq, &self.blob)?.encode();
                &reference
            }
            _ => &self.blob,
        };
        self.insert.execute(params![
            seq_sql(first_seq),
            seq_sql(self.last.0),
            first_ms,
            self.last.1,
            i64::try_from(self.bytes).unwrap_or(i64::MAX),
            stored,
        ])?;
        for topic in self.topics.drain(..) {
            self.topic.execute(params![topic, seq_sql(first_seq)])?;
        }
        self.uuids.execute(params![
            seq_sql(first_seq),
            uuid_filter::build(&self.hashes)
        ])?;
        self.hashes.clear();
        self.blob.clear();
        self.events = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// Give every stored row without a filter (a file written before `round_uuids` existed)
/// its filter, in the opening transaction: it reads those rows, once.
fn add_uuid_filters(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    segments: &Segments,
) -> Result<()> {
    let mut added = 0u64;
    {
        let mut read = tx.prepare(
            "SELECT first_seq, events FROM rounds
             WHERE first_seq NOT IN (SELECT first_seq FROM round_uuids)",
        )?;
        let mut put =
            tx.prepare("INSERT OR REPLACE INTO round_uuids (first_seq, filter) VALUES (?1, ?2)")?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let first_seq = seq_from_sql(row.get(0)?);
            let blob = events_of(segments, row, 1)?;
            let events = decode_round(first_seq, &blob)?;
            let hashes: Vec<u64> = events.iter().map(|e| uuid_filter::hash(e.uuid)).collect();
            put.execute(params![seq_sql(first_seq), uuid_filter::build(&hashes)])?;
            added += 1;
        }
    }
    tx.execute(MARK_UUID_FILTERS, [])?;
    tracing::info!(
        "{}: added uuid filters to {added} stored row(s)",
        path.display()
    );
    Ok(())
}

/// Every stored row has its `round_uuids` filter from now on.
const MARK_UUID_FILTERS: &str =
    "INSERT OR REPLACE INTO meta (key, value) VALUES ('uuid_filters', 1)";

/// Format 1 stored one row per event with indexes on time and topic; convert its rows into
/// stored rows of [`ROW_EVENTS`] in the opening transaction, clamping receive times so that
/// they never decrease with seq.
fn convert_per_event_rows(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    {
        let mut read =
            tx.prepare("SELECT seq, received_ms, topic, uuid, frames FROM entries ORDER BY seq")?;
        let mut rows = read.query([])?;
        // Inline: the file was written before segments, and the transaction may yet fail.
        let mut writer = RowWriter::new(tx, true, None)?;
        let mut last_ms = i64::MIN;
        while let Some(row) = rows.next()? {
            let seq = seq_from_sql(row.get(0)?);
            last_ms = last_ms.max(row.get(1)?);
            let topic: String = row.get(2)?;
            let uuid: String = row.get(3)?;
            let blob: Vec<u8> = row.get(4)?;
            let frames = decode_frames(&blob).map_err(|why| JournalError::Damaged { seq, why })?;
            writer.push(seq, last_ms, &topic, &uuid, &frames)?;
        }
        writer.finish()?;
    }
    tx.execute_batch("DROP TABLE entries;")?;
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'format'", [FORMAT])?;
    Ok(())
}

/// One event inside a stored row, borrowed from its blob.
struct EventRef<'a> {
    seq: u64,
    received_ms: i64,
    topic: &'a str,
    uuid: &'a str,
    /// The event's frames, encoded as [`encode_frames`] does.
    frames: &'a [u8],
}

impl EventRef<'_> {
    fn to_entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            received_ms: self.received_ms,
            topic: self.topic.to_string(),
            uuid: self.uuid.to_string(),
            // Checked by decode_round already.
            frames: decode_frames(self.frames).unwrap_or_default(),
        }
    }

    /// Bytes of frames, without their length prefixes (what `max_bytes` counts).
    fn bytes(&self) -> u64 {
        let mut n = 0u64;
        let mut rest = self.frames;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            n += len as u64;
            rest = tail.get(len..).unwrap_or_default();
        }
        n
    }
}

/// One event of a stored row: received_ms (i64), topic and uuid (u32 length, UTF-8), the
/// frames' encoded length (u32) and the frames as [`encode_frames`] writes them; all
/// little-endian.
fn encode_event<F: Frame>(
    out: &mut Vec<u8>,
    received_ms: i64,
    topic: &str,
    uuid: &str,
    frames: &[F],
) {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&received_ms.to_le_bytes());
    out.extend_from_slice(&len32(topic.len()));
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&len32(uuid.len()));
    out.extend_from_slice(uuid.as_bytes());
    let encoded: usize = frames.iter().map(|f| f.len() + 4).sum();
    out.extend_from_slice(&len32(encoded));
    encode_frames(frames, out);
}

/// The events of one stored row, which starts at `first_seq`.
fn decode_round(first_seq: u64, mut blob: &[u8]) -> Result<Vec<EventRef<'_>>> {
    let mut events = Vec::new();
    let mut seq = first_seq;
    while !blob.is_empty() {
        let damaged = |why: &str| JournalError::Damaged {
            seq,
            why: why.to_string(),
        };
        let (ms, rest) = blob
            .split_first_chunk::<8>()
            .ok_or_else(|| damaged("truncated receive time"))?;
        let received_ms = i64::from_le_bytes(*ms);
        let (topic, rest) = take_counted(rest).ok_or_else(|| damaged("truncated topic"))?;
        let (uuid, rest) = take_counted(rest).ok_or_else(|| damaged("truncated uuid"))?;
        let (frames, rest) = take_counted(rest).ok_or_else(|| damaged("truncated frames"))?;
        decode_frames(frames).map_err(|why| damaged(&why))?;
        events.push(EventRef {
            seq,
            received_ms,
            topic: std::str::from_utf8(topic).map_err(|_| damaged("topic is not UTF-8"))?,
            uuid: std::str::from_utf8(uuid).map_err(|_| damaged("uuid is not UTF-8"))?,
            frames,
        });
        seq += 1;
        blob = rest;
    }
    Ok(events)
}

/// A u32 little-endian length and that many bytes; the rest.
fn take_counted(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = blob.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The encoded events of the stored row whose `events` column is column `i` of `row`:
/// the blob itself, or what it refers to in a segment.
fn events_of<'r>(
    segments: &Segments,
    row: &'r rusqlite::Row<'_>,
    i: usize,
) -> Result<std::borrow::Cow<'r, [u8]>> {
    segments.resolve(blob_of_column(row, i)?)
}

fn blob_of_column<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r [u8]> {
    row.get_ref(i)?.as_blob().map_err(|e| {
        JournalError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            Box::new(e),
        ))
    })
}

fn lock_writer(path: &Path) -> Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let io = |e: std::io::Error| JournalError::Io(format!("{}: {e}", lock_path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(JournalError::InUse(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

fn meta_get<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// (head seq, first retained seq), from the rows, or from the prune mark once every row
/// is gone, so seqs never restart after a full prune.
fn head_and_first(conn: &Connection) -> Result<(u64, u64)> {
    let (max, min): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT last_seq FROM rounds ORDER BY first_seq DESC LIMIT 1),
                (SELECT MIN(first_seq) FROM rounds)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    match (max, min) {
        (Some(max), Some(min)) => Ok((seq_from_sql(max), seq_from_sql(min))),
        _ => {
            let pruned = meta_get::<i64>(conn, "pruned_seq")?.map_or(0, seq_from_sql);
            Ok((pruned, pruned + 1))
        }
    }
}

fn seq_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Frames as one blob: per frame a little-endian u32 length, then the bytes.
fn encode_frames<F: Frame>(frames: &[F], out: &mut Vec<u8>) {
    out.reserve(frames.iter().map(|f| f.len() + 4).sum());
    for frame in frames {
        // Frames come from a socket capped by relay.max_message_size, far below 4 GiB.
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&frame[..len as usize]);
    }
}

fn decode_frames(mut blob: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut frames = Vec::new();
    while !blob.is_empty() {
        let Some((len, rest)) = blob.split_first_chunk::<4>() else {
            return Err("truncated frame length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("frame of {len} bytes, {} left", rest.len()));
        }
        let (frame, rest) = rest.split_at(len);
        frames.push(frame.to_vec());
        blob = rest;
    }
    Ok(frames)
}

#[cfg(test)]
mod segment_tests;
#[cfg(test)]
mod tests;
