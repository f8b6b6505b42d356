//! What one start of a job runs: argv, environment, stdin and working directory, rendered
//! from the rule and the job's events. The scheduler builds a [`Launch`] (pure: templates
//! over events already in memory); the runner executes its [`Spec`]. A fallback run (the
//! rule's safety-net schedule) renders against its stand-in event and reads no real event.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::rules::rule::{RenderError, Rule, StdinMode};

/// What a command reads on stdin. Events are shared with the scheduler and the store, so
/// the bytes received are written as they are, never copied or re-serialized first.
#[derive(Debug, Clone)]
pub enum Stdin {
    /// `/dev/null`.
    Null,
    /// One event's JSON exactly as received.
    Event(Arc<Event>),
    /// A JSON array of every event's JSON as received, oldest first.
    Batch(Vec<Arc<Event>>),
    /// Literal bytes.
    Bytes(Vec<u8>),
}

impl Stdin {
    pub fn is_null(&self) -> bool {
        matches!(self, Stdin::Null)
    }

    /// The bytes to write; borrowed for a single event.
    pub fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Stdin::Null => std::borrow::Cow::Borrowed(&[]),
            Stdin::Event(e) => e.stdin_bytes(),
            Stdin::Bytes(b) => std::borrow::Cow::Borrowed(b),
            Stdin::Batch(events) => {
                let mut batch = b"[".to_vec();
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        batch.push(b',');
                    }
                    batch.extend_from_slice(&e.stdin_bytes());
                }
                batch.push(b']');
                std::borrow::Cow::Owned(batch)
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    pub stdin: Stdin,
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Bytes of output logged per job; the rest is counted, not logged.
    pub log_limit: usize,
    /// Bytes of output tail kept with the job.
    pub tail_limit: usize,
    /// For log lines.
    pub rule: String,
    pub job: i64,
    /// Run as a transient systemd unit (`run.unit`) rather than as the daemon's child.
    pub unit: Option<crate::rules::unit::UnitSpec>,
    /// Where the output logged goes as it comes (`live.rs`), for `hark jobs log`.
    pub live_log: Option<PathBuf>,
    /// For a `run.unit` job: what the unit starter renders the job from again.
    pub origin: Option<Box<Origin>>,
}

/// The job as the scheduler filed it, for a `run.unit` job that the daemon cannot start
/// itself: the root-owned unit starter (`unit/starter.rs`) renders it again from root's
/// rule files rather than taking the daemon's argv.
#[derive(Debug, Clone)]
pub struct Origin {
    pub attempt: u32,
    pub reason: Reason,
    pub events: Vec<Arc<Event>>,
}

/// Output caps from hark.yaml, the same for every job.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    pub log_limit: usize,
    pub tail_limit: usize,
}

/// Why a job exists: `HARK_REASON` for its command, and how its stdin is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// One or more real events matched the rule.
    #[default]
    Event,
    /// The rule's `fallback` interval passed without a start; the job carries only the
    /// stand-in event of [`Rule::fallback_event`].
    Fallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Event => "event",
            Reason::Fallback => "fallback",
        }
    }

    /// Unknown text reads as `event`: what every job was before fallbacks existed.
    pub fn parse(s: &str) -> Reason {
        match s {
            "fallback" => Reason::Fallback,
            _ => Reason::Event,
        }
    }
}

/// A job the daemon should start now, as the scheduler decided it.
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: i64,
    pub rule: Arc<Rule>,
    /// The concurrency key the job counts against.
    pub key: String,
    pub attempt: u32,
    pub reason: Reason,
    pub events: Vec<Arc<Event>>,
    pub spec: Spec,
}

