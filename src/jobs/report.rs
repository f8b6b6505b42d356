//! Scheduler effects as the outside world sees them: Prometheus metrics, log lines, and
//! `_hark.job.*` notices for the results publisher. Called after the effects are committed,
//! so nothing is reported that the store does not hold.

use tracing::{info, warn};

use super::launch::Reason;
use super::scheduler::{Cause, Effect, Finish, Scheduler};
use super::store::State;
use crate::metrics::Registry;

/// Buckets for the job duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0];

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

/// Where notices go (the results publisher's queue).
pub type NoticeSink = Box<dyn FnMut(Notice) + Send>;

pub struct Reporter {
    metrics: Registry,
    notices: Option<NoticeSink>,
}

impl Reporter {
    pub fn new(metrics: Registry, notices: Option<NoticeSink>) -> Self {
        Reporter { metrics, notices }
    }

    fn notice(&mut self, notice: impl FnOnce() -> Notice) {
        if let Some(sink) = self.notices.as_mut() {
            sink(notice());
        }
    }

    /// Gauges that follow the scheduler's state.
    pub fn gauges(&self, sched: &Scheduler) {
        self.metrics
            .set("hark_queue_depth", &[], sched.pending_count() as f64);
        self.metrics
            .set("hark_jobs_running", &[], sched.running_count() as f64);
    }

    /// Report one committed effect; `now_ms` stamps `hark_last_success_timestamp_seconds`.
    pub fn effect(&mut self, now_ms: i64, effect: &Effect) {
        match effect {
            Effect::Insert { .. } | Effect::Cancel(_) | Effect::Clock { .. } => {}
            Effect::Append { rule, .. } => {
                self.metrics
                    .inc("hark_coalesced_events_total", &[("rule", rule)]);
            }
            Effect::Start(l) => {
                info!(job = l.id, rule = %l.rule.name, key = %l.key, events = l.events.len(), attempt = l.attempt, reason = l.reason.as_str(), argv = ?l.spec.argv, "starting");
                if l.reason == Reason::Fallback {
                    self.metrics
                        .inc("hark_fallback_runs_total", &[("rule", &l.rule.name)]);
                }
                self.notice(|| Notice {
                    kind: "started",
                    job: l.id,
                    rule: l.rule.name.clone(),
                    key: l.key.clone(),
                    attempt: l.attempt,
                    state: "running".into(),
                    exit_code: None,
                    duration_seconds: None,
                    events: l.events.iter().map(|e| e.uuid.clone()).collect(),
                });
            }
            Effect::Ended { rule, duration, .. } => {
                self.metrics.observe(
                    "hark_job_duration_seconds",
                    &[("rule", rule)],
                    duration.as_secs_f64(),
                    DURATION_BUCKETS,
                );
            }
            Effect::Retry {
                id,
                rule,
                attempt,
                state,
                exit_code,
                delay,
                ..
            } => {
                warn!(job = id, rule = %rule, attempt, exit = %exit_text(*exit_code), "{}; retrying in {}", state.as_str(), crate::duration::format(*delay));
                self.metrics
                    .inc("hark_job_retries_total", &[("rule", rule)]);
            }
            Effect::LeftRunning { id, rule } => {
                warn!(job = id, rule = %rule, "stopped by shutdown; it will run again after restart");
            }
            Effect::Finish(f) => self.finish(now_ms, f),
        }
    }

    fn finish(&mut self, now_ms: i64, f: &Finish) {
        let error = f.error.as_deref().unwrap_or_default();
        let counted = match &f.cause {
            Cause::Ran { duration, .. } => {
                match f.state {
                    State::Succeeded => {
                        info!(job = f.id, rule = %f.rule, "succeeded in {:.3}s", duration.as_secs_f64())
                    }
                    _ => {
                        warn!(job = f.id, rule = %f.rule, exit = %exit_text(f.exit_code), "{}{}", f.state.as_str(), f.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())
                    }
                }
                Some(f.state.as_str())
            }
            Cause::Refused => {
                warn!(job = f.id, rule = %f.rule, "refused to run: {error}");
                Some("refused")
            }
            Cause::Skipped => {
                info!(rule = %f.rule, job = f.id, "skipped: the rule is at its concurrency limit (on_busy: skip)");
                Some(f.state.as_str())
            }
            Cause::Unfiled | Cause::Superseded => Some(f.state.as_str()),
            Cause::RuleGone => {
                warn!(job = f.id, rule = %f.rule, "rule no longer exists; job cancelled");
                None
            }
        };
        if let Some(outcome) = counted {
            self.metrics.inc(
                "hark_jobs_total",
                &[("rule", &f.rule), ("outcome", outcome)],
            );
        }
        let Cause::Ran {
            attempt,
            duration,
            events,
        } = &f.cause
        else {
            return;
        };
        let stamp = if f.state == State::Succeeded {
            "hark_last_success_timestamp_seconds"
        } else {
            "hark_last_failure_timestamp_seconds"
        };
        self.metrics
            .set(stamp, &[("rule", &f.rule)], now_ms as f64 / 1000.0);
        self.notice(|| Notice {
            kind: if f.state == State::Succeeded {
                "succeeded"
            } else {
                "failed"
            },
            job: f.id,
            rule: f.rule.clone(),
            key: f.key.clone(),
            attempt: *attempt,
            state: f.state.as_str().into(),
            exit_code: f.exit_code,
            duration_seconds: Some(duration.as_secs_f64()),
            events: events.iter().map(|e| e.uuid.clone()).collect(),
        });
    }
}

/// An exit status as a log field: `exit=3`, or `exit=none` for a command killed by a
/// signal or never started.
fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "none".into(), |c| c.to_string())
}
