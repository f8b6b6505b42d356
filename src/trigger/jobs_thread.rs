//! The jobs thread: owns the store, the scheduler and the rule cache, so every SQLite
//! write, rule directory walk and scheduling decision happens here, never on the tokio
//! event loop. Inputs arrive over channels (admitted events, finished runs, reload,
//! drain); each input becomes scheduler effects that are applied in one transaction and
//! committed, and only then are commands handed to the tokio runtime.
//!
//! When the store cannot commit (a full disk, an I/O error), nothing is lost and nothing
//! runs that is not on disk: the transaction is rolled back, the scheduler is brought back
//! to what the store holds, and the thread stops taking events (so admission, then the
//! sources, block: backpressure) while it retries the same burst with a bounded backoff.
//! Finished runs are still taken in; an end that cannot be recorded is retried with the
//! burst, and until it is recorded the store has the job `running`, so a daemon that stops
//! before then runs it again after its restart (at least once, never lost). AMQP
//! deliveries are acked only once the transaction that filed their jobs committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rand_core::RngCore;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::reload::RuleCache;
use crate::event::Event;
use crate::jobs::report::Reporter;
use crate::jobs::runner::{self, Finished};
use crate::jobs::{now_ms, Cause, Effect, Launch, Scheduler, State, Store};
use crate::metrics::Registry;
use crate::sources::replay::UnrecoverableSink;
use crate::systemd::{notify, NotifyState};

/// Job ids reserved per block: small, so that job numbers stay readable.
pub const ID_BLOCK: u32 = 256;
/// How often `hark jobs` edits are read back.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the sources' health is written for `hark status`.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// First wait before retrying a transaction the store could not commit; it doubles up to
/// [`RETRY_MAX`] while the store keeps failing.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Uuids named in the log line of a burst that could not be stored.
const UUIDS_LOGGED: usize = 5;

/// Control inputs (events come over their own bounded channel).
pub enum Control {
    Finished(i64, Finished),
    /// SIGHUP: re-read every rule file.
    Reload,
    /// SIGTERM/SIGINT: start nothing new, let running jobs finish within the grace.
    Drain,
}

pub struct JobsThread {
    pub store: Store,
    pub sched: Scheduler,
    pub cache: RuleCache,
    pub report: Reporter,
    pub metrics: Registry,
    pub runtime: tokio::runtime::Handle,
    pub events: crate::queue::Receiver<Vec<Arc<Event>>>,
    pub control: Receiver<Control>,
    /// For runner tasks to report back on.
    pub control_tx: Sender<Control>,
    pub reload_interval: Duration,
    pub shutdown_grace: Duration,
    /// Gaps the replay source could not fill, to keep for `hark jobs gaps`.
    pub lost: UnrecoverableSink,
    /// Where running jobs' output grows (`jobs::live`), for `hark jobs log`.
    pub live_dir: std::path::PathBuf,
    /// What admission last heard from each source, written for `hark status`.
    pub health: crate::admit::health::Shared,
    /// Forks the jobs' supervisors, so the daemon does not (`None`: the daemon does).
    pub spawner: Option<Arc<crate::jobs::spawner::Spawner>>,
}

fn log_store_error(what: &str, e: rusqlite::Error, metrics: &Registry) {
    metrics.inc("hark_store_errors_total", &[]);
    error!("state store: {what}: {e} (is the disk full or the state file unwritable?)");
}

/// Interrupted jobs become pending again; every live job and every fallback clock is
/// loaded into the scheduler.
pub fn recover(store: &mut Store, sched: &mut Scheduler) -> rusqlite::Result<()> {
    load_clocks(store, sched)?;
    let interrupted = store.recover_interrupted()?;
    if interrupted > 0 {
        warn!(
            "{interrupted} job(s) were interrupted by the last shutdown or crash; they run again"
        );
    }
    for job in store.live_jobs(0)? {
        if job.state != State::Pending {
            continue;
        }
        adopt(store, sched, job)?;
    }
    Ok(())
}

fn load_clocks(store: &Store, sched: &mut Scheduler) -> rusqlite::Result<()> {
    let clocks = store.fallback_clocks()?;
    sched.set_clocks(clocks.into_iter().map(|c| (c.rule, c.last, c.every)));
    Ok(())
}

