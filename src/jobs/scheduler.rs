//! The scheduler: turns rule matches into jobs and decides when each one runs.
//!
//! Pure: it holds only in-memory state, reads no clock (every call takes `now_ms`), draws
//! no random numbers (retries take one), and does no I/O. Every decision is queued as an
//! [`Effect`]; the daemon applies the effects to the store in one transaction, commits, and
//! only then starts the [`Effect::Start`]s, so a job is on disk before its command runs.
//! The report module turns the same effects into metrics, log lines and notices.
//!
//! Semantics (docs/rules.md has the user's view):
//! - coalesce: events with the same key merge into one pending job until they have been
//!   quiet for `quiet` (at most `max_delay` after the first). Once that job starts, the
//!   next event opens a new pending job, so an event that arrives during a run causes
//!   exactly one more run after it.
//! - concurrency: at most `limit` running jobs per (rule, concurrency key), and per named
//!   pool (hark.yaml sizes override rule files); `on_busy` says what happens to a new event
//!   while the key is at its limit: queue, coalesce into the waiting job, skip, supersede.
//! - retries: exponential backoff with up to 10 % jitter, by exit code; a timeout is its
//!   own outcome and retried only when the rule says so.
//! - drain: nothing new starts; jobs stopped by the shutdown stay `running` in the store.
//! - a job whose rule disappeared is cancelled when it comes due.
//! - fallback: a rule with `fallback: {every: D}` that has not started a job for D (and
//!   has none pending or running) gets a job anyway, rendered against its stand-in event
//!   ([`Reason::Fallback`]). The clock is the rule's last start; a rule seen for the first
//!   time starts it then ([`Effect::Clock`]). The store persists both, so the clock
//!   survives restarts ([`Scheduler::set_clocks`]).
//!
//! Job ids: `hark jobs retry` inserts rows from another process, so ids come from blocks
//! the daemon reserves in the store ([`Scheduler::add_ids`]); a match uses at most one.
//!
//! Dispatch cost: pending jobs sit in one queue per (rule, concurrency key), ordered by
//! (due, id), and the heads of those queues sit in one ordered set. Dispatch walks the due
//! heads only, so it costs O(jobs started + keys with due work), whatever the backlog.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::{Bound, Range};
use std::sync::Arc;
use std::time::Duration;

use super::launch::{self, Launch, OutputLimits, Reason};
use super::runner::{Finished, Outcome};
use super::store::State;
use crate::event::Event;
use crate::rules::rule::{OnBusy, Retry, Rule, RunEnd};
use crate::rules::set::RuleSet;

/// One thing the daemon must do because of a scheduling decision, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A new pending job.
    Insert {
        id: i64,
        rule: String,
        key: String,
        created: i64,
        due: i64,
        reason: Reason,
        events: Vec<Arc<Event>>,
    },
    /// Start (or re-state) the fallback clock of `rule`: its last start counts as `at`,
    /// and it runs again `every` ms later. A [`Effect::Start`] of a rule with a fallback
    /// moves the clock too (the store writes it with the start).
    Clock { rule: String, at: i64, every: i64 },
    /// One more event merged into pending job `id`, at position `pos`; its due time moves.
    Append {
        id: i64,
        rule: String,
        pos: usize,
        event: Arc<Event>,
        due: i64,
    },
    /// Mark the job running (only if the store still has it pending), then run it. If the
    /// store says no, tell the scheduler with [`Scheduler::not_started`].
    Start(Launch),
    /// Stop the running job `id` (TERM, grace, KILL); its end comes back as `on_finished`.
    Cancel(i64),
    /// A run ended (whatever happens next): for the duration histogram.
    Ended {
        id: i64,
        rule: String,
        duration: Duration,
    },
    /// The run failed in a way the rule retries: back to pending for attempt `attempt + 1`.
    Retry {
        id: i64,
        rule: String,
        attempt: u32,
        state: State,
        exit_code: Option<i32>,
        error: Option<String>,
        tail: Option<String>,
        due: i64,
        delay: Duration,
    },
    /// The job reached an outcome.
    Finish(Finish),
    /// Stopped by the shutdown: nothing is written, so the next start runs it again.
    LeftRunning { id: i64, rule: String },
}

/// A job's outcome, with what the report needs to count and describe it.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: i64,
    pub rule: String,
    pub key: String,
    pub state: State,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub tail: Option<String>,
    pub cause: Cause,
}

/// Why a job finished; decides how it is counted and logged.
#[derive(Debug, Clone)]
pub enum Cause {
    /// Its command ran (attempt `attempt`) and ended.
    Ran {
        attempt: u32,
        duration: Duration,
        events: Vec<Arc<Event>>,
    },
    /// Rendering the command refused the event (counted as outcome `refused`).
    Refused,
    /// `on_busy: skip` while the key was at its limit.
    Skipped,
    /// A concurrency or coalescing key could not be rendered, so it was never queued.
    Unfiled,
    /// A newer event superseded it before it started.
    Superseded,
    /// Its rule no longer exists.
    RuleGone,
}

/// A live job loaded from the store (at start, or a `hark jobs retry`), events parsed.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub id: i64,
    pub rule: String,
    pub key: String,
    pub created: i64,
    pub due: i64,
    pub attempt: u32,
    pub reason: Reason,
    pub events: Vec<Arc<Event>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("no job id reserved (the store could not reserve a block)")]
    OutOfIds,
}

pub struct SchedulerOptions {
    /// Pool sizes from hark.yaml; they override sizes declared in rule files.
    pub config_pools: BTreeMap<String, u32>,
    pub log_limit: usize,
    pub tail_limit: usize,
}

/// (rule, concurrency key): what concurrency limits count, and one dispatch queue.
type QueueKey = (String, String);

struct Pending {
    queue: QueueKey,
    /// The key under which later events may still merge into this job, if any.
    open_key: Option<(String, String)>,
    first_ms: i64,
    due_ms: i64,
    attempt: u32,
    reason: Reason,
    events: Vec<Arc<Event>>,
}

struct Running {
    queue: QueueKey,
    pool: Option<String>,
    superseded: bool,
    attempt: u32,
    reason: Reason,
    retry: Option<Retry>,
    events: Vec<Arc<Event>>,
}

/// A fallback clock: the rule's last start (or when it was first seen), and its interval
/// as last written to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock {
    last: i64,
    every: i64,
}

/// Pending job ids per queue, ordered by (due, id), and every non-empty queue's head in
/// one ordered set, so that the next startable job of every key is found without a scan.
#[derive(Default)]
struct Queues {
    by_key: HashMap<QueueKey, BTreeSet<(i64, i64)>>,
    heads: BTreeSet<(i64, i64)>,
}

impl Queues {
    fn edit(&mut self, queue: &QueueKey, f: impl FnOnce(&mut BTreeSet<(i64, i64)>)) {
        let q = match self.by_key.get_mut(queue) {
            Some(q) => q,
            None => self.by_key.entry(queue.clone()).or_default(),
        };
        let old = q.first().copied();
        f(q);
        let new = q.first().copied();
        if q.is_empty() {
            self.by_key.remove(queue);
        }
        if old != new {
            if let Some(o) = old {
                self.heads.remove(&o);
            }
            if let Some(n) = new {
                self.heads.insert(n);
            }
        }
    }

