//! The trigger daemon's durable state in SQLite: jobs (pending, running, finished), the
//! events each job carries, which (rule, event uuid) pairs already succeeded, the last
//! relay seq per epoch, and each fallback rule's clock (its last start).
//!
//! A job row is written before its command starts and updated as it moves on, so that after
//! a crash or an upgrade pending jobs run, interrupted ones run again, and nothing that
//! succeeded runs twice. `hark jobs` reads and edits the same file while the daemon runs
//! (WAL mode); the daemon picks up retries and cancel requests on its next tick.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sources::replay::Unrecoverable;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::launch::Reason;
use super::scheduler::{Effect, Recovered};
use crate::event::Event;

/// Job states. `pending` and `running` are live; the rest are outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
    Superseded,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Skipped => "skipped",
            State::Superseded => "superseded",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "timed_out" => State::TimedOut,
            "skipped" => State::Skipped,
            "superseded" => State::Superseded,
            "cancelled" => State::Cancelled,
            _ => return None,
        })
    }

    pub fn is_live(self) -> bool {
        matches!(self, State::Pending | State::Running)
    }
}

/// One event as a job carries it: the exact JSON received plus what verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub uuid: String,
    pub topic: String,
    pub signers: Vec<String>,
    /// The event JSON exactly as received.
    pub json: String,
}

impl StoredEvent {
    /// Parse the stored JSON back into the event it was (once, when a job is loaded); the
    /// text becomes the event's received bytes without a copy.
    pub fn into_event(self) -> std::result::Result<Event, String> {
        let value = crate::event::parse_json(self.json.as_bytes()).map_err(|e| e.to_string())?;
        let mut event = Event::from_value(value).map_err(|e| e.to_string())?;
        event.signers = self.signers;
        event.frames = vec![self.json.into_bytes()];
        Ok(event)
    }
}

impl From<&Event> for StoredEvent {
    fn from(e: &Event) -> Self {
        let row = EventRow::from(e);
        StoredEvent {
            uuid: e.uuid.clone(),
            topic: e.topic.clone(),
            signers: e.signers.clone(),
            json: row.json.into_owned(),
        }
    }
}

/// The columns of one `job_events` row, borrowed from whichever form the event is in.
struct EventRow<'a> {
    uuid: &'a str,
    topic: &'a str,
    signers: &'a [String],
    json: std::borrow::Cow<'a, str>,
}

impl<'a> From<&'a StoredEvent> for EventRow<'a> {
    fn from(e: &'a StoredEvent) -> Self {
        EventRow {
            uuid: &e.uuid,
            topic: &e.topic,
            signers: &e.signers,
            json: std::borrow::Cow::Borrowed(&e.json),
        }
    }
}

impl<'a> From<&'a Event> for EventRow<'a> {
    fn from(e: &'a Event) -> Self {
        // Received frames were checked to be UTF-8 at parse time, so this borrows.
        let json = match e.json_bytes() {
            std::borrow::Cow::Borrowed(b) => String::from_utf8_lossy(b),
            std::borrow::Cow::Owned(b) => {
                std::borrow::Cow::Owned(String::from_utf8_lossy(&b).into_owned())
            }
        };
        EventRow {
            uuid: &e.uuid,
            topic: &e.topic,
            signers: &e.signers,
            json,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub rule: String,
    pub key: String,
    pub state: State,
    pub attempt: u32,
    /// Milliseconds since the epoch.
    pub created: i64,
    pub due: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub exit_code: Option<i32>,
    pub argv: Vec<String>,
    pub error: Option<String>,
    pub output_tail: Option<String>,
    pub cancel_requested: bool,
    /// `event`, or `fallback` for a run of the rule's safety-net schedule.
    pub reason: Reason,
    /// The transient systemd unit it ran as (`run.unit`), if it did.
    pub unit: Option<String>,
    pub events: Vec<StoredEvent>,
}

/// A fallback rule's clock as stored: the fallback runs at `last + every` unless the rule
/// starts a job before then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FallbackClock {
    pub rule: String,
    /// Milliseconds since the epoch: the rule's last start, or when it was first seen.
    pub last: i64,
    /// The interval in milliseconds, as the rule said when the clock was last written.
    pub every: i64,
}

impl FallbackClock {
    pub fn next_due(&self) -> i64 {
        self.last.saturating_add(self.every)
    }
}

impl Job {
    pub fn last_event(&self) -> Option<&StoredEvent> {
        self.events.last()
    }

