//! The jobs thread: owns the store, the scheduler and the rule cache, so every SQLite
//! write, rule directory walk and scheduling decision happens here, never on the tokio
//! event loop. Inputs arrive over channels (admitted events, finished runs, reload,
//! drain); each input becomes scheduler effects that are applied in one transaction and
//! committed, and only then are commands handed to the tokio runtime.

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
use crate::jobs::{now_ms, Effect, Launch, Scheduler, State, Store};
use crate::metrics::Registry;
use crate::systemd::{notify, NotifyState};

/// Job ids reserved per block: small, so that job numbers stay readable.
pub const ID_BLOCK: u32 = 256;
/// How often `hark jobs` edits are read back.
const SYNC_EVERY: Duration = Duration::from_secs(1);

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
    pub events: Receiver<Vec<Arc<Event>>>,
    pub control: Receiver<Control>,
    /// For runner tasks to report back on.
    pub control_tx: Sender<Control>,
    pub reload_interval: Duration,
    pub shutdown_grace: Duration,
}

fn log_store_error(what: &str, e: rusqlite::Error, metrics: &Registry) {
    metrics.inc("hark_store_errors_total", &[]);
    error!("state store: {what}: {e} (is the disk full or the state file unwritable?)");
}

/// Interrupted jobs become pending again; every live job is loaded into the scheduler.
pub fn recover(store: &mut Store, sched: &mut Scheduler) -> rusqlite::Result<()> {
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

struct Loop {
    t: JobsThread,
    cancels: HashMap<i64, watch::Sender<bool>>,
    drain_deadline: Option<Instant>,
    cancelled_all: bool,
    matches: Vec<u32>,
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
        };
        l.run();
    }
}

impl Loop {
    fn run(&mut self) {
        let mut next_sync = Instant::now() + SYNC_EVERY;
        let reload_every = self.t.reload_interval.max(Duration::from_millis(100));
        let mut next_reload = Instant::now() + reload_every;
        self.settle(false);
        loop {
            let now = Instant::now();
            let mut wake = next_sync.min(next_reload);
            if let Some(due) = self.t.sched.next_due(now_ms()) {
                let wait = u64::try_from(due - now_ms()).unwrap_or(0);
                wake = wake.min(now + Duration::from_millis(wait));
            }
            if let Some(d) = self.drain_deadline.filter(|_| !self.cancelled_all) {
                wake = wake.min(d);
            }
            let timeout = wake.saturating_duration_since(now);
            let draining = self.t.sched.draining();
            let events = if draining {
                crossbeam_channel::never()
            } else {
                self.t.events.clone()
            };
            crossbeam_channel::select! {
                recv(events) -> batch => match batch {
                    Ok(batch) => self.file(batch),
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
                        self.t.sched.dispatch(now_ms());
                        self.settle(false);
                    }
                    Ok(Control::Reload) => self.reload(true),
                    Ok(Control::Drain) => self.begin_drain(),
                    Err(_) => return,
                },
                default(timeout) => {}
            }
            if self.t.sched.draining() {
                if self.t.sched.running_count() == 0 {
                    return;
                }
                if let Some(d) = self.drain_deadline {
                    if !self.cancelled_all && Instant::now() >= d {
                        warn!("shutdown grace period over; stopping {} running job(s); they run again after restart", self.t.sched.running_count());
                        self.t.sched.cancel_all();
                        self.cancelled_all = true;
                        self.settle(false);
                    }
                }
                continue;
            }
            let now = Instant::now();
            if now >= next_sync {
                next_sync = now + SYNC_EVERY;
                self.sync_store();
            }
            if now >= next_reload {
                next_reload = now + reload_every;
                self.reload(false);
            }
            self.t.sched.dispatch(now_ms());
            self.settle(false);
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
        if force {
            notify(&[NotifyState::Ready]);
        }
        self.t.sched.dispatch(now_ms());
        self.settle(false);
    }

    /// Make sure the scheduler holds an id for every match in this burst.
    fn reserve_ids(&mut self, needed: u64) {
        let have = self.t.sched.ids_available();
        if have >= needed {
            return;
        }
        let want = u32::try_from(needed - have)
            .unwrap_or(u32::MAX)
            .max(ID_BLOCK);
        match self.t.store.reserve_job_ids(want) {
            Ok(ids) => self.t.sched.add_ids(ids),
            Err(e) => log_store_error("reserving job ids", e, &self.t.metrics),
        }
    }