    fn insert(&mut self, queue: &QueueKey, due: i64, id: i64) {
        self.edit(queue, |q| {
            q.insert((due, id));
        });
    }

    fn remove(&mut self, queue: &QueueKey, due: i64, id: i64) {
        self.edit(queue, |q| {
            q.remove(&(due, id));
        });
    }

    /// The first head after `after` (all of them when `None`).
    fn next_head(&self, after: Option<(i64, i64)>) -> Option<(i64, i64)> {
        match after {
            None => self.heads.first().copied(),
            Some(a) => self
                .heads
                .range((Bound::Excluded(a), Bound::Unbounded))
                .next()
                .copied(),
        }
    }

    fn ids(&self, queue: &QueueKey) -> Vec<i64> {
        self.by_key
            .get(queue)
            .map(|q| q.iter().map(|&(_, id)| id).collect())
            .unwrap_or_default()
    }
}

pub struct Scheduler {
    rules: Arc<RuleSet>,
    config_pools: BTreeMap<String, u32>,
    limits: OutputLimits,
    ids: VecDeque<Range<i64>>,
    pending: HashMap<i64, Pending>,
    queues: Queues,
    open: HashMap<(String, String), i64>,
    running: HashMap<i64, Running>,
    /// Running jobs per (rule, concurrency key) and per pool, kept with `running`.
    running_keys: HashMap<QueueKey, Vec<i64>>,
    running_pools: HashMap<String, usize>,
    /// Pending plus running jobs per rule: a fallback waits while its rule has any.
    live: HashMap<String, usize>,
    /// The rules that declare a fallback, from the current rule set.
    fallback_rules: Vec<Arc<Rule>>,
    clocks: HashMap<String, Clock>,
    draining: bool,
    effects: Vec<Effect>,
}

fn fallback_rules(rules: &RuleSet) -> Vec<Arc<Rule>> {
    rules
        .rules()
        .iter()
        .filter(|r| r.fallback.is_some())
        .cloned()
        .collect()
}