fn adopt(store: &mut Store, sched: &mut Scheduler, job: crate::jobs::Job) -> rusqlite::Result<()> {
    let id = job.id;
    match job.into_recovered() {
        Ok(r) => sched.adopt(r),
        Err(e) => store.finish(
            id,
            State::Failed,
            None,
            Some(&format!("stored event is unreadable: {e}")),
            None,
        )?,
    }
    Ok(())
}

/// The store could not commit: when to try again.
struct Failing {
    delay: Duration,
    at: Instant,
    since: Instant,
}

/// A transaction was rolled back; the scheduler already matches the store again.
struct RolledBack;

struct Loop {
    t: JobsThread,
    cancels: HashMap<i64, watch::Sender<bool>>,
    drain_deadline: Option<Instant>,
    cancelled_all: bool,
    matches: Vec<u32>,
    failing: Option<Failing>,
    /// The burst that could not be stored, filed again (the same events) on each retry.
    held: Option<Vec<Arc<Event>>>,
    /// Job ends (and retries) not yet in the store, written again before the burst.
    unrecorded: Vec<Effect>,
    /// The sources' health as admission last handed it over.
    sources: Vec<crate::admit::health::SourceHealth>,
}

impl JobsThread {
    /// Run until drained (or until every input is gone).
    pub fn run(self) {
        let mut l = Loop {
            t: self,
            cancels: HashMap::new(),
            drain_deadline: None,
            cancelled_all: false,
            matches: Vec::new(),
            failing: None,
            held: None,
            unrecorded: Vec::new(),
            sources: Vec::new(),
        };
        l.run();
    }
}

impl Loop {
    fn run(&mut self) {
        let mut next_sync = Instant::now() + SYNC_EVERY;
        let mut next_health = Instant::now();
        let reload_every = self.t.reload_interval.max(Duration::from_millis(100));
        let mut next_reload = Instant::now() + reload_every;
        self.settle();
        loop {
            let now = Instant::now();
            let mut wake = next_sync.min(next_reload);
            match &self.failing {
                Some(f) => wake = wake.min(f.at),
                None => {
                    if let Some(due) = self.t.sched.next_due(now_ms()) {
                        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
                        wake = wake.min(now + Duration::from_millis(wait));
                    }
                }
            }
            if let Some(d) = self.drain_deadline.filter(|_| !self.cancelled_all) {
                wake = wake.min(d);
            }
            let timeout = wake.saturating_duration_since(now);
            // While the store cannot commit, events wait in the channel: backpressure.
            let events = if self.t.sched.draining() || self.failing.is_some() {
                crossbeam_channel::never()
            } else {
                self.t.events.selectable().clone()
            };
            crossbeam_channel::select! {
                recv(events) -> batch => match batch {
                    Ok(batch) => {
                        let batch = self.t.events.received(batch);
                        self.file(batch)
                    }
                    Err(_) => {
                        // Admission is gone: nothing more can arrive; finish like a drain.
                        self.begin_drain();
                    }
                },
                recv(self.t.control) -> c => match c {
                    Ok(Control::Finished(id, finished)) => {
                        self.cancels.remove(&id);
                        let random = rand_core::OsRng.next_u32();
                        self.t.sched.on_finished(now_ms(), id, finished, random);
                        self.dispatch();
                        self.settle();
                    }
                    Ok(Control::Reload) => self.reload(true),
                    Ok(Control::Drain) => self.begin_drain(),
                    Err(_) => return,
                },
                default(timeout) => {}
            }
            if self
                .failing
                .as_ref()
                .is_some_and(|f| Instant::now() >= f.at)
            {
                self.retry_store();
            }
            if self.t.sched.draining() {
                if self.t.sched.running_count() == 0 {
                    self.warn_unstored();
                    return;
                }
                if let Some(d) = self.drain_deadline {
                    if !self.cancelled_all && Instant::now() >= d {
                        warn!("shutdown grace period over; stopping {} running job(s); they run again after restart", self.t.sched.running_count());
                        self.t.sched.cancel_all();
                        self.cancelled_all = true;
                        self.settle();
                    }
                }
                continue;
            }
            let now = Instant::now();
            if now >= next_sync {
                next_sync = now + SYNC_EVERY;
                self.sync_store();
            }
            if now >= next_health {
                next_health = now + HEALTH_EVERY;
                self.write_health();
            }
            if now >= next_reload {
                next_reload = now + reload_every;
                self.reload(false);
            }
            self.dispatch();
            self.settle();
        }
    }

