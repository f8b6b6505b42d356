//! The scheduler: turns rule matches into jobs and decides when each one runs.
//!
//! A plain state machine over the job store, driven by the daemon's event loop:
//! [`Scheduler::on_match`] files an event into a job, [`Scheduler::dispatch`] returns the
//! jobs that may start now (as runner specs), [`Scheduler::on_finished`] records an outcome
//! or schedules a retry, and [`Scheduler::sync_store`] picks up `hark jobs` edits. It never
//! sleeps or spawns; that keeps it testable and keeps every decision in one place.
//!
//! Semantics (docs/rules.md has the user's view):
//! - coalesce: events with the same key merge into one pending job until they have been
//!   quiet for `quiet` (at most `max_delay` after the first). Once that job starts, the
//!   next event opens a new pending job, so an event that arrives during a run causes
//!   exactly one more run after it.
//! - concurrency: at most `limit` running jobs per (rule, concurrency key), and per named
//!   pool; `on_busy` says what happens to a new event while the key is at its limit.
//! - retries: exponential backoff with up to 10 % jitter, by exit code; a timeout is its
//!   own outcome and retried only when the rule says so.
//! - durability: every job is in the store before it runs; a (rule, uuid) that succeeded is
//!   never filed again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::event::Event;
use crate::metrics::Registry;
use crate::rules::rule::{OnBusy, Retry, Rule, RunEnd, StdinMode};
use crate::rules::set::RuleSet;
use crate::runner::{Finished, Outcome, Spec};
use crate::store::{now_ms, Job, State, Store, StoredEvent};

/// Buckets for the job duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0];

/// A job the daemon should start now.
pub struct Start {
    pub job: i64,
    pub spec: Spec,
    pub cancel: watch::Receiver<bool>,
}

struct Pending {
    rule: String,
    conc_key: String,
    /// The key under which later events may still merge into this job, if any.
    open_key: Option<(String, String)>,
    first_ms: i64,
    due_ms: i64,
    attempt: u32,
    events: Vec<StoredEvent>,
}

struct Running {
    rule: String,
    conc_key: String,
    pool: Option<String>,
    cancel: watch::Sender<bool>,
    superseded: bool,
    attempt: u32,
    retry: Option<Retry>,
}

pub struct Scheduler {
    store: Store,
    rules: Arc<RuleSet>,
    /// Pool sizes from hark.yaml; they override sizes declared in rule files.
    config_pools: BTreeMap<String, u32>,
    metrics: Registry,
    log_limit: usize,
    tail_limit: usize,
    pending: BTreeMap<i64, Pending>,
    open: HashMap<(String, String), i64>,
    running: HashMap<i64, Running>,
    /// Running jobs per (rule, concurrency key) and per pool, kept with `running`.
    running_keys: HashMap<(String, String), usize>,
    running_pools: HashMap<String, usize>,
    draining: bool,
    /// Job lifecycle notices for `_hark.job.*` events, when the daemon publishes them.
    notices: Option<Vec<Notice>>,
}

/// A job lifecycle change, published as `_hark.job.<kind>` when configured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Notice {
    #[serde(skip)]
    pub kind: &'static str,
    pub job: i64,
    pub rule: String,
    pub key: String,
    pub attempt: u32,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    pub events: Vec<String>,
}

pub struct SchedulerOptions {
    pub config_pools: BTreeMap<String, u32>,
    pub log_limit: usize,
    pub tail_limit: usize,
    /// Collect [`Notice`]s for publishing.
    pub notices: bool,
}

