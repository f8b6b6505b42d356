//! Jobs: what happens to a rule match until its command has ended.
//!
//! - [`scheduler`]: the pure state machine (coalescing, limits, pools, `on_busy`,
//!   retries, drain) that answers every input with [`scheduler::Effect`]s;
//! - [`launch`]: argv, environment, stdin and working directory of one start;
//! - [`runner`]: running one command (timeout, output);
//! - [`live`]: a running job's output as it grows, for `hark jobs log --follow`;
//! - [`contain`]: the per-job supervisor that keeps every process of a job contained;
//! - [`cgroup`]: a cgroup of its own per job, when systemd delegates the daemon's cgroup;
//! - [`spawner`]: the small process that starts those supervisors, so the daemon never forks;
//! - `sys`: the raw system calls supervisors make (they may share the spawner's memory);
//! - [`unit`]: a job of a rule with `run.unit` as a transient systemd unit;
//! - [`store`]: the SQLite state, which applies effects and reserves job ids;
//! - [`report`]: effects as metrics, log lines and `_hark.job.*` notices.

pub mod cgroup;
mod contain;
pub mod launch;
pub mod live;
pub mod report;
pub mod runner;
pub mod scheduler;
pub mod spawner;
pub mod store;
mod sys;
pub mod unit;

pub use launch::{Launch, Reason, Spec, Stdin};
pub use scheduler::{Cause, Effect, Finish, Recovered, Scheduler, SchedulerOptions};
pub use store::FallbackClock;
pub use store::{now_ms, Job, State, Store, StoredEvent};