    fn begin_drain(&mut self) {
        if self.t.sched.draining() {
            return;
        }
        notify(&[NotifyState::Stopping]);
        info!(
            "stopping: no new jobs start; {} running job(s) get {:?} to finish",
            self.t.sched.running_count(),
            self.t.shutdown_grace
        );
        self.t.sched.drain();
        self.drain_deadline = Some(Instant::now() + self.t.shutdown_grace);
    }

    /// Stopping while the store still fails: say what the next start takes care of.
    fn warn_unstored(&self) {
        if self.failing.is_none() {
            return;
        }
        let events = self.held.as_ref().map_or(0, Vec::len);
        let ends = self
            .unrecorded
            .iter()
            .filter(|e| matches!(e, Effect::Finish(_) | Effect::Retry { .. }))
            .count();
        warn!(
            "stopping while the state store cannot commit: {events} received event(s) were not stored \
             (the relay seq did not advance past them) and {ends} job end(s) were not recorded \
             (those jobs are still `running` in the store and run again after restart)"
        );
    }

    fn reload(&mut self, force: bool) {
        if force {
            let mut states = vec![NotifyState::Reloading];
            if let Ok(now) = NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            notify(&states);
            info!("SIGHUP: reloading rules");
        }
        if self.t.cache.reload(force) || force {
            self.t.sched.set_rules(self.t.cache.set());
        }
        let (loaded, errors) = (self.t.cache.set().len(), self.t.cache.take_errors());
        self.t.metrics.set("hark_rules_loaded", &[], loaded as f64);
        if errors > 0 {
            self.t
                .metrics
                .add("hark_rule_reload_errors_total", &[], errors as f64);
        }
        if force {
            notify(&[NotifyState::Ready]);
        }
        self.dispatch();
        self.settle();
    }

    /// Make sure the scheduler holds an id for `needed` new jobs. Commits on its own, so
    /// never inside a group commit.
    fn reserve_ids(&mut self, needed: u64) -> rusqlite::Result<()> {
        let have = self.t.sched.ids_available();
        if have >= needed {
            return Ok(());
        }
        let want = u32::try_from(needed - have)
            .unwrap_or(u32::MAX)
            .max(ID_BLOCK);
        let ids = self.t.store.reserve_job_ids(want)?;
        self.t.sched.add_ids(ids);
        Ok(())
    }

    /// Start what is due (fallbacks included), unless the store cannot commit: then
    /// nothing starts until it can.
    fn dispatch(&mut self) {
        if self.failing.is_some() {
            return;
        }
        let now = now_ms();
        let fallbacks = self.t.sched.fallbacks_due(now) as u64;
        if fallbacks > 0 {
            if let Err(e) = self.reserve_ids(fallbacks) {
                log_store_error("reserving job ids for fallback runs", e, &self.t.metrics);
            }
        }
        self.t.sched.dispatch(now);
    }