impl Scheduler {
    /// Take over `store`: interrupted jobs become pending again and every live job is loaded.
    pub fn new(
        mut store: Store,
        rules: Arc<RuleSet>,
        opts: SchedulerOptions,
        metrics: Registry,
    ) -> rusqlite::Result<Self> {
        let interrupted = store.recover_interrupted()?;
        if interrupted > 0 {
            warn!("{interrupted} job(s) were interrupted by the last shutdown or crash; they run again");
        }
        let mut s = Scheduler {
            store,
            rules,
            config_pools: opts.config_pools,
            metrics,
            log_limit: opts.log_limit,
            tail_limit: opts.tail_limit,
            pending: BTreeMap::new(),
            open: HashMap::new(),
            running: HashMap::new(),
            running_keys: HashMap::new(),
            running_pools: HashMap::new(),
            draining: false,
            notices: opts.notices.then(Vec::new),
        };
        s.sync_store()?;
        Ok(s)
    }

    /// Group the following `on_match` calls into one commit (see [`Store::begin`]).
    pub fn begin_batch(&mut self) -> rusqlite::Result<()> {
        self.store.begin()
    }

    /// Make the batch durable. Call before `dispatch`, so that no job starts before it is
    /// on disk.
    pub fn commit_batch(&mut self) -> rusqlite::Result<()> {
        self.store.commit()
    }

    /// Persist the last relay sequence number seen (inside the current batch).
    pub fn note_relay_seq(&mut self, relay: &str, epoch: &str, seq: u64) -> rusqlite::Result<()> {
        self.store.save_relay_seq(relay, epoch, seq)
    }

    /// Last sequence numbers from before this start, for gap detection across restarts.
    pub fn relay_seqs(&self) -> rusqlite::Result<Vec<((String, String), u64)>> {
        self.store.relay_seqs()
    }

    /// Notices collected since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.notices
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn notice(&mut self, notice: impl FnOnce() -> Notice) {
        if let Some(list) = self.notices.as_mut() {
            list.push(notice());
        }
    }

    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = rules;
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Stop starting jobs (SIGTERM). Running jobs continue until they end or are cancelled.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Stop every running job; used when the shutdown grace period is over. Their store
    /// rows stay `running`, so the next start runs them again.
    pub fn cancel_all(&mut self) {
        for r in self.running.values() {
            let _ = r.cancel.send(true);
        }
    }

    /// Milliseconds since the epoch when the earliest pending job becomes due.
    pub fn next_due(&self) -> Option<i64> {
        self.pending.values().map(|p| p.due_ms).min()
    }

    fn stored(event: &Event) -> StoredEvent {
        StoredEvent {
            uuid: event.uuid.clone(),
            topic: event.topic.clone(),
            signers: event.signers.clone(),
            json: String::from_utf8_lossy(&event.json_bytes()).into_owned(),
        }
    }

    fn busy(&self, rule: &Rule, conc_key: &str) -> bool {
        // Keyed lookups: this runs for every pending job on every dispatch.
        let n = self
            .running_keys
            .get(&(rule.name.clone(), conc_key.to_string()))
            .copied()
            .unwrap_or(0);
        n >= rule.concurrency.limit as usize
    }

    /// Record a job that never runs (a render refusal or a skip), for `hark jobs`.
    fn record(
        &mut self,
        rule: &str,
        key: &str,
        event: &StoredEvent,
        state: State,
        error: &str,
    ) -> rusqlite::Result<()> {
        let id = self
            .store
            .insert_pending(rule, key, now_ms(), std::slice::from_ref(event))?;
        self.store.finish(id, state, None, Some(error), None)?;
        self.metrics.inc(
            "hark_jobs_total",
            &[("rule", rule), ("outcome", state.as_str())],
        );
        Ok(())
    }