    /// File a burst of admitted events in one transaction.
    fn file(&mut self, mut batch: Vec<Arc<Event>>) {
        // Whatever else is already waiting joins this transaction: one fsync per burst.
        while batch.len() < super::INTAKE_BATCH {
            match self.t.events.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let set = self.t.sched.rules().clone();
        let mut matched: Vec<(Arc<Event>, Vec<u32>)> = Vec::with_capacity(batch.len());
        let mut needed = 0u64;
        for event in batch {
            set.matching_into(&event, &mut self.matches);
            needed += self.matches.len() as u64;
            matched.push((event, self.matches.clone()));
        }
        // Outside the burst's transaction: a rolled back reservation must not be used.
        self.reserve_ids(needed);
        let in_txn = match self.t.store.begin() {
            Ok(()) => true,
            Err(e) => {
                log_store_error("starting a batch", e, &self.t.metrics);
                false
            }
        };
        let now = now_ms();
        for (event, rules) in matched {
            if let Some(stamp) = &event.relay {
                if let Err(e) = self
                    .t
                    .store
                    .save_relay_seq(&stamp.relay, &stamp.epoch, stamp.seq)
                {
                    log_store_error("saving the relay sequence", e, &self.t.metrics);
                }
            }
            for id in rules {
                let Some(rule) = set.rules().get(id as usize) else {
                    continue;
                };
                self.t
                    .metrics
                    .inc("hark_rule_matches_total", &[("rule", &rule.name)]);
                match self.t.store.succeeded(&rule.name, &event.uuid) {
                    Ok(true) => {
                        info!(rule = %rule.name, uuid = %event.uuid, "already ran successfully for this event; not again");
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        log_store_error(
                            &format!("filing event {} for rule {}", event.uuid, rule.name),
                            e,
                            &self.t.metrics,
                        );
                        continue;
                    }
                }
                if let Err(e) = self.t.sched.on_match(now, rule, &event) {
                    error!(rule = %rule.name, uuid = %event.uuid, "cannot file the event: {e}");
                }
            }
        }
        self.t.sched.dispatch(now);
        self.settle(in_txn);
    }

    /// Apply the scheduler's effects in one transaction (begun by the caller when
    /// `in_txn`), commit, report them, then start the commands.
    fn settle(&mut self, mut in_txn: bool) {
        loop {
            let effects = self.t.sched.take_effects();
            if effects.is_empty() && !in_txn {
                self.t.report.gauges(&self.t.sched);
                return;
            }
            if !in_txn {
                match self.t.store.begin() {
                    Ok(()) => in_txn = true,
                    Err(e) => log_store_error("starting a transaction", e, &self.t.metrics),
                }
            }
            let mut applied = Vec::with_capacity(effects.len());
            let mut refused_starts = false;
            for effect in effects {
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
                        log_store_error(&describe(&effect), e, &self.t.metrics);
                        if let Effect::Start(l) = &effect {
                            self.t.sched.not_started(l.id);
                        } else {
                            applied.push(effect);
                        }
                    }
                }
            }
            if in_txn {
                in_txn = false;
                if let Err(e) = self.t.store.commit() {
                    log_store_error(
                        "committing (received events are lost; replay them from a recording)",
                        e,
                        &self.t.metrics,
                    );
                    for effect in &applied {
                        if let Effect::Start(l) = effect {
                            self.t.sched.not_started(l.id);
                        }
                    }
                    self.sync_store();
                    self.t.report.gauges(&self.t.sched);
                    return;
                }
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
                return;
            }
            // A slot freed by a start that did not happen may start another job.
            self.t.sched.dispatch(now_ms());
        }
    }

    fn launch(&mut self, l: Launch) {
        let (tx, rx) = watch::channel(false);
        self.cancels.insert(l.id, tx);
        let done = self.t.control_tx.clone();
        let id = l.id;
        self.t.runtime.spawn(async move {
            let finished = runner::run(l.spec, rx).await;
            let _ = done.send(Control::Finished(id, finished));
        });
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
        Effect::Cancel(id) | Effect::Ended { id, .. } | Effect::LeftRunning { id, .. } => {
            format!("job {id}")
        }
    }
}