    /// The job as the scheduler holds it, every event parsed once; the error says why a
    /// stored event is unreadable.
    pub fn into_recovered(self) -> std::result::Result<Recovered, String> {
        let events = self
            .events
            .into_iter()
            .map(|e| e.into_event().map(Arc::new))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Recovered {
            id: self.id,
            rule: self.rule,
            key: self.key,
            created: self.created,
            due: self.due,
            attempt: self.attempt,
            reason: self.reason,
            events,
        })
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    created INTEGER NOT NULL,
    due INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER,
    exit_code INTEGER,
    argv TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    output_tail TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT 'event',
    unit TEXT
);
CREATE INDEX IF NOT EXISTS jobs_live ON jobs(state) WHERE state IN ('pending', 'running');
CREATE TABLE IF NOT EXISTS job_events (
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    topic TEXT NOT NULL,
    signers TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (job, pos)
);
-- AMQP redeliveries: is a (rule, uuid) already filed? (Store::filed)
CREATE INDEX IF NOT EXISTS job_events_uuid ON job_events(uuid);
CREATE TABLE IF NOT EXISTS done (
    rule TEXT NOT NULL,
    uuid TEXT NOT NULL,
    job INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (rule, uuid)
);
CREATE TABLE IF NOT EXISTS relay_seq (
    relay TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (relay, epoch)
);
CREATE TABLE IF NOT EXISTS fallback_clock (
    rule TEXT PRIMARY KEY,
    last INTEGER NOT NULL,
    every INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lost_events (
    relay TEXT NOT NULL,
    epoch TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    why TEXT NOT NULL,
    noticed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_heartbeat INTEGER,
    last_event INTEGER,
    silent INTEGER NOT NULL,
    written INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
";

/// Bring a state file written by an older hark up to [`SCHEMA`]: columns added since.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_reason: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'reason'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_reason {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN reason TEXT NOT NULL DEFAULT 'event'")?;
    }
    let has_unit: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'unit'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_unit {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN unit TEXT")?;
    }
    let has_updated: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('relay_seq') WHERE name = 'updated'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_updated {
        conn.execute_batch("ALTER TABLE relay_seq ADD COLUMN updated INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

/// How far the daemon got in one relay epoch's stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayProgress {
    pub relay: String,
    pub epoch: String,
    pub seq: u64,
    /// When an event of it was last stored (ms since the Unix epoch).
    pub updated: i64,
}

/// Which jobs [`Store::select`] returns: all filters must pass; empty ones pass all.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub states: Vec<State>,
    pub rules: Vec<String>,
    /// Created at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    pub limit: usize,
}

impl Store {
    /// Open (creating if needed) the state file.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| damaged(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // A job's path alone uses about a dozen cached statements, and reading `hark jobs`
        // requests and the health more; rusqlite's default of 16 leaves little room before
        // its LRU evicts one that is then parsed again.
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: a commit is in the WAL (the kernel's page cache) before anything runs, so
        // a killed daemon (SIGKILL, OOM, panic) loses nothing; only a power loss can take
        // the last commits, and then the relay journals and the catch-up by sequence
        // number bring their events back (docs/architecture.md, "Durability"). Commits
        // that let a broker forget a delivery fsync anyway ([`Store::durable`]).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store { conn })
    }

    /// Until `durable(false)`, commits fsync (`synchronous=FULL`): for transactions after
    /// which nobody else keeps their events, such as AMQP deliveries acked once stored.
    /// The fsync also makes every earlier commit durable (they are before it in the WAL).
    pub fn durable(&mut self, on: bool) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", if on { "FULL" } else { "NORMAL" })
    }

    /// Start a group commit: the writes until [`Store::commit`] become durable with one
    /// fsync instead of one each (every write method is one unit, inside it or on its own).
    pub fn begin(&mut self) -> Result<()> {
        // Cached like every statement on a job's path: parsing it again for every
        // transaction was a measurable part of the daemon's CPU per job.
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")?
            .execute([])
            .map(drop)
    }

    /// End a group commit; on failure everything since [`Store::begin`] is rolled back.
    pub fn commit(&mut self) -> Result<()> {
        let committed = self.conn.prepare_cached("COMMIT")?.execute([]).map(drop);
        committed.inspect_err(|_| self.rollback())
    }

    /// Abandon a group commit (after a failed write in it); nothing since [`Store::begin`]
    /// is kept. SQLite may already have rolled back by itself (a full disk does that), so
    /// "no transaction is active" is not an error here.
    pub fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Run `write` as one unit: inside a group commit as part of it (whoever began it rolls
    /// the whole of it back when a write fails), otherwise in a savepoint of its own. A
    /// savepoint in every write of a group commit only parsed two more statements per job.
    fn atomically<T>(&mut self, write: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return write(&self.conn);
        }
        let tx = self.conn.savepoint()?;
        let out = write(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Inside a group commit? A write that failed may have ended it (SQLite rolls back by
    /// itself on a full disk), and later writes would then commit one by one.
    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// A new pending job carrying `events`, due at `due`.
    pub fn insert_pending(
        &mut self,
        rule: &str,
        key: &str,
        due: i64,
        events: &[StoredEvent],
    ) -> Result<i64> {
        self.atomically(|tx| {
            tx.prepare_cached(
                "INSERT INTO jobs (rule, key, state, created, due) VALUES (?1, ?2, 'pending', ?3, ?4)",
            )?
            .execute(params![rule, key, now_ms(), due])?;
            let id = tx.last_insert_rowid();
            for (pos, ev) in events.iter().enumerate() {
                insert_event(tx, id, pos, &ev.into())?;
            }
            Ok(id)
        })
    }

    /// Reserve `n` job ids for the daemon: later AUTOINCREMENT inserts (`hark jobs retry`)
    /// get ids after them. Commits at once, so call it outside a group commit: a rolled
    /// back reservation would hand out ids someone else may take.
    pub fn reserve_job_ids(&mut self, n: u32) -> Result<Range<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq: i64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0),
                        COALESCE((SELECT MAX(id) FROM jobs), 0))",
            [],
            |r| r.get(0),
        )?;
        let end = seq + i64::from(n);
        let updated = tx.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'jobs'",
            [end],
        )?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?1)",
                [end],
            )?;
        }
        tx.commit()?;
        Ok(seq + 1..end + 1)
    }

    /// A new pending job with an id from [`Store::reserve_job_ids`].
    #[allow(clippy::too_many_arguments)]
    pub fn insert_job(
        &mut self,
        id: i64,
        rule: &str,
        key: &str,
        created: i64,
        due: i64,
        reason: Reason,
        events: &[Arc<Event>],
    ) -> Result<()> {
        self.atomically(|tx| {
            tx.prepare_cached(
                "INSERT INTO jobs (id, rule, key, state, created, due, reason) VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6)",
            )?
            .execute(params![id, rule, key, created, due, reason.as_str()])?;
            for (pos, ev) in events.iter().enumerate() {
                insert_event(tx, id, pos, &ev.as_ref().into())?;
            }
            Ok(())
        })
    }

    /// Add an event at `pos` to a pending job (coalescing) and move its due time.
    pub fn append_event_at(&mut self, job: i64, pos: usize, event: &Event, due: i64) -> Result<()> {
        self.atomically(|tx| {
            insert_event(tx, job, pos, &event.into())?;
            tx.prepare_cached("UPDATE jobs SET due = ?2 WHERE id = ?1")?
                .execute(params![job, due])?;
            Ok(())
        })
    }

    /// Write one scheduler effect. Returns false only for a [`Effect::Start`] of a job that
    /// is no longer pending (a `hark jobs cancel` won): it must not run.
    pub fn apply(&mut self, effect: &Effect) -> Result<bool> {
        match effect {
            Effect::Insert {
                id,
                rule,
                key,
                created,
                due,
                reason,
                events,
            } => self.insert_job(*id, rule, key, *created, *due, *reason, events)?,
            Effect::Clock { rule, at, every } => self.save_fallback_clock(rule, *at, *every)?,
            Effect::Append {
                id,
                pos,
                event,
                due,
                ..
            } => self.append_event_at(*id, *pos, event, *due)?,
            Effect::Start(launch) => {
                let unit = launch
                    .spec
                    .unit
                    .as_ref()
                    .map(|_| crate::jobs::unit::unit_name(launch.id));
                let started =
                    self.mark_running_as(launch.id, &launch.spec.argv, unit.as_deref())?;
                // The clock moves in the same transaction as the start it counts.
                if let (true, Some(fb)) = (started, &launch.rule.fallback) {
                    let every = i64::try_from(fb.every.as_millis()).unwrap_or(i64::MAX);
                    self.save_fallback_clock(&launch.rule.name, now_ms(), every)?;
                }
                return Ok(started);
            }
            Effect::Retry {
                id,
                due,
                error,
                exit_code,
                tail,
                ..
            } => self.schedule_retry(*id, *due, error.as_deref(), *exit_code, tail.as_deref())?,
            Effect::Finish(f) => self.finish(
                f.id,
                f.state,
                f.exit_code,
                f.error.as_deref(),
                f.tail.as_deref(),
            )?,
            Effect::Cancel(_) | Effect::Ended { .. } | Effect::LeftRunning { .. } => {}
        }
        Ok(true)
    }

    /// Add an event to a pending job (coalescing) and move its due time.
    pub fn append_event(&mut self, job: i64, event: &StoredEvent, due: i64) -> Result<()> {
        self.atomically(|tx| {
            let pos: i64 = tx.query_row(
                "SELECT COALESCE(MAX(pos) + 1, 0) FROM job_events WHERE job = ?1",
                [job],
                |r| r.get(0),
            )?;
            insert_event(tx, job, usize::try_from(pos).unwrap_or(0), &event.into())?;
            tx.prepare_cached("UPDATE jobs SET due = ?2 WHERE id = ?1")?
                .execute(params![job, due])?;
            Ok(())
        })
    }

    /// pending → running, only if still pending (a `hark jobs cancel` may have won).
    pub fn mark_running(&mut self, job: i64, argv: &[String]) -> Result<bool> {
        self.mark_running_as(job, argv, None)
    }

    /// [`Store::mark_running`], naming the transient systemd unit it runs as.
    pub fn mark_running_as(
        &mut self,
        job: i64,
        argv: &[String],
        unit: Option<&str>,
    ) -> Result<bool> {
        let argv = serde_json::to_string(argv).unwrap_or_else(|_| "[]".into());
        let n = self.conn.prepare_cached("UPDATE jobs SET state = 'running', started = ?2, argv = ?3, unit = ?4, finished = NULL, exit_code = NULL, error = NULL
             WHERE id = ?1 AND state = 'pending'")?.execute(
            params![job, now_ms(), argv, unit],
        )?;
        Ok(n == 1)
    }

    /// Record an outcome. On success, every event uuid of the job is marked done for the rule.
    pub fn finish(
        &mut self,
        job: i64,
        state: State,
        exit_code: Option<i32>,
        error: Option<&str>,
        output_tail: Option<&str>,
    ) -> Result<()> {
        self.atomically(|tx| {
            tx.prepare_cached("UPDATE jobs SET state = ?2, finished = ?3, exit_code = ?4, error = ?5, output_tail = ?6, cancel_requested = 0 WHERE id = ?1")?.execute(
                params![job, state.as_str(), now_ms(), exit_code, error, output_tail],
            )?;
            if state == State::Succeeded {
                // The rule by a subquery, not a join: SQLite plans the join again in every
                // transaction (a re-prepare per finished job, measured), not this.
                tx.prepare_cached("INSERT OR IGNORE INTO done (rule, uuid, job, at)
                     SELECT (SELECT rule FROM jobs WHERE id = ?1), e.uuid, e.job, ?2 FROM job_events e WHERE e.job = ?1")?.execute(
                    params![job, now_ms()],
                )?;
            }
            Ok(())
        })
    }

    /// Put a job back to pending for another attempt at `due`.
    pub fn schedule_retry(
        &mut self,
        job: i64,
        due: i64,
        error: Option<&str>,
        exit_code: Option<i32>,
        output_tail: Option<&str>,
    ) -> Result<()> {
        self.conn.prepare_cached("UPDATE jobs SET state = 'pending', attempt = attempt + 1, due = ?2, finished = ?3, error = ?4, exit_code = ?5, output_tail = ?6
             WHERE id = ?1")?.execute(
            params![job, due, now_ms(), error, exit_code, output_tail],
        )?;
        Ok(())
    }

    /// After a restart: jobs that were running were interrupted; they run again.
    pub fn recover_interrupted(&mut self) -> Result<usize> {
        self.conn.prepare_cached("UPDATE jobs SET state = 'pending', error = 'interrupted: the daemon stopped while this job ran', due = ?1 WHERE state = 'running'")?.execute(
            [now_ms()],
        )
    }

    /// Did `rule` already succeed for event `uuid`?
    pub fn succeeded(&self, rule: &str, uuid: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM done WHERE rule = ?1 AND uuid = ?2")?
            .query_row(params![rule, uuid], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    /// Is event `uuid` already filed for `rule`: in a job of any state, or done? A message
    /// a broker redelivers (its ack was lost with the connection) is then not filed twice.
    pub fn filed(&self, rule: &str, uuid: &str) -> Result<bool> {
        if self.succeeded(rule, uuid)? {
            return Ok(true);
        }
        self.conn
            .prepare_cached(
                "SELECT 1 FROM job_events e JOIN jobs j ON j.id = e.job \
                 WHERE e.uuid = ?1 AND j.rule = ?2 LIMIT 1",
            )?
            .query_row(params![uuid, rule], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    pub fn get(&self, id: i64) -> Result<Option<Job>> {
        let job = self
            .conn
            .query_row(&format!("{JOB_SELECT} WHERE id = ?1"), [id], row_to_job)
            .optional()?;
        match job {
            Some(mut j) => {
                j.events = self.events(j.id)?;
                Ok(Some(j))
            }
            None => Ok(None),
        }
    }

    fn events(&self, job: i64) -> Result<Vec<StoredEvent>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT uuid, topic, signers, json FROM job_events WHERE job = ?1 ORDER BY pos",
        )?;
        let rows = stmt.query_map([job], |r| {
            let signers: String = r.get(2)?;
            Ok(StoredEvent {
                uuid: r.get(0)?,
                topic: r.get(1)?,
                signers: serde_json::from_str(&signers).map_err(|e| {
                    damaged(format!(
                        "job {job}: an event's signers {signers:?} are not a JSON list ({e})"
                    ))
                })?,
                json: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Jobs in `states` (all if empty), newest first, at most `limit`. Events not loaded
    /// except the first, for display.
    pub fn list(&self, states: &[State], limit: usize) -> Result<Vec<Job>> {
        self.select(&Selection {
            states: states.to_vec(),
            limit,
            ..Selection::default()
        })
    }

    /// Jobs that pass every filter of `sel`, newest first.
    pub fn select(&self, sel: &Selection) -> Result<Vec<Job>> {
        let mut clauses = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if !sel.states.is_empty() {
            let names: Vec<String> = sel
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            clauses.push(format!("state IN ({})", names.join(",")));
        }
        if !sel.rules.is_empty() {
            let marks: Vec<String> = sel
                .rules
                .iter()
                .map(|r| {
                    values.push(r.clone().into());
                    format!("?{}", values.len())
                })
                .collect();
            clauses.push(format!("rule IN ({})", marks.join(",")));
        }
        if let Some(since) = sel.since_ms {
            values.push(since.into());
            clauses.push(format!("created >= ?{}", values.len()));
        }
        values.push(i64::try_from(sel.limit).unwrap_or(i64::MAX).into());
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "{JOB_SELECT}{filter} ORDER BY id DESC LIMIT ?{}",
            values.len()
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let jobs = stmt
            .query_map(rusqlite::params_from_iter(values), row_to_job)?
            .collect::<Result<Vec<_>>>()?;
        jobs.into_iter()
            .map(|mut j| {
                j.events = self.events(j.id)?.into_iter().take(1).collect();
                Ok(j)
            })
            .collect()
    }

    /// Live jobs with their events (for the scheduler at start and on each tick).
    pub fn live_jobs(&self, after_id: i64) -> Result<Vec<Job>> {
        let mut stmt = self.conn.prepare(&format!(
            "{JOB_SELECT} WHERE state IN ('pending', 'running') AND id > ?1 ORDER BY id"
        ))?;
        let jobs = stmt
            .query_map([after_id], row_to_job)?
            .collect::<Result<Vec<_>>>()?;
        jobs.into_iter()
            .map(|mut j| {
                j.events = self.events(j.id)?;
                Ok(j)
            })
            .collect()
    }

    /// Ids and states of every live job (cheap: no events).
    pub fn live_ids(&self) -> Result<Vec<(i64, State)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM jobs WHERE state IN ('pending', 'running')")?;
        let rows = stmt.query_map([], |r| {
            let id: i64 = r.get(0)?;
            let state: String = r.get(1)?;
            Ok((id, parse_state(id, &state)?))
        })?;
        rows.collect()
    }

    /// Ids of live jobs someone asked to cancel.
    pub fn cancel_requests(&self) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM jobs WHERE cancel_requested = 1 AND state IN ('pending', 'running')",
        )?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect();
        ids
    }

    /// `hark jobs cancel`: a pending job is cancelled at once; a running one is flagged for
    /// the daemon, which stops it. Returns the state the job was in.
    pub fn request_cancel(&mut self, id: i64) -> Result<Option<State>> {
        let Some(job) = self.get(id)? else {
            return Ok(None);
        };
        match job.state {
            State::Pending => {
                self.conn.prepare_cached("UPDATE jobs SET state = 'cancelled', finished = ?2, error = 'cancelled by hark jobs cancel', cancel_requested = 1 WHERE id = ?1 AND state = 'pending'")?.execute(
                    params![id, now_ms()],
                )?;
            }
            State::Running => {
                self.conn
                    .execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?;
            }
            _ => {}
        }
        Ok(Some(job.state))
    }

    /// `hark jobs retry`: a new pending job with the same rule, key and events.
    pub fn retry(&mut self, id: i64) -> Result<Option<i64>> {
        let Some(job) = self.get(id)? else {
            return Ok(None);
        };
        let new = self.insert_pending(&job.rule, &job.key, now_ms(), &job.events)?;
        Ok(Some(new))
    }

    /// How many jobs are pending (queue depth).
    pub fn count(&self, state: State) -> Result<i64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state = ?1",
            [state.as_str()],
            |r| r.get(0),
        )
    }

    /// Every fallback clock, by rule name.
    pub fn fallback_clocks(&self) -> Result<Vec<FallbackClock>> {
        let mut stmt = self
            .conn
            .prepare("SELECT rule, last, every FROM fallback_clock ORDER BY rule")?;
        let rows = stmt.query_map([], |r| {
            Ok(FallbackClock {
                rule: r.get(0)?,
                last: r.get(1)?,
                every: r.get(2)?,
            })
        })?;
        rows.collect()
    }

    /// Record that `rule`'s fallback clock counts from `at` (ms), with interval `every` (ms).
    pub fn save_fallback_clock(&mut self, rule: &str, at: i64, every: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO fallback_clock (rule, last, every) VALUES (?1, ?2, ?3)
             ON CONFLICT(rule) DO UPDATE SET last = excluded.last, every = excluded.every",
            )?
            .execute(params![rule, at, every])?;
        Ok(())
    }

    /// Remember seqs of a relay epoch that no relay could deliver again.
    pub fn record_lost(&mut self, lost: &Unrecoverable) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO lost_events (relay, epoch, first, last, why, noticed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                lost.relay,
                lost.epoch,
                i64::try_from(lost.first).unwrap_or(i64::MAX),
                i64::try_from(lost.last).unwrap_or(i64::MAX),
                lost.why,
                now_ms()
            ])?;
        Ok(())
    }

    /// Replace what the sources were last heard from (`admit::health`), stamped now.
    pub fn put_sources(&mut self, sources: &[crate::admit::health::SourceHealth]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM sources", [])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO sources (name, kind, last_heartbeat, last_event, silent, written)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let now = now_ms();
            for s in sources {
                insert.execute(params![
                    s.name,
                    s.kind,
                    s.last_heartbeat,
                    s.last_event,
                    s.silent,
                    now
                ])?;
            }
        }
        tx.commit()
    }

    /// What the sources were last heard from, with when the daemon wrote it (ms).
    pub fn sources(&self) -> Result<Vec<(crate::admit::health::SourceHealth, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, kind, last_heartbeat, last_event, silent, written FROM sources
             ORDER BY kind, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                crate::admit::health::SourceHealth {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    last_heartbeat: r.get(2)?,
                    last_event: r.get(3)?,
                    silent: r.get(4)?,
                },
                r.get(5)?,
            ))
        })?;
        rows.collect()
    }

    /// Ranges of events lost for good, newest first, with when they were noticed (ms).
    pub fn lost_events(&self, limit: usize) -> Result<Vec<(Unrecoverable, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT relay, epoch, first, last, why, noticed FROM lost_events
             ORDER BY noticed DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            let (first, last): (i64, i64) = (r.get(2)?, r.get(3)?);
            Ok((
                Unrecoverable {
                    relay: r.get(0)?,
                    epoch: r.get(1)?,
                    first: u64::try_from(first).unwrap_or(0),
                    last: u64::try_from(last).unwrap_or(0),
                    why: r.get(4)?,
                },
                r.get(5)?,
            ))
        })?;
        rows.collect()
    }

    /// The last sequence number seen per (relay, epoch).
    pub fn relay_seqs(&self) -> Result<Vec<((String, String), u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT relay, epoch, seq FROM relay_seq")?;
        let rows = stmt.query_map([], |r| {
            let seq: i64 = r.get(2)?;
            Ok(((r.get(0)?, r.get(1)?), u64::try_from(seq).unwrap_or(0)))
        })?;
        rows.collect()
    }

    /// Remember the last relay sequence number seen, per relay epoch.
    pub fn save_relay_seq(&mut self, relay: &str, epoch: &str, seq: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO relay_seq (relay, epoch, seq, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(relay, epoch) DO UPDATE SET seq = MAX(seq, excluded.seq), updated = excluded.updated",
            )?
            .execute(params![
                relay,
                epoch,
                i64::try_from(seq).unwrap_or(i64::MAX),
                now_ms()
            ])?;
        Ok(())
    }

    /// Per relay epoch: the last seq stored and when (ms; 0 if stored before this was kept).
    pub fn relay_progress(&self) -> Result<Vec<RelayProgress>> {
        let mut stmt = self
            .conn
            .prepare("SELECT relay, epoch, seq, updated FROM relay_seq ORDER BY updated DESC")?;
        let rows = stmt.query_map([], |r| {
            let seq: i64 = r.get(2)?;
            Ok(RelayProgress {
                relay: r.get(0)?,
                epoch: r.get(1)?,
                seq: u64::try_from(seq).unwrap_or(0),
                updated: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// The newest job of `rule` that has ended.
    pub fn last_ended(&self, rule: &str) -> Result<Option<Job>> {
        self.conn
            .prepare_cached(&format!(
                "{JOB_SELECT} WHERE rule = ?1 AND state NOT IN ('pending', 'running') ORDER BY id DESC LIMIT 1"
            ))?
            .query_row([rule], row_to_job)
            .optional()
    }
}

const JOB_SELECT: &str = "SELECT id, rule, key, state, attempt, created, due, started, finished, exit_code, argv, error, output_tail, cancel_requested, reason, unit FROM jobs";

/// A row or file the store cannot make sense of: an error that says where, never a guess
/// (a corrupt state shown as `pending` would be run again; one shown as `failed`, never).
fn damaged(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(message),
    )
}

fn parse_state(id: i64, state: &str) -> rusqlite::Result<State> {
    State::parse(state).ok_or_else(|| {
        damaged(format!(
            "job {id}: unknown state {state:?} in the state file"
        ))
    })
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let id: i64 = r.get(0)?;
    let state: String = r.get(3)?;
    let argv: String = r.get(10)?;
    Ok(Job {
        id,
        rule: r.get(1)?,
        key: r.get(2)?,
        state: parse_state(id, &state)?,
        attempt: r.get(4)?,
        created: r.get(5)?,
        due: r.get(6)?,
        started: r.get(7)?,
        finished: r.get(8)?,
        exit_code: r.get(9)?,
        argv: serde_json::from_str(&argv).map_err(|e| {
            damaged(format!(
                "job {id}: its argv {argv:?} is not a JSON list of strings ({e})"
            ))
        })?,
        error: r.get(11)?,
        output_tail: r.get(12)?,
        cancel_requested: r.get::<_, i64>(13)? != 0,
        reason: Reason::parse(&r.get::<_, String>(14)?),
        unit: r.get(15)?,
        events: Vec::new(),
    })
}

fn insert_event(tx: &Connection, job: i64, pos: usize, ev: &EventRow<'_>) -> Result<()> {
    tx.prepare_cached("INSERT INTO job_events (job, pos, uuid, topic, signers, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
        params![
            job,
            i64::try_from(pos).unwrap_or(i64::MAX),
            ev.uuid,
            ev.topic,
            serde_json::to_string(ev.signers).unwrap_or_else(|_| "[]".into()),
            ev.json.as_ref()
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(uuid: &str) -> StoredEvent {
        StoredEvent {
            uuid: uuid.into(),
            topic: "_lk.t".into(),
            signers: vec!["a".into()],
            json: format!("{{\"uuid\":\"{uuid}\"}}"),
        }
    }

    #[test]
    fn lifecycle_and_done_markers() {
        let mut s = Store::open_in_memory().unwrap();
        let id = s
            .insert_pending("sync", "master", now_ms(), &[ev("u1")])
            .unwrap();
        s.append_event(id, &ev("u2"), now_ms()).unwrap();
        assert!(s.mark_running(id, &["/bin/true".into()]).unwrap());
        assert!(!s.mark_running(id, &[]).unwrap(), "only pending jobs start");
        s.finish(id, State::Succeeded, Some(0), None, Some("ok\n"))
            .unwrap();
        assert!(s.succeeded("sync", "u1").unwrap() && s.succeeded("sync", "u2").unwrap());
        assert!(!s.succeeded("other", "u1").unwrap());
        let job = s.get(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.events.len(), job.argv.clone()),
            (State::Succeeded, 2, vec!["/bin/true".to_string()])
        );
    }

    #[test]
    fn interrupted_jobs_come_back_pending_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let id = {
            let mut s = Store::open(&path).unwrap();
            let id = s.insert_pending("r", "k", now_ms(), &[ev("u")]).unwrap();
            s.mark_running(id, &[]).unwrap();
            id
        };
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.recover_interrupted().unwrap(), 1);
        let live = s.live_jobs(0).unwrap();
        assert_eq!(
            (live.len(), live[0].id, live[0].state),
            (1, id, State::Pending)
        );
        assert!(live[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("interrupted"));
    }

    #[test]
    fn cancel_and_retry_from_the_cli() {
        let mut s = Store::open_in_memory().unwrap();
        let a = s.insert_pending("r", "k", now_ms(), &[ev("u")]).unwrap();
        assert_eq!(s.request_cancel(a).unwrap(), Some(State::Pending));
        assert_eq!(s.get(a).unwrap().unwrap().state, State::Cancelled);
        let b = s.insert_pending("r", "k", now_ms(), &[ev("v")]).unwrap();
        s.mark_running(b, &[]).unwrap();
        s.request_cancel(b).unwrap();
        assert_eq!(s.cancel_requests().unwrap(), vec![b]);
        s.finish(b, State::Failed, Some(1), None, None).unwrap();
        let c = s.retry(b).unwrap().unwrap();
        let job = s.get(c).unwrap().unwrap();
        assert_eq!(
            (job.state, job.events[0].uuid.as_str()),
            (State::Pending, "v")
        );
        assert_eq!(s.request_cancel(999).unwrap(), None);
    }

    #[test]
    fn reserved_ids_are_never_handed_out_by_autoincrement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut daemon = Store::open(&path).unwrap();
        let block = daemon.reserve_job_ids(4).unwrap();
        assert_eq!(block, 1..5, "an empty store starts at 1");
        let event = Arc::new(
            crate::rules::events::from_loose(serde_json::json!({"tag": "t", "uuid": "u"})).unwrap(),
        );
        daemon
            .insert_job(
                block.start,
                "r",
                "k",
                0,
                0,
                Reason::Event,
                std::slice::from_ref(&event),
            )
            .unwrap();
        // `hark jobs retry` in another process, while the daemon still holds ids 2..5.
        let mut cli = Store::open(&path).unwrap();
        let retried = cli.retry(block.start).unwrap().unwrap();
        assert_eq!(retried, 5, "after the reserved block");
        assert_eq!(daemon.reserve_job_ids(2).unwrap(), 6..8);
        daemon
            .insert_job(
                3,
                "r",
                "k",
                0,
                0,
                Reason::Fallback,
                std::slice::from_ref(&event),
            )
            .unwrap();
        let job = daemon.get(3).unwrap().unwrap();
        assert_eq!(
            job.events[0].json,
            String::from_utf8_lossy(&event.json_bytes())
        );
        let back = job.into_recovered().unwrap();
        assert_eq!(back.events[0].uuid, "u");
        assert_eq!(
            back.reason,
            Reason::Fallback,
            "the reason survives a reload"
        );
    }

    #[test]
    fn fallback_clocks_persist_and_an_old_state_file_gains_the_reason_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 1, created INTEGER NOT NULL, due INTEGER NOT NULL, started INTEGER, finished INTEGER, exit_code INTEGER, argv TEXT NOT NULL DEFAULT '[]', error TEXT, output_tail TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO jobs (rule, key, state, created, due) VALUES ('r', '', 'succeeded', 1, 1);",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.get(1).unwrap().unwrap().reason, Reason::Event);
        s.save_fallback_clock("r", 10, 6000).unwrap();
        s.save_fallback_clock("r", 20, 6000).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let clocks = s.fallback_clocks().unwrap();
        assert_eq!(
            clocks,
            vec![FallbackClock {
                rule: "r".into(),
                last: 20,
                every: 6000
            }]
        );
        assert_eq!(clocks[0].next_due(), 6020);
    }
}