    /// File `event`, which `rule` matched, into a job.
    pub fn on_match(&mut self, rule: &Arc<Rule>, event: &Event) -> rusqlite::Result<()> {
        if self.store.succeeded(&rule.name, &event.uuid)? {
            info!(rule = %rule.name, uuid = %event.uuid, "already ran successfully for this event; not again");
            return Ok(());
        }
        let stored = Self::stored(event);
        let conc_key = match &rule.concurrency.key {
            None => String::new(),
            Some(t) => match t.render(&rule.vars, event) {
                Ok(k) => k,
                Err(e) => {
                    return self.record(
                        &rule.name,
                        "",
                        &stored,
                        State::Failed,
                        &format!("concurrency.key: {e}"),
                    )
                }
            },
        };
        let now = now_ms();
        if let Some(coalesce) = &rule.coalesce {
            let key = match rule.coalesce_key(event) {
                Ok(k) => k.unwrap_or_default(),
                Err(e) => {
                    return self.record(&rule.name, "", &stored, State::Failed, &e.to_string())
                }
            };
            let open_key = (rule.name.clone(), format!("coalesce:{key}"));
            let max_delay = coalesce.max_delay.map(ms).unwrap_or(i64::MAX);
            let quiet = ms(coalesce.quiet);
            if self.merge(&open_key, &stored, |p| {
                (now + quiet).min(p.first_ms.saturating_add(max_delay))
            })? {
                return Ok(());
            }
            let due = now + quiet.min(max_delay);
            return self.file_new(rule, &key, conc_key, Some(open_key), due, stored);
        }
        match rule.concurrency.on_busy {
            OnBusy::Coalesce => {
                let open_key = (rule.name.clone(), format!("busy:{conc_key}"));
                if self.merge(&open_key, &stored, |p| p.due_ms)? {
                    return Ok(());
                }
                self.file_new(
                    rule,
                    &conc_key.clone(),
                    conc_key,
                    Some(open_key),
                    now,
                    stored,
                )
            }
            OnBusy::Skip if self.busy(rule, &conc_key) => {
                info!(rule = %rule.name, uuid = %event.uuid, "skipped: the rule is at its concurrency limit (on_busy: skip)");
                self.record(
                    &rule.name,
                    &conc_key,
                    &stored,
                    State::Skipped,
                    "on_busy: skip while the concurrency limit was reached",
                )
            }
            OnBusy::Supersede => {
                for r in self
                    .running
                    .values_mut()
                    .filter(|r| r.rule == rule.name && r.conc_key == conc_key)
                {
                    r.superseded = true;
                    let _ = r.cancel.send(true);
                }
                let waiting: Vec<i64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.rule == rule.name && p.conc_key == conc_key)
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    self.forget_pending(id);
                    self.store.finish(
                        id,
                        State::Superseded,
                        None,
                        Some("superseded by a newer event"),
                        None,
                    )?;
                    self.metrics.inc(
                        "hark_jobs_total",
                        &[("rule", &rule.name), ("outcome", "superseded")],
                    );
                }
                self.file_new(rule, &conc_key.clone(), conc_key, None, now, stored)
            }
            OnBusy::Queue | OnBusy::Skip => {
                self.file_new(rule, &conc_key.clone(), conc_key, None, now, stored)
            }
        }
    }

    /// Add `stored` to the pending job open under `open_key`, if there is one; `due` gives
    /// its new due time.
    fn merge(
        &mut self,
        open_key: &(String, String),
        stored: &StoredEvent,
        due: impl FnOnce(&Pending) -> i64,
    ) -> rusqlite::Result<bool> {
        let Some(&id) = self.open.get(open_key) else {
            return Ok(false);
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return Ok(false);
        };
        p.due_ms = due(p);
        p.events.push(stored.clone());
        let due = p.due_ms;
        self.store.append_event(id, stored, due)?;
        self.metrics
            .inc("hark_coalesced_events_total", &[("rule", &open_key.0)]);
        Ok(true)
    }

    /// A new pending job for one event, in the store and in memory; `open_key` lets later
    /// events merge into it until it starts.
    fn file_new(
        &mut self,
        rule: &Rule,
        key: &str,
        conc_key: String,
        open_key: Option<(String, String)>,
        due: i64,
        stored: StoredEvent,
    ) -> rusqlite::Result<()> {
        let id = self
            .store
            .insert_pending(&rule.name, key, due, std::slice::from_ref(&stored))?;
        if let Some(k) = &open_key {
            self.open.insert(k.clone(), id);
        }
        let now = now_ms();
        self.pending.insert(
            id,
            Pending {
                rule: rule.name.clone(),
                conc_key,
                open_key,
                first_ms: now,
                due_ms: due,
                attempt: 1,
                events: vec![stored],
            },
        );
        Ok(())
    }

    fn forget_pending(&mut self, id: i64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(k) = &p.open_key {
            if self.open.get(k) == Some(&id) {
                self.open.remove(k);
            }
        }
        Some(p)
    }

    fn pool_limit(&self, pool: &str) -> u32 {
        self.config_pools
            .get(pool)
            .copied()
            .unwrap_or_else(|| self.rules.pool_limit(pool))
    }

    fn pool_free(&self, pool: &str) -> bool {
        let used = self.running_pools.get(pool).copied().unwrap_or(0);
        used < self.pool_limit(pool) as usize
    }

    /// Start every due job that its limits allow, oldest due first.
    pub fn dispatch(&mut self) -> rusqlite::Result<Vec<Start>> {
        let mut starts = Vec::new();
        if self.draining {
            return Ok(starts);
        }
        let now = now_ms();
        let mut due: Vec<(i64, i64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due_ms <= now)
            .map(|(id, p)| (p.due_ms, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let Some(rule) = self.rules.rule(&p.rule).cloned() else {
                let name = p.rule.clone();
                self.forget_pending(id);
                warn!(job = id, rule = %name, "rule no longer exists; job cancelled");
                self.store.finish(
                    id,
                    State::Cancelled,
                    None,
                    Some(&format!(
                        "rule {name} no longer exists (removed or renamed)"
                    )),
                    None,
                )?;
                continue;
            };
            if self.busy(&rule, &p.conc_key)
                || rule
                    .concurrency
                    .pool
                    .as_deref()
                    .is_some_and(|pool| !self.pool_free(pool))
            {
                continue;
            }
            let Some(p) = self.forget_pending(id) else {
                continue;
            };
            if let Some(start) = self.start(&rule, id, p)? {
                starts.push(start);
            }
        }
        self.metrics
            .set("hark_queue_depth", &[], self.pending.len() as f64);
        Ok(starts)
    }

    fn start(&mut self, rule: &Arc<Rule>, id: i64, p: Pending) -> rusqlite::Result<Option<Start>> {
        let Some(last) = p.events.last() else {
            return Ok(None);
        };
        let event = match serde_json::from_str(&last.json)
            .map_err(|e| e.to_string())
            .and_then(|v| Event::from_value(v).map_err(|e| e.to_string()))
        {
            Ok(mut ev) => {
                ev.signers = last.signers.clone();
                ev.frames = vec![last.json.clone().into_bytes()];
                ev
            }
            Err(e) => {
                self.store.finish(
                    id,
                    State::Failed,
                    None,
                    Some(&format!("stored event is unreadable: {e}")),
                    None,
                )?;
                return Ok(None);
            }
        };
        let rendered = match rule.render(&event) {
            Ok(r) => r,
            Err(e) => {
                warn!(job = id, rule = %rule.name, "refused to run: {e}");
                self.store
                    .finish(id, State::Failed, None, Some(&e.to_string()), None)?;
                self.metrics.inc(
                    "hark_jobs_total",
                    &[("rule", &rule.name), ("outcome", "refused")],
                );
                return Ok(None);
            }
        };
        if !self.store.mark_running(id, &rendered.argv)? {
            // `hark jobs cancel` got there first.
            return Ok(None);
        }
        let stdin = match rendered.stdin {
            StdinMode::Event => Some(last.json.clone().into_bytes()),
            StdinMode::Batch => {
                let mut batch = b"[".to_vec();
                for (i, e) in p.events.iter().enumerate() {
                    if i > 0 {
                        batch.push(b',');
                    }
                    batch.extend_from_slice(e.json.as_bytes());
                }
                batch.push(b']');
                Some(batch)
            }
            StdinMode::None => None,
        };
        let mut env: Vec<(String, String)> = rendered.env.into_iter().collect();
        env.extend([
            ("HARK_TOPIC".to_string(), last.topic.clone()),
            ("HARK_UUID".to_string(), last.uuid.clone()),
            ("HARK_RULE".to_string(), rule.name.clone()),
            ("HARK_JOB".to_string(), id.to_string()),
            ("HARK_ATTEMPT".to_string(), p.attempt.to_string()),
            ("HARK_EVENT_COUNT".to_string(), p.events.len().to_string()),
        ]);
        info!(job = id, rule = %rule.name, key = %p.conc_key, events = p.events.len(), attempt = p.attempt, argv = ?rendered.argv, "starting");
        self.notice(|| Notice {
            kind: "started",
            job: id,
            rule: rule.name.clone(),
            key: p.conc_key.clone(),
            attempt: p.attempt,
            state: "running".into(),
            exit_code: None,
            duration_seconds: None,
            events: p.events.iter().map(|e| e.uuid.clone()).collect(),
        });
        let (tx, rx) = watch::channel(false);
        *self
            .running_keys
            .entry((rule.name.clone(), p.conc_key.clone()))
            .or_insert(0) += 1;
        if let Some(pool) = &rule.concurrency.pool {
            *self.running_pools.entry(pool.clone()).or_insert(0) += 1;
        }
        self.running.insert(
            id,
            Running {
                rule: rule.name.clone(),
                conc_key: p.conc_key,
                pool: rule.concurrency.pool.clone(),
                cancel: tx,
                superseded: false,
                attempt: p.attempt,
                retry: rule.retry.clone(),
            },
        );
        self.metrics
            .set("hark_jobs_running", &[], self.running.len() as f64);
        Ok(Some(Start {
            job: id,
            cancel: rx,
            spec: Spec {
                argv: rendered.argv,
                env,
                workdir: rendered.workdir,
                stdin,
                timeout: Some(rule.run.timeout),
                grace: rule.run.grace,
                log_limit: self.log_limit,
                tail_limit: self.tail_limit,
                rule: rule.name.clone(),
                job: id,
            },
        }))
    }

    /// Record how job `id` ended, or schedule its retry.
    pub fn on_finished(&mut self, id: i64, finished: Finished) -> rusqlite::Result<()> {
        let Some(run) = self.running.remove(&id) else {
            return Ok(());
        };
        release(
            &mut self.running_keys,
            (run.rule.clone(), run.conc_key.clone()),
        );
        if let Some(pool) = &run.pool {
            release(&mut self.running_pools, pool.clone());
        }
        self.metrics
            .set("hark_jobs_running", &[], self.running.len() as f64);
        let secs = finished.duration.as_secs_f64();
        self.metrics.observe(
            "hark_job_duration_seconds",
            &[("rule", &run.rule)],
            secs,
            DURATION_BUCKETS,
        );
        let tail = Some(finished.output_tail.as_str()).filter(|t| !t.is_empty());
        let (state, end, error) = match &finished.outcome {
            _ if run.superseded => (
                State::Superseded,
                None,
                Some("superseded by a newer event".to_string()),
            ),
            Outcome::Cancelled if self.draining => {
                // Left `running` on purpose: the next start runs it again.
                warn!(job = id, rule = %run.rule, "stopped by shutdown; it will run again after restart");
                return Ok(());
            }
            Outcome::Cancelled => (
                State::Cancelled,
                None,
                Some("cancelled by hark jobs cancel".to_string()),
            ),
            Outcome::Success => (State::Succeeded, None, None),
            Outcome::Failed { code: Some(c), .. } => {
                (State::Failed, Some(RunEnd::Exited(*c)), None)
            }
            Outcome::Failed { signal, .. } => (
                State::Failed,
                Some(RunEnd::Signalled),
                Some(format!("killed by signal {}", signal.unwrap_or(0))),
            ),
            Outcome::TimedOut => (
                State::TimedOut,
                Some(RunEnd::TimedOut),
                Some("timed out; the process group got TERM, then KILL".to_string()),
            ),
            Outcome::SpawnFailed(msg) => {
                (State::Failed, Some(RunEnd::Exited(127)), Some(msg.clone()))
            }
        };
        let exit_code = finished.outcome.exit_code();
        if let (Some(end), Some(retry)) = (end, &run.retry) {
            if let Some(delay) = retry.next_delay(run.attempt, end) {
                let jitter = ms(delay) / 10;
                let jitter = if jitter > 0 {
                    i64::from(rand_core::OsRng.next_u32()) % jitter
                } else {
                    0
                };
                let due = now_ms() + ms(delay) + jitter;
                warn!(job = id, rule = %run.rule, attempt = run.attempt, "{} (exit {:?}); retrying in {:?}", state.as_str(), exit_code, Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)));
                self.store
                    .schedule_retry(id, due, error.as_deref(), exit_code, tail)?;
                self.metrics
                    .inc("hark_job_retries_total", &[("rule", &run.rule)]);
                if let Some(job) = self.store.get(id)? {
                    self.adopt(job);
                }
                return Ok(());
            }
        }
        match state {
            State::Succeeded => info!(job = id, rule = %run.rule, "succeeded in {secs:.3}s"),
            _ => {
                warn!(job = id, rule = %run.rule, exit = ?exit_code, "{}{}", state.as_str(), error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())
            }
        }
        self.store
            .finish(id, state, exit_code, error.as_deref(), tail)?;
        self.metrics.inc(
            "hark_jobs_total",
            &[("rule", &run.rule), ("outcome", state.as_str())],
        );
        if state == State::Succeeded {
            self.metrics.set(
                "hark_last_success_timestamp_seconds",
                &[("rule", &run.rule)],
                now_ms() as f64 / 1000.0,
            );
        }
        if self.notices.is_some() {
            let events = self
                .store
                .get(id)?
                .map(|j| j.events.into_iter().map(|e| e.uuid).collect())
                .unwrap_or_default();
            self.notice(|| Notice {
                kind: if state == State::Succeeded {
                    "succeeded"
                } else {
                    "failed"
                },
                job: id,
                rule: run.rule.clone(),
                key: run.conc_key.clone(),
                attempt: run.attempt,
                state: state.as_str().into(),
                exit_code,
                duration_seconds: Some(secs),
                events,
            });
        }
        Ok(())
    }

    /// Track a live job that is in the store but not in memory.
    fn adopt(&mut self, job: Job) {
        if job.state != State::Pending || self.running.contains_key(&job.id) {
            return;
        }
        self.pending.insert(
            job.id,
            Pending {
                rule: job.rule,
                conc_key: job.key,
                open_key: None,
                first_ms: job.created,
                due_ms: job.due,
                attempt: job.attempt,
                events: job.events,
            },
        );
    }

    /// Pick up what `hark jobs` changed: cancel requests, cancelled pending jobs, retries.
    pub fn sync_store(&mut self) -> rusqlite::Result<()> {
        for id in self.store.cancel_requests()? {
            if let Some(r) = self.running.get(&id) {
                let _ = r.cancel.send(true);
            }
        }
        let live_pending: std::collections::HashSet<i64> = self
            .store
            .live_ids()?
            .into_iter()
            .filter(|(_, state)| *state == State::Pending)
            .map(|(id, _)| id)
            .collect();
        let gone: Vec<i64> = self
            .pending
            .keys()
            .filter(|id| !live_pending.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget_pending(id);
        }
        for id in live_pending {
            if !self.pending.contains_key(&id) {
                if let Some(job) = self.store.get(id)? {
                    self.adopt(job);
                }
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One fewer running job under `key`; the entry goes when it reaches zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}