/// Render `rule` for a start of job `id`: the command sees the latest event (or all of
/// them with `stdin: batch`) and `HARK_*` describing the job. A fallback job has no real
/// event: `stdin: event` gets `/dev/null`, `stdin: batch` gets `[]`.
pub fn prepare(
    rule: &Rule,
    id: i64,
    attempt: u32,
    reason: Reason,
    events: &[Arc<Event>],
    limits: OutputLimits,
) -> Result<Spec, RenderError> {
    let Some(last) = events.last() else {
        return Err(RenderError {
            rule: rule.name.clone(),
            field: "events".into(),
            reason: "internal error: a job without events".into(),
        });
    };
    let rendered = rule.render(last)?;
    let stdin = match (reason, rendered.stdin) {
        (_, StdinMode::None) | (Reason::Fallback, StdinMode::Event) => Stdin::Null,
        (Reason::Fallback, StdinMode::Batch) => Stdin::Bytes(b"[]".to_vec()),
        (Reason::Event, StdinMode::Event) => Stdin::Event(last.clone()),
        (Reason::Event, StdinMode::Batch) => Stdin::Batch(events.to_vec()),
    };
    let count = match reason {
        Reason::Event => events.len(),
        Reason::Fallback => 0,
    };
    let mut env: Vec<(String, String)> = rendered.env.into_iter().collect();
    env.extend([
        ("HARK_TOPIC".to_string(), last.topic.clone()),
        ("HARK_UUID".to_string(), last.uuid.clone()),
        ("HARK_RULE".to_string(), rule.name.clone()),
        ("HARK_JOB".to_string(), id.to_string()),
        ("HARK_ATTEMPT".to_string(), attempt.to_string()),
        ("HARK_EVENT_COUNT".to_string(), count.to_string()),
        ("HARK_REASON".to_string(), reason.as_str().to_string()),
    ]);
    // An AMQP message: its headers (JSON) and the broker it came from.
    if let Some(source) = &last.source {
        env.push(("HARK_BROKER".to_string(), source.clone()));
        env.push(("HARK_HEADERS".to_string(), last.headers.to_string()));
    }
    Ok(Spec {
        argv: rendered.argv,
        env,
        workdir: rendered.workdir,
        stdin,
        timeout: Some(rule.run.timeout),
        grace: rule.run.grace,
        log_limit: limits.log_limit,
        tail_limit: limits.tail_limit,
        rule: rule.name.clone(),
        job: id,
        unit: rule.run.unit.clone(),
        live_log: None,
        origin: rule.run.unit.as_ref().map(|_| {
            Box::new(Origin {
                attempt,
                reason,
                events: events.to_vec(),
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile::parse_str;
    use crate::rules::events::from_loose;
    use serde_json::json;

    fn rule(run: &str) -> Arc<Rule> {
        let yaml = format!(
            "rules:\n  - name: r\n    match: {{topic: t}}\n    run: {run}\n    coalesce: {{quiet: 1s}}\n"
        );
        let file =
            parse_str(std::path::Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}"));
        file.rules[0].clone()
    }

    fn event(uuid: &str) -> Arc<Event> {
        Arc::new(from_loose(json!({"tag": "t", "uuid": uuid, "data": {"n": 1}})).unwrap())
    }

    const LIMITS: OutputLimits = OutputLimits {
        log_limit: 1,
        tail_limit: 1,
    };

    #[test]
    fn the_latest_event_renders_the_command_and_batch_stdin_carries_all_bytes_as_received() {
        let r = rule("{command: [/bin/echo, '${uuid}'], stdin: batch}");
        let events = [event("a"), event("b")];
        let spec = prepare(&r, 7, 2, Reason::Event, &events, LIMITS).unwrap();
        assert_eq!(spec.argv, ["/bin/echo", "b"]);
        let mut expected = b"[".to_vec();
        expected.extend_from_slice(&events[0].json_bytes());
        expected.push(b',');
        expected.extend_from_slice(&events[1].json_bytes());
        expected.push(b']');
        assert_eq!(spec.stdin.bytes().as_ref(), expected.as_slice());
        let env: std::collections::BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["HARK_JOB"], "7");
        assert_eq!(env["HARK_ATTEMPT"], "2");
        assert_eq!(env["HARK_EVENT_COUNT"], "2");
        assert_eq!(env["HARK_UUID"], "b");
        assert_eq!(env["HARK_REASON"], "event");
    }

    #[test]
    fn a_fallback_run_reads_no_event_an_empty_batch_and_says_why_it_runs() {
        let r = rule("{command: [/bin/echo, '${uuid}'], stdin: batch}");
        let stand_in = Arc::new(r.fallback_event("fallback-3"));
        let spec = prepare(
            &r,
            3,
            1,
            Reason::Fallback,
            std::slice::from_ref(&stand_in),
            LIMITS,
        )
        .unwrap();
        assert_eq!(spec.argv, ["/bin/echo", "fallback-3"]);
        assert_eq!(spec.stdin.bytes().as_ref(), b"[]");
        let env: std::collections::BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["HARK_REASON"], "fallback");
        assert_eq!(env["HARK_EVENT_COUNT"], "0");
        let spec = prepare(
            &rule("{command: [/bin/cat]}"),
            3,
            1,
            Reason::Fallback,
            &[stand_in],
            LIMITS,
        )
        .unwrap();
        assert!(spec.stdin.is_null(), "stdin: event has no event to read");
    }

    #[test]
    fn event_stdin_is_the_shared_event_and_none_is_dev_null() {
        let ev = event("a");
        let spec = prepare(
            &rule("{command: [/bin/cat]}"),
            1,
            1,
            Reason::Event,
            std::slice::from_ref(&ev),
            LIMITS,
        )
        .unwrap();
        assert!(matches!(&spec.stdin, Stdin::Event(e) if Arc::ptr_eq(e, &ev)));
        let spec = prepare(
            &rule("{command: [/bin/true], stdin: none}"),
            1,
            1,
            Reason::Event,
            &[ev],
            LIMITS,
        )
        .unwrap();
        assert!(spec.stdin.is_null());
    }
}