    /// File a burst of admitted events in one transaction; if the store cannot take it,
    /// hold it and stop taking events until it can.
    fn file(&mut self, mut batch: Vec<Arc<Event>>) {
        // Whatever else is already waiting joins this transaction: one fsync per burst.
        while batch.len() < super::INTAKE_BATCH {
            match self.t.events.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        if self.try_file(&batch).is_err() {
            self.held = Some(batch);
            self.enter_failing();
        }
    }

    fn try_file(&mut self, batch: &[Arc<Event>]) -> Result<(), RolledBack> {
        let set = self.t.sched.rules().clone();
        let now = now_ms();
        let mut matched: Vec<(&Arc<Event>, Vec<u32>)> = Vec::with_capacity(batch.len());
        let mut needed = self.t.sched.fallbacks_due(now) as u64;
        for event in batch {
            set.matching_into(event, &mut self.matches);
            needed += self.matches.len() as u64;
            matched.push((event, self.matches.clone()));
        }
        // Outside the burst's transaction: a rolled back reservation must not be used.
        if let Err(e) = self.reserve_ids(needed) {
            return Err(self.rolled_back(Vec::new(), "reserving job ids", e));
        }
        // A broker forgets what is acked, and acks follow this commit: it must survive a
        // power loss too. Relay events come back from the relay's journal instead.
        let acks = batch.iter().any(|e| e.ack.is_some());
        if acks {
            if let Err(e) = self.t.store.durable(true) {
                return Err(self.rolled_back(Vec::new(), "making the commit durable", e));
            }
        }
        let filed = self.file_in_txn(&set, matched, now);
        if acks {
            if let Err(e) = self.t.store.durable(false) {
                log_store_error("going back to synchronous=NORMAL", e, &self.t.metrics);
            }
        }
        filed?;
        // Stored: the broker may forget these deliveries. Until here they stay unacked, so
        // a burst held while the store fails is redelivered if the daemon stops meanwhile.
        for event in batch {
            if let Some(ack) = &event.ack {
                ack.settle(crate::event::Settle::Ack);
            }
        }
        Ok(())
    }

    /// The transaction of [`Loop::try_file`]: the burst's jobs, relay seqs and starts.
    fn file_in_txn(
        &mut self,
        set: &Arc<crate::rules::RuleSet>,
        matched: Vec<(&Arc<Event>, Vec<u32>)>,
        now: i64,
    ) -> Result<(), RolledBack> {
        if let Err(e) = self.t.store.begin() {
            return Err(self.rolled_back(Vec::new(), "starting a batch", e));
        }
        let mut in_burst: HashSet<(u32, &str)> = HashSet::new();
        for (event, rules) in matched {
            if let Some(stamp) = &event.relay {
                // Same transaction as the jobs: the seq only advances once they are stored.
                if let Err(e) = self
                    .t
                    .store
                    .save_relay_seq(&stamp.relay, &stamp.epoch, stamp.seq)
                {
                    return Err(self.abort("saving the relay sequence", e));
                }
            }
            for id in rules {
                let Some(rule) = set.rules().get(id as usize) else {
                    continue;
                };
                self.t
                    .metrics
                    .inc("hark_rule_matches_total", &[("rule", &rule.name)]);
                // A broker's redelivery (its ack was lost): filed once, whatever the state.
                let amqp = event.ack.is_some();
                if amqp && !in_burst.insert((id, event.uuid.as_str())) {
                    continue;
                }
                let seen = if amqp {
                    self.t.store.filed(&rule.name, &event.uuid)
                } else {
                    self.t.store.succeeded(&rule.name, &event.uuid)
                };
                match seen {
                    Ok(true) if amqp => {
                        info!(rule = %rule.name, uuid = %event.uuid, "redelivered message is already filed for this rule; not again");
                        continue;
                    }
                    Ok(true) => {
                        info!(rule = %rule.name, uuid = %event.uuid, "already ran successfully for this event; not again");
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let what = format!("filing event {} for rule {}", event.uuid, rule.name);
                        return Err(self.abort(&what, e));
                    }
                }
                if let Err(e) = self.t.sched.on_match(now, rule, event) {
                    // Ids were reserved for every match above, so this is a bug; hold the
                    // burst rather than drop the event.
                    error!(rule = %rule.name, uuid = %event.uuid, "cannot file the event: {e}");
                    self.t.store.rollback();
                    let effects = self.t.sched.take_effects();
                    return Err(self.rolled_back_quietly(effects));
                }
            }
        }
        self.t.sched.dispatch(now);
        self.commit(Vec::new(), true)
    }

    /// Roll back the open transaction and what the scheduler queued for it.
    fn abort(&mut self, what: &str, e: rusqlite::Error) -> RolledBack {
        self.t.store.rollback();
        let effects = self.t.sched.take_effects();
        self.rolled_back(effects, what, e)
    }

    /// Apply the scheduler's effects in one transaction, commit, report them, then start
    /// the commands; while the store is failing, keep them for the next retry instead.
    fn settle(&mut self) {
        if self.failing.is_some() {
            self.stash();
            return;
        }
        if self.commit(Vec::new(), false).is_err() {
            self.enter_failing();
        }
    }

    /// While the store is failing (nothing is dispatched then): cancels go out at once, as
    /// they write nothing; job ends wait for the store.
    fn stash(&mut self) {
        let now = now_ms();
        for effect in self.t.sched.take_effects() {
            match effect {
                Effect::Cancel(id) => {
                    if let Some(tx) = self.cancels.get(&id) {
                        let _ = tx.send(true);
                    }
                }
                Effect::LeftRunning { .. } => self.t.report.effect(now, &effect),
                other => self.unrecorded.push(other),
            }
        }
        self.t.report.gauges(&self.t.sched);
    }

    /// `first` and then the scheduler's effects in one transaction (already begun when
    /// `in_txn`); on any failure everything is rolled back and undone in the scheduler.
    fn commit(&mut self, first: Vec<Effect>, mut in_txn: bool) -> Result<(), RolledBack> {
        let mut effects = first;
        loop {
            effects.extend(self.t.sched.take_effects());
            if effects.is_empty() && !in_txn {
                self.t.report.gauges(&self.t.sched);
                return Ok(());
            }
            if !in_txn {
                if let Err(e) = self.t.store.begin() {
                    return Err(self.rolled_back(effects, "starting a transaction", e));
                }
            }
            in_txn = false;
            let mut applied = Vec::with_capacity(effects.len());
            let mut refused_starts = false;
            let mut rest = std::mem::take(&mut effects).into_iter();
            while let Some(effect) = rest.next() {
                match self.t.store.apply(&effect) {
                    Ok(true) => applied.push(effect),
                    Ok(false) => {
                        // `hark jobs cancel` got there first.
                        if let Effect::Start(l) = &effect {
                            self.t.sched.not_started(l.id);
                            refused_starts = true;
                        }
                    }
                    Err(e) => {
                        // SQLite may have ended the transaction itself; writing on would
                        // commit the rest one statement at a time.
                        let what = describe(&effect);
                        self.t.store.rollback();
                        applied.push(effect);
                        applied.extend(rest);
                        return Err(self.rolled_back(applied, &what, e));
                    }
                }
            }
            if let Err(e) = self.t.store.commit() {
                return Err(self.rolled_back(applied, "committing", e));
            }
            let now = now_ms();
            for effect in applied {
                self.t.report.effect(now, &effect);
                match effect {
                    Effect::Start(l) => self.launch(l),
                    Effect::Cancel(id) => {
                        if let Some(tx) = self.cancels.get(&id) {
                            let _ = tx.send(true);
                        }
                    }
                    _ => {}
                }
            }
            if !refused_starts {
                self.t.report.gauges(&self.t.sched);
                return Ok(());
            }
            // A slot freed by a start that did not happen may start another job.
            self.t.sched.dispatch(now_ms());
        }
    }

    fn rolled_back(&mut self, effects: Vec<Effect>, what: &str, e: rusqlite::Error) -> RolledBack {
        log_store_error(what, e, &self.t.metrics);
        self.rolled_back_quietly(effects)
    }

    /// Undo in the scheduler what a rolled back transaction held, so that memory matches
    /// the store again: no phantom pending jobs, no start that did not happen.
    fn rolled_back_quietly(&mut self, effects: Vec<Effect>) -> RolledBack {
        self.t.metrics.inc("hark_store_commit_failures_total", &[]);
        let now = now_ms();
        for effect in effects {
            match effect {
                // Its row is still pending: loaded again below.
                Effect::Start(l) => self.t.sched.not_started(l.id),
                // Memory holds events the row does not: forget it, load the row below.
                Effect::Append { id, .. } => self.t.sched.forget(id),
                // A supersede that did not happen; a `hark jobs cancel` is read again.
                Effect::Cancel(id) => self.t.sched.not_superseded(id),
                // A run really ended: its end is written again until the store takes it.
                Effect::Ended { .. } | Effect::Retry { .. } => self.unrecorded.push(effect),
                Effect::Finish(ref f) if matches!(f.cause, Cause::Ran { .. }) => {
                    self.unrecorded.push(effect)
                }
                Effect::LeftRunning { .. } => self.t.report.effect(now, &effect),
                // New jobs and records come again when the burst is filed again; pending
                // jobs this transaction ended are loaded again below; clocks too.
                Effect::Insert { .. } | Effect::Clock { .. } | Effect::Finish(_) => {}
            }
        }
        self.sync_store();
        if let Err(e) = load_clocks(&self.t.store, &mut self.t.sched) {
            log_store_error("reading fallback clocks", e, &self.t.metrics);
        }
        self.t.report.gauges(&self.t.sched);
        RolledBack
    }

    /// The store could not commit: stop taking events and retry after a backoff.
    fn enter_failing(&mut self) {
        let now = Instant::now();
        let (delay, since) = match &self.failing {
            None => (RETRY_FIRST, now),
            Some(f) => ((f.delay * 2).min(RETRY_MAX), f.since),
        };
        self.failing = Some(Failing {
            delay,
            at: now + delay,
            since,
        });
        let held = self.held.as_deref().unwrap_or_default();
        let first: Vec<&str> = held
            .iter()
            .take(UUIDS_LOGGED)
            .map(|e| e.uuid.as_str())
            .collect();
        let ends = self
            .unrecorded
            .iter()
            .filter(|e| matches!(e, Effect::Finish(_) | Effect::Retry { .. }))
            .count();
        error!(
            events = held.len(),
            uuids = %first.join(","),
            unrecorded_ends = ends,
            "state store cannot commit: {} received event(s) held{}, {ends} job end(s) to record; \
             not taking new events (backpressure) and retrying in {delay:?} (failing for {:?})",
            held.len(),
            if held.len() > first.len() { " (first uuids listed)" } else { "" },
            since.elapsed(),
        );
    }

    /// Write what is held: job ends first (they free slots), then the same burst again.
    fn retry_store(&mut self) {
        let unrecorded = std::mem::take(&mut self.unrecorded);
        if !unrecorded.is_empty() {
            if self.commit(unrecorded, false).is_err() {
                self.enter_failing();
                return;
            }
            // Retries now pending in the store are adopted.
            self.sync_store();
        }
        if let Some(batch) = self.held.take() {
            if self.try_file(&batch).is_err() {
                self.held = Some(batch);
                self.enter_failing();
                return;
            }
        }
        if let Some(f) = self.failing.take() {
            info!(
                "state store commits again after {:?}; taking events again",
                f.since.elapsed()
            );
        }
        self.dispatch();
        self.settle();
    }

    fn launch(&mut self, l: Launch) {
        let (tx, rx) = watch::channel(false);
        self.cancels.insert(l.id, tx);
        let done = self.t.control_tx.clone();
        let id = l.id;
        let mut spec = l.spec;
        spec.live_log = Some(crate::jobs::live::path(&self.t.live_dir, id));
        let spawner = self.t.spawner.clone();
        self.t.runtime.spawn(async move {
            let finished = runner::run_with(spec, rx, spawner).await;
            let _ = done.send(Control::Finished(id, finished));
        });
    }

    /// Write what admission last heard from each source. Written even when nothing
    /// changed: its stamp is how `hark status` tells a quiet bus from a stopped daemon.
    fn write_health(&mut self) {
        if let Some(sources) = self.t.health.lock().ok().and_then(|mut s| s.take()) {
            self.sources = sources;
        }
        if let Err(e) = self.t.store.put_sources(&self.sources) {
            // Only `hark status` reads it: logged, nothing held back for it.
            warn!("state store: cannot write the sources' health: {e}");
        }
    }

    /// Pick up what `hark jobs` changed: cancel requests, cancelled pending jobs, retries.
    fn sync_store(&mut self) {
        let store = &mut self.t.store;
        let result = (|| -> rusqlite::Result<()> {
            let cancels = store.cancel_requests()?;
            self.t.sched.cancel_requested(&cancels);
            let pending: HashSet<i64> = store
                .live_ids()?
                .into_iter()
                .filter(|(_, state)| *state == State::Pending)
                .map(|(id, _)| id)
                .collect();
            let lost: Vec<_> = self
                .t
                .lost
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            for range in &lost {
                store.record_lost(range)?;
            }
            for id in self.t.sched.reconcile(&pending) {
                if let Some(job) = store.get(id)? {
                    if job.state == State::Pending {
                        adopt(store, &mut self.t.sched, job)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            log_store_error("reading hark jobs requests", e, &self.t.metrics);
        }
    }
}

fn describe(effect: &Effect) -> String {
    match effect {
        Effect::Insert { id, rule, .. } => format!("filing job {id} for rule {rule}"),
        Effect::Append { id, event, .. } => format!("adding event {} to job {id}", event.uuid),
        Effect::Start(l) => format!("starting job {}", l.id),
        Effect::Retry { id, .. } => format!("scheduling a retry of job {id}"),
        Effect::Finish(f) => format!("recording the end of job {}", f.id),
        Effect::Clock { rule, .. } => format!("saving the fallback clock of rule {rule}"),
        Effect::Cancel(id) | Effect::Ended { id, .. } | Effect::LeftRunning { id, .. } => {
            format!("job {id}")
        }
    }
}