/// RFC 3339 UTC for the stand-in event's `time`, from the caller's clock.
fn rfc3339(now_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Scheduler {
    pub fn new(rules: Arc<RuleSet>, opts: SchedulerOptions) -> Self {
        Scheduler {
            fallback_rules: fallback_rules(&rules),
            rules,
            config_pools: opts.config_pools,
            limits: OutputLimits {
                log_limit: opts.log_limit,
                tail_limit: opts.tail_limit,
            },
            ids: VecDeque::new(),
            pending: HashMap::new(),
            queues: Queues::default(),
            open: HashMap::new(),
            running: HashMap::new(),
            running_keys: HashMap::new(),
            running_pools: HashMap::new(),
            live: HashMap::new(),
            clocks: HashMap::new(),
            draining: false,
            effects: Vec::new(),
        }
    }

    /// The effects queued since the last call, in the order they must be applied.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Hand over a block of job ids reserved in the store.
    pub fn add_ids(&mut self, ids: Range<i64>) {
        if !ids.is_empty() {
            self.ids.push_back(ids);
        }
    }

    /// Reserved ids not used yet.
    pub fn ids_available(&self) -> u64 {
        self.ids
            .iter()
            .map(|r| u64::try_from(r.end - r.start).unwrap_or(0))
            .sum()
    }

    fn next_id(&mut self) -> Result<i64, ScheduleError> {
        while let Some(r) = self.ids.front_mut() {
            if let Some(id) = r.next() {
                return Ok(id);
            }
            self.ids.pop_front();
        }
        Err(ScheduleError::OutOfIds)
    }

    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.fallback_rules = fallback_rules(&rules);
        self.rules = rules;
    }

    /// Replace every fallback clock with what the store holds: (rule, last start, interval
    /// in ms). At recovery, and after a rolled back transaction.
    pub fn set_clocks(&mut self, clocks: impl IntoIterator<Item = (String, i64, i64)>) {
        self.clocks = clocks
            .into_iter()
            .map(|(rule, last, every)| (rule, Clock { last, every }))
            .collect();
    }

    /// When `rule`'s fallback runs next (its clock plus its interval), if it has one and
    /// its clock has started.
    pub fn fallback_due(&self, rule: &str) -> Option<i64> {
        let r = self.fallback_rules.iter().find(|r| r.name == rule)?;
        let every = ms(r.fallback.as_ref()?.every);
        let clock = self.clocks.get(rule)?;
        Some(clock.last.saturating_add(every))
    }

    /// How many fallback jobs the next [`Scheduler::dispatch`] at `now_ms` would file, so
    /// the caller can reserve ids for them first.
    pub fn fallbacks_due(&self, now_ms: i64) -> usize {
        if self.draining {
            return 0;
        }
        self.fallback_rules
            .iter()
            .filter(|r| self.fallback_is_due(r, now_ms))
            .count()
    }

    fn fallback_is_due(&self, rule: &Rule, now_ms: i64) -> bool {
        let Some(fb) = &rule.fallback else {
            return false;
        };
        let Some(clock) = self.clocks.get(&rule.name) else {
            return false;
        };
        now_ms >= clock.last.saturating_add(ms(fb.every))
            && self.live.get(&rule.name).copied().unwrap_or(0) == 0
    }

    fn live_changed(&mut self, rule: &str, up: bool) {
        if up {
            *self.live.entry(rule.to_string()).or_insert(0) += 1;
        } else if let Some(n) = self.live.get_mut(rule) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(rule);
            }
        }
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

    pub fn is_pending(&self, id: i64) -> bool {
        self.pending.contains_key(&id)
    }

    pub fn is_running(&self, id: i64) -> bool {
        self.running.contains_key(&id)
    }

    /// The earliest due time after `now_ms` of a job waiting for nothing but time. Due jobs
    /// held back by a limit are left out: only a finish (or a reload) can start them.
    /// Fallbacks count too: a rule without live jobs is due at its clock plus its interval.
    pub fn next_due(&self, now_ms: i64) -> Option<i64> {
        let job = self
            .queues
            .heads
            .range((now_ms.saturating_add(1), i64::MIN)..)
            .next()
            .map(|&(due, _)| due);
        let fallback = self
            .fallback_rules
            .iter()
            .filter(|r| !self.live.contains_key(&r.name))
            .filter_map(|r| {
                let every = ms(r.fallback.as_ref()?.every);
                Some(self.clocks.get(&r.name)?.last.saturating_add(every))
            })
            .filter(|&due| due > now_ms)
            .min();
        match (job, fallback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stop starting jobs (SIGTERM). Running jobs continue until they end or are cancelled.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Stop every running job; used when the shutdown grace period is over. Their store
    /// rows stay `running`, so the next start runs them again.
    pub fn cancel_all(&mut self) {
        let mut ids: Vec<i64> = self.running.keys().copied().collect();
        ids.sort_unstable();
        self.effects.extend(ids.into_iter().map(Effect::Cancel));
    }

    fn busy(&self, rule: &Rule, queue: &QueueKey) -> bool {
        let n = self.running_keys.get(queue).map_or(0, Vec::len);
        n >= rule.concurrency.limit as usize
    }

    fn pool_limit(&self, pool: &str) -> u32 {
        self.config_pools
            .get(pool)
            .copied()
            .unwrap_or_else(|| self.rules.pool_limit(pool))
    }

    fn pool_full(&self, rule: &Rule) -> bool {
        rule.concurrency.pool.as_deref().is_some_and(|pool| {
            let used = self.running_pools.get(pool).copied().unwrap_or(0);
            used >= self.pool_limit(pool) as usize
        })
    }

    /// A job that never runs (a key that cannot be rendered: failed; a skip: skipped),
    /// for `hark jobs`.
    fn record(
        &mut self,
        now_ms: i64,
        rule: &str,
        key: &str,
        event: &Arc<Event>,
        error: String,
        cause: Cause,
    ) -> Result<(), ScheduleError> {
        let state = match cause {
            Cause::Skipped => State::Skipped,
            _ => State::Failed,
        };
        let id = self.next_id()?;
        self.effects.push(Effect::Insert {
            id,
            rule: rule.to_string(),
            key: key.to_string(),
            created: now_ms,
            due: now_ms,
            reason: Reason::Event,
            events: vec![event.clone()],
        });
        self.effects.push(Effect::Finish(Finish {
            id,
            rule: rule.to_string(),
            key: key.to_string(),
            state,
            exit_code: None,
            error: Some(error),
            tail: None,
            cause,
        }));
        Ok(())
    }

    /// File `event`, which `rule` matched, into a job. The caller has already checked that
    /// this (rule, uuid) did not succeed before.
    pub fn on_match(
        &mut self,
        now_ms: i64,
        rule: &Arc<Rule>,
        event: &Arc<Event>,
    ) -> Result<(), ScheduleError> {
        if self.ids_available() == 0 {
            return Err(ScheduleError::OutOfIds);
        }
        let conc_key = match rule.concurrency_key(event) {
            Ok(k) => k.unwrap_or_default(),
            Err(e) => {
                let error = format!("concurrency.key: {}", e.reason);
                return self.record(now_ms, &rule.name, "", event, error, Cause::Unfiled);
            }
        };
        let queue = (rule.name.clone(), conc_key);
        if let Some(coalesce) = &rule.coalesce {
            let key = match rule.coalesce_key(event) {
                Ok(k) => k.unwrap_or_default(),
                Err(e) => {
                    return self.record(
                        now_ms,
                        &rule.name,
                        "",
                        event,
                        e.to_string(),
                        Cause::Unfiled,
                    )
                }
            };
            let open_key = (rule.name.clone(), format!("coalesce:{key}"));
            let max_delay = coalesce.max_delay.map(ms).unwrap_or(i64::MAX);
            let quiet = ms(coalesce.quiet);
            if self.merge(&open_key, event, |p| {
                now_ms
                    .saturating_add(quiet)
                    .min(p.first_ms.saturating_add(max_delay))
            }) {
                return Ok(());
            }
            let due = now_ms.saturating_add(quiet.min(max_delay));
            return self.file_new(now_ms, queue, &key, Some(open_key), due, event);
        }
        match rule.concurrency.on_busy {
            OnBusy::Coalesce => {
                let open_key = (rule.name.clone(), format!("busy:{}", queue.1));
                if self.merge(&open_key, event, |p| p.due_ms) {
                    return Ok(());
                }
                let key = queue.1.clone();
                self.file_new(now_ms, queue, &key, Some(open_key), now_ms, event)
            }
            OnBusy::Skip if self.busy(rule, &queue) => self.record(
                now_ms,
                &rule.name,
                &queue.1,
                event,
                "on_busy: skip while the concurrency limit was reached".into(),
                Cause::Skipped,
            ),
            OnBusy::Supersede => {
                let mut running = self.running_keys.get(&queue).cloned().unwrap_or_default();
                running.sort_unstable();
                for id in running {
                    if let Some(r) = self.running.get_mut(&id) {
                        r.superseded = true;
                        self.effects.push(Effect::Cancel(id));
                    }
                }
                for id in self.queues.ids(&queue) {
                    self.forget_pending(id);
                    self.effects.push(Effect::Finish(Finish {
                        id,
                        rule: rule.name.clone(),
                        key: queue.1.clone(),
                        state: State::Superseded,
                        exit_code: None,
                        error: Some("superseded by a newer event".into()),
                        tail: None,
                        cause: Cause::Superseded,
                    }));
                }
                let key = queue.1.clone();
                self.file_new(now_ms, queue, &key, None, now_ms, event)
            }
            OnBusy::Queue | OnBusy::Skip => {
                let key = queue.1.clone();
                self.file_new(now_ms, queue, &key, None, now_ms, event)
            }
        }
    }

    /// Add `event` to the pending job open under `open_key`, if there is one; `due` gives
    /// its new due time.
    fn merge(
        &mut self,
        open_key: &(String, String),
        event: &Arc<Event>,
        due: impl FnOnce(&Pending) -> i64,
    ) -> bool {
        let Some(&id) = self.open.get(open_key) else {
            return false;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        let (old, new) = (p.due_ms, due(p));
        p.due_ms = new;
        p.events.push(event.clone());
        let pos = p.events.len() - 1;
        if old != new {
            let queue = p.queue.clone();
            self.queues.remove(&queue, old, id);
            self.queues.insert(&queue, new, id);
        }
        self.effects.push(Effect::Append {
            id,
            rule: open_key.0.clone(),
            pos,
            event: event.clone(),
            due: new,
        });
        true
    }

    /// A new pending job for one event; `open_key` lets later events merge into it until it
    /// starts.
    fn file_new(
        &mut self,
        now_ms: i64,
        queue: QueueKey,
        key: &str,
        open_key: Option<(String, String)>,
        due: i64,
        event: &Arc<Event>,
    ) -> Result<(), ScheduleError> {
        let id = self.next_id()?;
        self.file_with_id(id, now_ms, queue, key, open_key, due, Reason::Event, event);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn file_with_id(
        &mut self,
        id: i64,
        now_ms: i64,
        queue: QueueKey,
        key: &str,
        open_key: Option<(String, String)>,
        due: i64,
        reason: Reason,
        event: &Arc<Event>,
    ) {
        self.effects.push(Effect::Insert {
            id,
            rule: queue.0.clone(),
            key: key.to_string(),
            created: now_ms,
            due,
            reason,
            events: vec![event.clone()],
        });
        if let Some(k) = &open_key {
            self.open.insert(k.clone(), id);
        }
        self.insert_pending(
            id,
            Pending {
                queue,
                open_key,
                first_ms: now_ms,
                due_ms: due,
                attempt: 1,
                reason,
                events: vec![event.clone()],
            },
        );
    }

    fn insert_pending(&mut self, id: i64, p: Pending) {
        self.queues.insert(&p.queue, p.due_ms, id);
        self.live_changed(&p.queue.0, true);
        self.pending.insert(id, p);
    }

    /// Start the clock of every fallback rule seen for the first time (or whose interval
    /// changed), and file a job for every fallback that is due.
    fn file_fallbacks(&mut self, now_ms: i64) {
        for i in 0..self.fallback_rules.len() {
            let rule = self.fallback_rules[i].clone();
            let Some(fb) = &rule.fallback else {
                continue;
            };
            let every = ms(fb.every);
            match self.clocks.get_mut(&rule.name) {
                None => {
                    self.clocks.insert(
                        rule.name.clone(),
                        Clock {
                            last: now_ms,
                            every,
                        },
                    );
                    self.effects.push(Effect::Clock {
                        rule: rule.name.clone(),
                        at: now_ms,
                        every,
                    });
                    continue;
                }
                Some(c) if c.every != every => {
                    c.every = every;
                    let at = c.last;
                    self.effects.push(Effect::Clock {
                        rule: rule.name.clone(),
                        at,
                        every,
                    });
                }
                Some(_) => {}
            }
            if !self.fallback_is_due(&rule, now_ms) {
                continue;
            }
            // No id: the caller reserves them (see `fallbacks_due`); it stays due until then.
            let Ok(id) = self.next_id() else {
                continue;
            };
            let mut stand_in = rule.fallback_event(&format!("fallback-{id}"));
            // Stored like a received event, so a restart loads it back: its bytes are the
            // canonical body (empty frames would not parse again).
            stand_in.frames.clear();
            let time = rfc3339(now_ms);
            if let Some(obj) = stand_in.body.as_object_mut() {
                obj.insert("time".into(), serde_json::Value::String(time.clone()));
            }
            stand_in.time = Some(time);
            // A key that needs event data cannot render without an event: the run counts
            // against the rule's default key.
            let key = rule
                .concurrency_key(&stand_in)
                .ok()
                .flatten()
                .unwrap_or_default();
            let queue = (rule.name.clone(), key.clone());
            let stand_in = Arc::new(stand_in);
            self.file_with_id(
                id,
                now_ms,
                queue,
                &key,
                None,
                now_ms,
                Reason::Fallback,
                &stand_in,
            );
        }
    }

    fn forget_pending(&mut self, id: i64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.queues.remove(&p.queue, p.due_ms, id);
        self.live_changed(&p.queue.0, false);
        if let Some(k) = &p.open_key {
            if self.open.get(k) == Some(&id) {
                self.open.remove(k);
            }
        }
        Some(p)
    }

    /// Start every due job that its limits allow, oldest due first.
    pub fn dispatch(&mut self, now_ms: i64) {
        if self.draining {
            return;
        }
        self.file_fallbacks(now_ms);
        let mut cursor = None;
        while let Some((due, id)) = self.queues.next_head(cursor) {
            if due > now_ms {
                break;
            }
            cursor = Some((due, id));
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let Some(rule) = self.rules.rule(&p.queue.0).cloned() else {
                if let Some(p) = self.forget_pending(id) {
                    let name = p.queue.0;
                    self.effects.push(Effect::Finish(Finish {
                        id,
                        error: Some(format!("rule {name} no longer exists (removed or renamed)")),
                        rule: name,
                        key: p.queue.1,
                        state: State::Cancelled,
                        exit_code: None,
                        tail: None,
                        cause: Cause::RuleGone,
                    }));
                }
                continue;
            };
            // Every job in this queue shares the key and the pool, and nothing frees a
            // slot during dispatch: a blocked head blocks its whole queue for this pass.
            if self.busy(&rule, &p.queue) || self.pool_full(&rule) {
                continue;
            }
            if let Some(p) = self.forget_pending(id) {
                self.start(&rule, id, p, now_ms);
            }
        }
    }

    fn start(&mut self, rule: &Arc<Rule>, id: i64, p: Pending, now_ms: i64) {
        let spec = match launch::prepare(rule, id, p.attempt, p.reason, &p.events, self.limits) {
            Ok(spec) => spec,
            Err(e) => {
                self.effects.push(Effect::Finish(Finish {
                    id,
                    rule: rule.name.clone(),
                    key: p.queue.1,
                    state: State::Failed,
                    exit_code: None,
                    error: Some(e.to_string()),
                    tail: None,
                    cause: Cause::Refused,
                }));
                return;
            }
        };
        self.running_keys
            .entry(p.queue.clone())
            .or_default()
            .push(id);
        if let Some(pool) = &rule.concurrency.pool {
            *self.running_pools.entry(pool.clone()).or_insert(0) += 1;
        }
        self.live_changed(&rule.name, true);
        if let Some(fb) = &rule.fallback {
            self.clocks.insert(
                rule.name.clone(),
                Clock {
                    last: now_ms,
                    every: ms(fb.every),
                },
            );
        }
        self.effects.push(Effect::Start(Launch {
            id,
            rule: rule.clone(),
            key: p.queue.1.clone(),
            attempt: p.attempt,
            reason: p.reason,
            events: p.events.clone(),
            spec,
        }));
        self.running.insert(
            id,
            Running {
                queue: p.queue,
                pool: rule.concurrency.pool.clone(),
                superseded: false,
                attempt: p.attempt,
                reason: p.reason,
                retry: rule.retry.clone(),
                events: p.events,
            },
        );
    }

    fn forget_running(&mut self, id: i64) -> Option<Running> {
        let run = self.running.remove(&id)?;
        self.live_changed(&run.queue.0, false);
        if let Some(ids) = self.running_keys.get_mut(&run.queue) {
            ids.retain(|&r| r != id);
            if ids.is_empty() {
                self.running_keys.remove(&run.queue);
            }
        }
        if let Some(pool) = &run.pool {
            if let Some(n) = self.running_pools.get_mut(pool) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.running_pools.remove(pool);
                }
            }
        }
        Some(run)
    }

    /// The store refused to mark job `id` running (`hark jobs cancel` got there first):
    /// it never ran, and its slot is free again.
    pub fn not_started(&mut self, id: i64) {
        self.forget_running(id);
    }

    /// Record how job `id` ended, or schedule its retry. `random` is any random number; it
    /// picks the jitter (up to 10 % of the backoff).
    pub fn on_finished(&mut self, now_ms: i64, id: i64, finished: Finished, random: u32) {
        let Some(run) = self.forget_running(id) else {
            return;
        };
        let rule = run.queue.0.clone();
        self.effects.push(Effect::Ended {
            id,
            rule: rule.clone(),
            duration: finished.duration,
        });
        let tail = Some(finished.output_tail).filter(|t| !t.is_empty());
        let (state, end, error) = match &finished.outcome {
            _ if run.superseded => (
                State::Superseded,
                None,
                Some("superseded by a newer event".to_string()),
            ),
            Outcome::Cancelled if self.draining => {
                self.effects.push(Effect::LeftRunning { id, rule });
                return;
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
        let delay = match (end, &run.retry) {
            (Some(end), Some(retry)) => retry.next_delay(run.attempt, end),
            _ => None,
        };
        if let Some(delay) = delay {
            let spread = ms(delay) / 10;
            let jitter = if spread > 0 {
                i64::from(random) % spread
            } else {
                0
            };
            let due = now_ms.saturating_add(ms(delay)).saturating_add(jitter);
            self.effects.push(Effect::Retry {
                id,
                rule,
                attempt: run.attempt,
                state,
                exit_code,
                error,
                tail,
                due,
                delay: Duration::from_millis(u64::try_from(due - now_ms).unwrap_or(0)),
            });
            self.insert_pending(
                id,
                Pending {
                    queue: run.queue,
                    open_key: None,
                    first_ms: now_ms,
                    due_ms: due,
                    attempt: run.attempt + 1,
                    reason: run.reason,
                    events: run.events,
                },
            );
            return;
        }
        self.effects.push(Effect::Finish(Finish {
            id,
            rule,
            key: run.queue.1,
            state,
            exit_code,
            error,
            tail,
            cause: Cause::Ran {
                attempt: run.attempt,
                duration: finished.duration,
                events: run.events,
            },
        }));
    }

    /// Track a live pending job that is in the store but not in memory.
    pub fn adopt(&mut self, job: Recovered) {
        if self.pending.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return;
        }
        let queue = (job.rule, job.key);
        self.insert_pending(
            job.id,
            Pending {
                queue,
                open_key: None,
                first_ms: job.created,
                due_ms: job.due,
                attempt: job.attempt,
                reason: job.reason,
                events: job.events,
            },
        );
    }

    /// Forget pending job `id` in memory only (its store row is what counts): after a
    /// rolled back transaction added events to it, so that it can be loaded again.
    pub fn forget(&mut self, id: i64) {
        self.forget_pending(id);
    }

    /// A transaction that would have cancelled running job `id` as superseded was rolled
    /// back: it was not superseded after all.
    pub fn not_superseded(&mut self, id: i64) {
        if let Some(r) = self.running.get_mut(&id) {
            r.superseded = false;
        }
    }

    /// `hark jobs cancel` asked to stop these jobs; the running ones get a [`Effect::Cancel`].
    pub fn cancel_requested(&mut self, ids: &[i64]) {
        for &id in ids {
            if self.running.contains_key(&id) {
                self.effects.push(Effect::Cancel(id));
            }
        }
    }

    /// Match memory to the store's pending jobs: pending jobs that are no longer pending
    /// there (cancelled by `hark jobs`) are forgotten; the returned ids are pending there
    /// but unknown here (a `hark jobs retry`), for the caller to load and [`adopt`].
    ///
    /// [`adopt`]: Scheduler::adopt
    pub fn reconcile(&mut self, store_pending: &HashSet<i64>) -> Vec<i64> {
        let mut gone: Vec<i64> = self
            .pending
            .keys()
            .filter(|id| !store_pending.contains(id))
            .copied()
            .collect();
        gone.sort_unstable();
        for id in gone {
            self.forget_pending(id);
        }
        let mut new: Vec<i64> = store_pending
            .iter()
            .filter(|id| !self.pending.contains_key(id) && !self.running.contains_key(id))
            .copied()
            .collect();
        new.sort_unstable();
        new
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler against a fake clock: `now` is a plain number of milliseconds, and
    //! every test reads as "this happened at t, so the scheduler decided that".
    use super::*;
    use crate::rules::compile::parse_str;
    use crate::rules::events::from_loose;
    use serde_json::json;
    use std::path::Path;

    const SECOND: i64 = 1000;

    fn rule_set(yaml: &str) -> Arc<RuleSet> {
        let file = parse_str(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let (set, refused) = RuleSet::build(&[file]);
        assert!(refused.is_empty(), "{refused:?}");
        Arc::new(set)
    }

    /// One rule `r` on topic `t`, with `extra` YAML under it.
    fn one_rule(extra: &str) -> String {
        format!("rules:\n  - name: r\n    match: {{topic: t}}\n    run: {{command: [/bin/true]}}\n{extra}")
    }

    fn ran(outcome: Outcome) -> Finished {
        Finished {
            outcome,
            output_tail: String::new(),
            output_bytes: 0,
            duration: Duration::from_secs(1),
        }
    }

    fn exit(code: i32) -> Finished {
        ran(Outcome::Failed {
            code: Some(code),
            signal: None,
        })
    }

    /// A scheduler, its clock, and what it decided since the last look.
    struct World {
        sched: Scheduler,
        now: i64,
        uuids: u32,
    }

    impl World {
        fn new(yaml: &str) -> Self {
            Self::with_pools(yaml, BTreeMap::new())
        }

        fn with_pools(yaml: &str, config_pools: BTreeMap<String, u32>) -> Self {
            let mut sched = Scheduler::new(
                rule_set(yaml),
                SchedulerOptions {
                    config_pools,
                    log_limit: 1024,
                    tail_limit: 1024,
                },
            );
            sched.add_ids(1..1000);
            World {
                sched,
                now: 0,
                uuids: 0,
            }
        }

        /// An event with `data` arrives on topic `topic` now; it is filed and dispatched.
        fn publish_on(&mut self, topic: &str, data: serde_json::Value) -> Vec<Effect> {
            self.uuids += 1;
            let event = Arc::new(
                from_loose(json!({"tag": topic, "uuid": format!("e{}", self.uuids), "data": data}))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            let rules = self.sched.rules().clone();
            for rule in rules.matching(&event) {
                self.sched.on_match(self.now, rule, &event).unwrap();
            }
            self.sched.dispatch(self.now);
            self.sched.take_effects()
        }

        fn publish(&mut self, data: serde_json::Value) -> Vec<Effect> {
            self.publish_on("t", data)
        }

        /// The clock moves to `t` ms; due jobs start.
        fn at(&mut self, t: i64) -> Vec<Effect> {
            self.now = t;
            self.sched.dispatch(t);
            self.sched.take_effects()
        }

        /// Job `id` ends now with `finished`; the freed slot is dispatched.
        fn end(&mut self, id: i64, finished: Finished) -> Vec<Effect> {
            self.end_with_random(id, finished, 0)
        }

        fn end_with_random(&mut self, id: i64, finished: Finished, random: u32) -> Vec<Effect> {
            self.sched.on_finished(self.now, id, finished, random);
            self.sched.dispatch(self.now);
            self.sched.take_effects()
        }
    }

    fn inserted(effects: &[Effect]) -> Vec<i64> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Insert { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// (job, uuids of its events) of every start.
    fn started(effects: &[Effect]) -> Vec<(i64, Vec<String>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start(l) => Some((l.id, l.events.iter().map(|e| e.uuid.clone()).collect())),
                _ => None,
            })
            .collect()
    }

    fn started_ids(effects: &[Effect]) -> Vec<i64> {
        started(effects).into_iter().map(|(id, _)| id).collect()
    }

    fn finished(effects: &[Effect]) -> Vec<(i64, State)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Finish(f) => Some((f.id, f.state)),
                _ => None,
            })
            .collect()
    }

    fn cancelled(effects: &[Effect]) -> Vec<i64> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Cancel(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn uuids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn queue_runs_one_at_a_time_in_arrival_order() {
        let mut w = World::new(&one_rule(""));
        let first = w.publish(json!({}));
        assert_eq!(started(&first), vec![(1, uuids(&["e1"]))]);
        let second = w.publish(json!({}));
        let third = w.publish(json!({}));
        assert_eq!(inserted(&second), vec![2]);
        assert!(
            started(&second).is_empty() && started(&third).is_empty(),
            "the limit is 1"
        );
        let after = w.end(1, ran(Outcome::Success));
        assert_eq!(finished(&after), vec![(1, State::Succeeded)]);
        assert_eq!(
            started_ids(&after),
            vec![2],
            "the oldest waiting job is next"
        );
        assert_eq!(started_ids(&w.end(2, ran(Outcome::Success))), vec![3]);
    }

    #[test]
    fn on_busy_coalesce_keeps_one_waiting_job_that_takes_later_events() {
        let mut w = World::new(&one_rule("    concurrency: {on_busy: coalesce}\n"));
        assert_eq!(started_ids(&w.publish(json!({}))), vec![1]);
        assert_eq!(inserted(&w.publish(json!({}))), vec![2], "one job waits");
        let merged = w.publish(json!({}));
        assert!(inserted(&merged).is_empty());
        assert!(matches!(
            merged.as_slice(),
            [Effect::Append { id: 2, pos: 1, .. }]
        ));
        assert_eq!(
            started(&w.end(1, ran(Outcome::Success))),
            vec![(2, uuids(&["e2", "e3"]))],
            "it runs once, with both events"
        );
    }

    #[test]
    fn on_busy_skip_records_the_event_and_never_runs_it() {
        let mut w = World::new(&one_rule("    concurrency: {on_busy: skip}\n"));
        assert_eq!(started_ids(&w.publish(json!({}))), vec![1]);
        let skipped = w.publish(json!({}));
        assert_eq!(inserted(&skipped), vec![2], "recorded for hark jobs");
        assert_eq!(finished(&skipped), vec![(2, State::Skipped)]);
        let after = w.end(1, ran(Outcome::Success));
        assert!(started(&after).is_empty(), "nothing was waiting");
        assert_eq!(
            started_ids(&w.publish(json!({}))),
            vec![3],
            "not busy any more: runs"
        );
    }

    #[test]
    fn on_busy_supersede_stops_the_running_job_and_replaces_the_waiting_one() {
        let mut w = World::new(&one_rule("    concurrency: {on_busy: supersede}\n"));
        assert_eq!(started_ids(&w.publish(json!({}))), vec![1]);
        let second = w.publish(json!({}));
        assert_eq!(cancelled(&second), vec![1], "the running job is stopped");
        assert_eq!(inserted(&second), vec![2]);
        assert!(started(&second).is_empty(), "it waits until job 1 is gone");
        let third = w.publish(json!({}));
        assert_eq!(
            finished(&third),
            vec![(2, State::Superseded)],
            "the waiting job is replaced"
        );
        assert_eq!(inserted(&third), vec![3]);
        let after = w.end(1, ran(Outcome::Cancelled));
        assert_eq!(
            finished(&after),
            vec![(1, State::Superseded)],
            "recorded as superseded, not cancelled"
        );
        assert_eq!(started(&after), vec![(3, uuids(&["e3"]))]);
    }

    #[test]
    fn coalescing_waits_for_quiet_and_an_event_during_the_run_gives_exactly_one_more_run() {
        let mut w = World::new(&one_rule("    coalesce: {quiet: 10s}\n"));
        assert_eq!(inserted(&w.publish(json!({}))), vec![1]);
        w.now = 5 * SECOND;
        assert!(matches!(
            w.publish(json!({})).as_slice(),
            [Effect::Append { id: 1, due, .. }] if *due == 15 * SECOND
        ));
        assert!(started(&w.at(15 * SECOND - 1)).is_empty(), "not quiet yet");
        assert_eq!(w.sched.next_due(w.now), Some(15 * SECOND));
        assert_eq!(started(&w.at(15 * SECOND)), vec![(1, uuids(&["e1", "e2"]))]);
        // During the run: the first event opens a new job, later ones join it.
        w.now = 16 * SECOND;
        assert_eq!(inserted(&w.publish(json!({}))), vec![2]);
        w.now = 17 * SECOND;
        assert!(inserted(&w.publish(json!({}))).is_empty());
        assert!(
            started(&w.at(27 * SECOND)).is_empty(),
            "job 2 is due, but job 1 still runs"
        );
        w.now = 30 * SECOND;
        assert_eq!(
            started(&w.end(1, ran(Outcome::Success))),
            vec![(2, uuids(&["e3", "e4"]))],
            "exactly one more run, with what arrived during the first"
        );
        assert!(started(&w.end(2, ran(Outcome::Success))).is_empty());
        assert_eq!(w.sched.pending_count(), 0);
    }

    #[test]
    fn max_delay_caps_how_long_a_steady_stream_is_held() {
        let mut w = World::new(&one_rule("    coalesce: {quiet: 10s, max_delay: 25s}\n"));
        w.publish(json!({}));
        for t in [5, 10, 15, 20] {
            assert!(started(&w.at(t * SECOND)).is_empty());
            w.publish(json!({}));
        }
        assert!(started(&w.at(25 * SECOND - 1)).is_empty());
        let start = w.at(25 * SECOND);
        assert_eq!(
            started(&start).first().map(|(_, evs)| evs.len()),
            Some(5),
            "never quiet, but started at max_delay"
        );
    }

    #[test]
    fn a_pool_is_shared_across_rules() {
        let yaml = "rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true]}\n    concurrency: {limit: 5, pool: io}\n  - name: b\n    match: {topic: b}\n    run: {command: [/bin/true]}\n    concurrency: {limit: 5, pool: io}\npools:\n  io: {limit: 1}\n";
        let mut w = World::new(yaml);
        assert_eq!(started_ids(&w.publish_on("a", json!({}))), vec![1]);
        assert!(
            started(&w.publish_on("b", json!({}))).is_empty(),
            "rule b has room, the pool does not"
        );
        assert_eq!(started_ids(&w.end(1, ran(Outcome::Success))), vec![2]);

        let mut bigger = World::with_pools(yaml, BTreeMap::from([("io".to_string(), 2)]));
        assert_eq!(started_ids(&bigger.publish_on("a", json!({}))), vec![1]);
        assert_eq!(
            started_ids(&bigger.publish_on("b", json!({}))),
            vec![2],
            "hark.yaml's size overrides the rule file's"
        );
        assert!(started(&bigger.publish_on("a", json!({}))).is_empty());
    }

    #[test]
    fn the_limit_is_per_concurrency_key() {
        let mut w = World::new(&one_rule(
            "    concurrency: {key: '${data.repo}', limit: 1}\n",
        ));
        assert_eq!(started_ids(&w.publish(json!({"repo": "main"}))), vec![1]);
        assert_eq!(
            started_ids(&w.publish(json!({"repo": "contrib"}))),
            vec![2],
            "another key has its own slot"
        );
        assert!(started(&w.publish(json!({"repo": "main"}))).is_empty());
        assert!(
            started(&w.end(2, ran(Outcome::Success))).is_empty(),
            "contrib's slot does not help main"
        );
        assert_eq!(started_ids(&w.end(1, ran(Outcome::Success))), vec![3]);
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_for_listed_exit_codes_only() {
        let mut w = World::new(&one_rule(
            "    retry: {attempts: 3, backoff: 10s, on_exit: [75]}\n",
        ));
        w.publish(json!({}));
        let retry = w.end_with_random(1, exit(75), 0);
        assert!(
            matches!(retry.as_slice(), [Effect::Ended { .. }, Effect::Retry { id: 1, attempt: 1, due, .. }] if *due == 10 * SECOND),
            "{retry:?}"
        );
        assert!(started(&w.at(10 * SECOND - 1)).is_empty());
        let second = w.at(10 * SECOND);
        assert!(matches!(second.as_slice(), [Effect::Start(l)] if l.id == 1 && l.attempt == 2));
        // The most jitter is just under 10 % of the (now doubled) backoff.
        let retry = w.end_with_random(1, exit(75), u32::MAX);
        let due = retry
            .iter()
            .find_map(|e| match e {
                Effect::Retry { due, .. } => Some(*due),
                _ => None,
            })
            .expect("retried again");
        assert!(
            (30 * SECOND..32 * SECOND).contains(&due),
            "20 s backoff plus < 2 s jitter after t=10 s: {due}"
        );
        w.at(due);
        let last = w.end(1, exit(75));
        assert_eq!(
            finished(&last),
            vec![(1, State::Failed)],
            "attempts exhausted"
        );

        let mut other = World::new(&one_rule(
            "    retry: {attempts: 3, backoff: 10s, on_exit: [75]}\n",
        ));
        other.publish(json!({}));
        let end = other.end(1, exit(1));
        assert_eq!(finished(&end), vec![(1, State::Failed)], "1 is not listed");
        assert!(matches!(&end[1], Effect::Finish(f) if f.exit_code == Some(1)));
    }

    #[test]
    fn a_timeout_is_its_own_outcome_and_retried_only_when_asked() {
        let mut w = World::new(&one_rule("    retry: {attempts: 2, on_exit: [75]}\n"));
        w.publish(json!({}));
        let end = w.end(1, ran(Outcome::TimedOut));
        assert_eq!(finished(&end), vec![(1, State::TimedOut)]);
        assert!(
            matches!(&end[1], Effect::Finish(f) if f.error.as_deref().is_some_and(|e| e.contains("timed out")))
        );

        let mut w = World::new(&one_rule(
            "    retry: {attempts: 2, backoff: 1s, on_timeout: true}\n",
        ));
        w.publish(json!({}));
        let end = w.end(1, ran(Outcome::TimedOut));
        assert!(matches!(
            &end[1],
            Effect::Retry {
                state: State::TimedOut,
                ..
            }
        ));
    }

    #[test]
    fn draining_starts_nothing_and_leaves_stopped_jobs_running_in_the_store() {
        let mut w = World::new(&one_rule(""));
        w.publish(json!({}));
        w.publish(json!({}));
        w.sched.drain();
        assert!(
            started(&w.end(1, ran(Outcome::Success))).is_empty(),
            "job 2 is due, but nothing new starts"
        );
        let mut w = World::new(&one_rule(""));
        w.publish(json!({}));
        w.sched.drain();
        w.sched.cancel_all();
        assert_eq!(cancelled(&w.sched.take_effects()), vec![1]);
        let end = w.end(1, ran(Outcome::Cancelled));
        assert!(
            matches!(
                end.as_slice(),
                [Effect::Ended { .. }, Effect::LeftRunning { id: 1, .. }]
            ),
            "no outcome is written, so the next start runs it again: {end:?}"
        );
    }

    #[test]
    fn hark_jobs_cancel_drops_a_pending_job_and_stops_a_running_one() {
        let mut w = World::new(&one_rule(""));
        w.publish(json!({}));
        w.publish(json!({}));
        // `hark jobs cancel 2` marked it cancelled in the store; job 7 came from a retry.
        let unknown = w.sched.reconcile(&HashSet::from([7]));
        assert_eq!(unknown, vec![7], "for the caller to load and adopt");
        assert!(!w.sched.is_pending(2));
        w.sched.cancel_requested(&[1]);
        assert_eq!(cancelled(&w.sched.take_effects()), vec![1]);
        let end = w.end(1, ran(Outcome::Cancelled));
        assert_eq!(finished(&end), vec![(1, State::Cancelled)]);
        assert!(started(&end).is_empty(), "job 2 is gone");
    }

    #[test]
    fn a_start_the_store_refused_frees_its_slot() {
        let mut w = World::new(&one_rule(""));
        w.publish(json!({}));
        w.publish(json!({}));
        w.sched.not_started(1);
        assert_eq!(started_ids(&w.at(0)), vec![2]);
    }

    #[test]
    fn a_job_whose_rule_disappeared_is_cancelled_when_due() {
        let mut w = World::new(&one_rule("    coalesce: {quiet: 10s}\n"));
        w.publish(json!({}));
        w.sched.set_rules(rule_set(
            "rules:\n  - name: other\n    match: {topic: t}\n    run: {command: [/bin/true]}\n",
        ));
        assert!(finished(&w.at(5 * SECOND)).is_empty(), "not due yet");
        let due = w.at(10 * SECOND);
        assert_eq!(finished(&due), vec![(1, State::Cancelled)]);
        assert!(matches!(&due[0], Effect::Finish(f) if matches!(f.cause, Cause::RuleGone)));
        assert_eq!(w.sched.pending_count(), 0);
    }

    #[test]
    fn recovered_jobs_run_and_ids_come_from_reserved_blocks() {
        let mut w = World::new(&one_rule(""));
        w.sched = Scheduler::new(
            w.sched.rules().clone(),
            SchedulerOptions {
                config_pools: BTreeMap::new(),
                log_limit: 1,
                tail_limit: 1,
            },
        );
        let event = Arc::new(from_loose(json!({"tag": "t", "uuid": "old"})).unwrap());
        w.sched.adopt(Recovered {
            id: 40,
            rule: "r".into(),
            key: String::new(),
            created: 0,
            due: 0,
            attempt: 2,
            reason: Reason::Event,
            events: vec![event],
        });
        assert!(matches!(w.at(0).as_slice(), [Effect::Start(l)] if l.id == 40 && l.attempt == 2));
        let rule = w.sched.rules().rule("r").cloned().unwrap();
        let next = Arc::new(from_loose(json!({"tag": "t", "uuid": "new"})).unwrap());
        assert_eq!(
            w.sched.on_match(0, &rule, &next),
            Err(ScheduleError::OutOfIds),
            "no block handed over yet"
        );
        w.sched.add_ids(41..42);
        w.sched.add_ids(300..302);
        for _ in 0..3 {
            w.sched.on_match(0, &rule, &next).unwrap();
        }
        assert_eq!(inserted(&w.sched.take_effects()), vec![41, 300, 301]);
        assert_eq!(w.sched.ids_available(), 0);
    }

    #[test]
    fn a_command_that_cannot_be_rendered_is_refused_without_taking_a_slot() {
        let mut w = World::new(
            "rules:\n  - name: r\n    match: {topic: t}\n    run: {command: [/bin/echo, '${data.missing}']}\n",
        );
        let first = w.publish(json!({}));
        assert_eq!(finished(&first), vec![(1, State::Failed)]);
        assert!(matches!(&first[1], Effect::Finish(f) if matches!(f.cause, Cause::Refused)));
        assert_eq!(w.sched.running_count(), 0);
        assert_eq!(started_ids(&w.publish(json!({"missing": "x"}))), vec![2]);
    }

    /// (job, reason) of every start.
    fn reasons(effects: &[Effect]) -> Vec<(i64, Reason)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start(l) => Some((l.id, l.reason)),
                _ => None,
            })
            .collect()
    }

    fn env(l: &Launch, name: &str) -> Option<String> {
        l.spec
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    const FALLBACK: &str = "    fallback: {every: 10s}\n";

    #[test]
    fn a_fallback_fires_after_its_interval_when_no_event_comes() {
        let mut w = World::new(&one_rule(FALLBACK));
        let first = w.at(0);
        assert!(
            matches!(
                first.as_slice(),
                [Effect::Clock {
                    at: 0,
                    every: 10_000,
                    ..
                }]
            ),
            "first seen: the clock starts and is persisted: {first:?}"
        );
        assert_eq!(
            w.sched.next_due(0),
            Some(10 * SECOND),
            "the jobs thread wakes for it"
        );
        assert!(w.at(10 * SECOND - 1).is_empty());
        let due = w.at(10 * SECOND);
        assert!(
            matches!(&due[0], Effect::Insert { reason: Reason::Fallback, events, .. } if events.len() == 1),
            "{due:?}"
        );
        assert_eq!(reasons(&due), vec![(1, Reason::Fallback)]);
        let Some(Effect::Start(l)) = due.get(1) else {
            panic!("{due:?}");
        };
        assert_eq!(env(l, "HARK_REASON").as_deref(), Some("fallback"));
        assert!(
            l.spec.stdin.is_null(),
            "stdin: event, and there is no event"
        );
        assert!(w.at(25 * SECOND).is_empty(), "not while it runs");
        let end = w.end(1, ran(Outcome::Success));
        assert_eq!(
            reasons(&end),
            vec![(2, Reason::Fallback)],
            "overdue since its start at 10 s: runs again once the first ends"
        );
    }

    #[test]
    fn events_that_keep_a_rule_fresh_leave_its_fallback_idle() {
        let mut w = World::new(&one_rule(FALLBACK));
        w.at(0);
        for t in [6, 12, 18, 24] {
            w.now = t * SECOND;
            let got = w.publish(json!({}));
            assert!(
                reasons(&got).iter().all(|(_, r)| *r == Reason::Event),
                "{got:?}"
            );
            let Some(Effect::Start(l)) = got.iter().find(|e| matches!(e, Effect::Start(_))) else {
                panic!("the event runs: {got:?}");
            };
            assert_eq!(env(l, "HARK_REASON").as_deref(), Some("event"));
            let id = l.id;
            assert!(started(&w.end(id, ran(Outcome::Success))).is_empty());
            assert!(w.at(t * SECOND + 9 * SECOND).is_empty(), "fresh at {t} s");
        }
        assert_eq!(w.sched.next_due(w.now), Some(34 * SECOND));
        assert_eq!(
            reasons(&w.at(34 * SECOND)).len(),
            1,
            "10 s after the last start"
        );
    }

    #[test]
    fn the_fallback_clock_comes_back_from_the_store_after_a_restart() {
        let mut w = World::new(&one_rule(FALLBACK));
        // Last started at 5 s (as the store says), restarted at 12 s.
        w.sched
            .set_clocks([("r".to_string(), 5 * SECOND, 10 * SECOND)]);
        assert!(
            w.at(12 * SECOND).is_empty(),
            "no new clock: the stored one counts"
        );
        assert_eq!(w.sched.next_due(w.now), Some(15 * SECOND));
        assert!(w.at(15 * SECOND - 1).is_empty());
        assert_eq!(reasons(&w.at(15 * SECOND)), vec![(1, Reason::Fallback)]);
        assert_eq!(w.sched.fallback_due("r"), Some(25 * SECOND));
        // A changed interval is written back with the same last start.
        let mut w = World::new(&one_rule(FALLBACK));
        w.sched
            .set_clocks([("r".to_string(), 5 * SECOND, 60 * SECOND)]);
        assert!(matches!(
            w.at(6 * SECOND).as_slice(),
            [Effect::Clock { at, every: 10_000, .. }] if *at == 5 * SECOND
        ));
    }

    #[test]
    fn no_fallback_while_a_job_of_the_rule_is_pending_or_running() {
        let mut w = World::new(&one_rule(FALLBACK));
        w.at(0);
        assert_eq!(started_ids(&w.publish(json!({}))), vec![1]);
        assert_eq!(
            inserted(&w.publish(json!({}))),
            vec![2],
            "waits for the slot"
        );
        assert!(w.at(30 * SECOND).is_empty(), "job 1 runs, job 2 waits");
        assert_eq!(w.sched.fallbacks_due(w.now), 0);
        assert_eq!(w.sched.next_due(w.now), None, "nothing to wake for");
        let end = w.end(1, ran(Outcome::Success));
        assert_eq!(
            reasons(&end),
            vec![(2, Reason::Event)],
            "the waiting event first"
        );
        let end = w.end(2, ran(Outcome::Success));
        assert!(
            started(&end).is_empty(),
            "job 2 started at 30 s: the clock is fresh"
        );
        assert_eq!(reasons(&w.at(40 * SECOND)), vec![(3, Reason::Fallback)]);
        w.sched.drain();
        assert_eq!(
            w.sched.fallbacks_due(100 * SECOND),
            0,
            "draining starts nothing"
        );
    }

    #[test]
    fn a_fallback_respects_the_pool_of_its_rule() {
        let yaml = "rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true]}\n    concurrency: {pool: io}\n  - name: b\n    match: {topic: b}\n    run: {command: [/bin/true]}\n    concurrency: {pool: io}\n    fallback: {every: 10s}\npools:\n  io: {limit: 1}\n";
        let mut w = World::new(yaml);
        w.at(0);
        w.now = 5 * SECOND;
        assert_eq!(started_ids(&w.publish_on("a", json!({}))), vec![1]);
        let due = w.at(10 * SECOND);
        assert_eq!(inserted(&due), vec![2], "filed");
        assert!(started(&due).is_empty(), "the pool is full");
        assert!(w.at(20 * SECOND).is_empty(), "one fallback job at a time");
        assert_eq!(
            reasons(&w.end(1, ran(Outcome::Success))),
            vec![(2, Reason::Fallback)]
        );
    }
}
