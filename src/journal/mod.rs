//! The relay journal: every frame the relay publishes, with its seq, in SQLite, written
//! before it is published and acked, so that subscribers can fetch what they missed.
//!
//! A journal file has one `epoch` (a UUID made when the file is created) and seq numbers
//! that keep increasing across reopens of that file; a new epoch starts only with a new
//! file. Rows are contiguous: appends add at the head, [`Journal::prune`] only removes a
//! prefix, so the retained rows are exactly `first_seq..=head_seq`. The replay protocol
//! built on it lives in [`replay`]; its wire format is in docs/architecture.md.
//!
//! Everything here blocks on disk. The relay's socket thread is a plain thread, which is
//! where it belongs; never call it from the tokio loop.

pub mod replay;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

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

/// One event to append: the multipart frames exactly as published.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub frames: &'a [Vec<u8>],
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    uuid TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    frames BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_received ON entries(received_ms);
CREATE INDEX IF NOT EXISTS entries_topic ON entries(topic);
DROP INDEX IF EXISTS entries_uuid;
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

/// The journal format this code writes; a file with another one is refused, not guessed at.
const FORMAT: i64 = 1;

pub struct Journal {
    conn: Connection,
    epoch: String,
    read_only: bool,
    /// The file has `entries_topic` (a read-only open of a journal from before it may not).
    topic_index: bool,
    retention: Retention,
    /// The last seq written; survives pruning through `meta.pruned_seq`.
    head_seq: u64,
    /// Sum of `entries.bytes`, kept here so appends need not ask SQLite.
    stored_bytes: u64,
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
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(JournalError::NotAJournal(
                    path.display().to_string(),
                    format!("format {other}, this hark reads format {FORMAT}"),
                ))
            }
        }
        tx.commit()?;
        let mut journal = Journal::from_conn(conn, path, false)?;
        journal.retention = retention;
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
        let (head_seq, _) = head_and_first(&conn)?;
        // Only the writer needs the sum, and it reads every row: a reader (a history
        // query, the HTTP API) opening a journal of 10^6 events must not pay for it.
        let stored: i64 = if read_only {
            0
        } else {
            conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM entries", [], |r| {
                r.get(0)
            })?
        };
        let topic_index: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'entries_topic')",
            [],
            |r| r.get(0),
        )?;
        Ok(Journal {
            conn,
            epoch,
            read_only,
            topic_index,
            retention: Retention::default(),
            head_seq,
            stored_bytes: u64::try_from(stored).unwrap_or(0),
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
    /// and the seqs are not used up.
    pub fn append_batch(&mut self, entries: &[NewEntry<'_>]) -> Result<u64> {
        if self.read_only {
            return Err(JournalError::ReadOnly);
        }
        let first = self.next_seq();
        if entries.is_empty() {
            return Ok(first);
        }
        let mut added = 0u64;
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (seq, received_ms, topic, uuid, bytes, frames)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut blob = Vec::new();
            for (seq, entry) in (first..).zip(entries) {
                blob.clear();
                encode_frames(entry.frames, &mut blob);
                let bytes: u64 = entry.frames.iter().map(|f| f.len() as u64).sum();
                insert.execute(params![
                    seq_sql(seq),
                    entry.received_ms,
                    entry.topic,
                    entry.uuid,
                    i64::try_from(bytes).unwrap_or(i64::MAX),
                    blob,
                ])?;
                added += bytes;
            }
        }
        // A failed commit drops `tx`, which rolls back; the counters below only move once
        // the rows are on disk, so a failure leaves nothing half-counted.
        tx.commit()?;
        self.head_seq += entries.len() as u64;
        self.stored_bytes += added;
        Ok(first)
    }

    /// Drop the oldest rows that are older than `max_age` at `now_ms` or that push the
    /// stored bytes over `max_bytes`, at most a bounded number per call.
    pub fn prune(&mut self, now_ms: i64) -> Result<Pruned> {
        if self.read_only {
            return Err(JournalError::ReadOnly);
        }
        let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms.saturating_sub(max_age_ms);
        let excess = self.stored_bytes.saturating_sub(self.retention.max_bytes);
        let tx = self.conn.transaction()?;
        // Walk from the oldest row: it goes while it is too old or bytes are still in
        // excess. Stopping at the first row that may stay keeps the rows contiguous even
        // if the clock once jumped backwards.
        let mut last: Option<(u64, i64)> = None;
        let mut rows = 0u64;
        let mut freed = 0u64;
        let mut more = false;
        {
            let mut oldest = tx.prepare_cached(
                "SELECT seq, received_ms, bytes FROM entries ORDER BY seq LIMIT ?1",
            )?;
            let mut cursor = oldest.query(params![PRUNE_BATCH + 1])?;
            while let Some(row) = cursor.next()? {
                let seq: i64 = row.get(0)?;
                let received: i64 = row.get(1)?;
                let bytes: i64 = row.get(2)?;
                if received >= cutoff_ms && freed >= excess {
                    break;
                }
                if rows == PRUNE_BATCH as u64 {
                    more = true;
                    break;
                }
                rows += 1;
                freed += u64::try_from(bytes).unwrap_or(0);
                let horizon = last.map_or(received, |(_, ms)| ms.max(received));
                last = Some((u64::try_from(seq).unwrap_or(0), horizon));
            }
        }
        let Some((through_seq, newest_ms)) = last else {
            return Ok(Pruned::default());
        };
        tx.execute(
            "DELETE FROM entries WHERE seq <= ?1",
            params![seq_sql(through_seq)],
        )?;
        let previous_ms: Option<i64> = meta_get(&tx, "pruned_ms")?;
        let horizon = previous_ms.map_or(newest_ms, |p| p.max(newest_ms));
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_seq', ?1), ('pruned_ms', ?2)",
            params![seq_sql(through_seq), horizon],
        )?;
        tx.commit()?;
        self.stored_bytes = self.stored_bytes.saturating_sub(freed);
        Ok(Pruned {
            rows,
            bytes: freed,
            more,
        })
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

    /// The seq span that can hold rows received in `from_ms..=to_ms`: from the first
    /// seq received at or after `from_ms` to the last received at or before `to_ms`.
    /// Receive times follow seq except across a clock step, which is why rows in the span
    /// are still filtered by time.
    pub fn seqs_for_time(&self, from_ms: i64, to_ms: i64) -> Result<Option<(u64, u64)>> {
        let span: (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT (SELECT MIN(seq) FROM entries WHERE received_ms >= ?1),
                    (SELECT MAX(seq) FROM entries WHERE received_ms <= ?2)",
            params![from_ms, to_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(match span {
            (Some(a), Some(b)) if a <= b => Some((seq_from_sql(a), seq_from_sql(b))),
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
        let mut sql = String::from(
            "SELECT seq, received_ms, topic, uuid, frames FROM entries
             WHERE seq >= ?1 AND seq <= ?2 AND received_ms >= ?3 AND received_ms <= ?4",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            seq_sql(from).into(),
            seq_sql(window_end).into(),
            selection.from_ms.unwrap_or(i64::MIN).into(),
            selection.to_ms.unwrap_or(i64::MAX).into(),
        ];
        let prefixes: Vec<&String> = selection.topic_prefixes.iter().collect();
        if !prefixes.is_empty() && !prefixes.iter().any(|p| p.is_empty()) {
            sql.push_str(" AND (");
            for (i, prefix) in prefixes.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                let n = args.len() + 1;
                // substr/length count characters on TEXT; for a valid UTF-8 prefix that is
                // the same test as a bytewise prefix, which is what a SUB socket does.
                sql.push_str(&format!("substr(topic, 1, length(?{n})) = ?{n}"));
                args.push((*prefix).clone().into());
            }
            sql.push(')');
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len() + 1));
        args.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query(rusqlite::params_from_iter(args))?;
        let entries = collect_entries(rows)?;
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

    /// Rows of one [`Scan`] in its order. With a topic, the topic index (topic, seq) makes
    /// this a seek and a walk of that topic's rows only, however long the journal is.
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
        let order = if scan.descending { "DESC" } else { "ASC" };
        let (index, topic_test) = match (scan.topic, self.topic_index) {
            (Some(_), true) => ("INDEXED BY entries_topic", "topic = ?5"),
            (Some(_), false) => ("", "topic = ?5"),
            (None, _) => ("NOT INDEXED", "?5 IS NULL"),
        };
        // NOT INDEXED keeps a walk without a topic on the rowid (seq) order: with a time
        // bound SQLite would otherwise pick the time index and sort.
        let sql = format!(
            "SELECT seq, received_ms, topic, uuid, frames FROM entries {index}
             WHERE seq >= ?1 AND seq <= ?2 AND received_ms >= ?3 AND received_ms <= ?4
               AND {topic_test}
             ORDER BY seq {order} LIMIT ?6"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query(params![
            seq_sql(lo),
            seq_sql(hi),
            scan.from_ms.unwrap_or(i64::MIN),
            scan.to_ms.unwrap_or(i64::MAX),
            scan.topic,
            i64::try_from(scan.limit).unwrap_or(i64::MAX),
        ])?;
        collect_entries(rows)
    }

    /// The distinct topics starting with `prefix`, in byte order, found by skipping
    /// through the topic index (one seek per topic, not a walk over the rows); `None` when
    /// there are more than `max` or the file has no topic index.
    pub fn topics_with_prefix(&self, prefix: &str, max: usize) -> Result<Option<Vec<String>>> {
        if !self.topic_index {
            return Ok(None);
        }
        let mut next = self.conn.prepare_cached(
            "SELECT MIN(topic) FROM entries INDEXED BY entries_topic WHERE topic > ?1",
        )?;
        let mut first = self.conn.prepare_cached(
            "SELECT MIN(topic) FROM entries INDEXED BY entries_topic WHERE topic >= ?1",
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
    /// different publishers reused it outside the dedupe window. This walks the journal:
    /// an index on uuid (random keys) tripled the journal thread's CPU per append
    /// (docs/benchmarks.md), so a lookup by id pays instead of every write.
    pub fn with_uuid(&self, uuid: &str) -> Result<Vec<Entry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, received_ms, topic, uuid, frames FROM entries WHERE uuid = ?1
             ORDER BY seq DESC LIMIT 16",
        )?;
        let rows = stmt.query([uuid])?;
        collect_entries(rows)
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

/// Rows of `SELECT seq, received_ms, topic, uuid, frames` as entries.
fn collect_entries(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let seq = seq_from_sql(row.get(0)?);
        let blob: Vec<u8> = row.get(4)?;
        let frames = decode_frames(&blob).map_err(|why| JournalError::Damaged { seq, why })?;
        entries.push(Entry {
            seq,
            received_ms: row.get(1)?,
            topic: row.get(2)?,
            uuid: row.get(3)?,
            frames,
        });
    }
    Ok(entries)
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
    let (max, min): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MAX(seq), MIN(seq) FROM entries", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
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
fn encode_frames(frames: &[Vec<u8>], out: &mut Vec<u8>) {
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
mod tests;
