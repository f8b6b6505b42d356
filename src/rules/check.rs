//! What `hark rules check` and `hark rules test` compute, as plain functions over loaded
//! rules so the CLI only prints: lints, running the inline tests, and the per-event report
//! of which rules fire (with rendered commands) and why the others do not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::compile::{FileRules, InlineTest};
use super::load::{load_dirs, FileStatus, LoadReport};
use super::rule::{Fallback, Rule, SourcePos, StdinMode};
use super::set::RuleSet;
use super::{Diagnostic, Severity, ADMIN_DIR, VENDOR_DIR};
use crate::event::Event;

/// The directories used when none are given: `./rules.d` if it exists, else vendor + admin.
pub fn default_dirs() -> Vec<PathBuf> {
    let local = Path::new("rules.d");
    if local.is_dir() {
        vec![local.to_path_buf()]
    } else {
        vec![PathBuf::from(VENDOR_DIR), PathBuf::from(ADMIN_DIR)]
    }
}

/// The warning for a rules directory that is not there.
pub const NO_SUCH_DIRECTORY: &str = "no such directory";

/// Everything `hark rules check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub load: LoadReport,
    /// In file order: refusals, lints, failed tests.
    pub diagnostics: Vec<Diagnostic>,
    pub tests_passed: usize,
    pub tests_failed: usize,
}

impl CheckReport {
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Clean: no errors and no failed tests (warnings allowed).
    pub fn ok(&self) -> bool {
        self.count(Severity::Error) == 0 && self.tests_failed == 0
    }

    pub fn summary(&self) -> String {
        let files = self.load.files.len();
        let refused = self
            .load
            .files
            .iter()
            .filter(|f| matches!(f.status, FileStatus::Refused(_)))
            .count();
        let masked = self
            .load
            .files
            .iter()
            .filter(|f| matches!(f.status, FileStatus::Masked))
            .count();
        format!(
            "{}: {files} file(s) ({refused} refused, {masked} masked), {} rule(s), tests: {} passed, {} failed; {} error(s), {} warning(s)",
            if self.ok() { "ok" } else { "FAILED" },
            self.load.set.len(),
            self.tests_passed,
            self.tests_failed,
            self.count(Severity::Error),
            self.count(Severity::Warning),
        )
    }
}

fn diag(pos: &SourcePos, severity: Severity, message: String) -> Diagnostic {
    Diagnostic {
        pos: pos.clone(),
        severity,
        message,
    }
}

fn file_pos(path: &Path) -> SourcePos {
    SourcePos {
        file: path.into(),
        line: 0,
        column: 0,
    }
}

/// Load `paths` (directories or files), lint, and run every inline test.
pub fn check(paths: &[PathBuf]) -> CheckReport {
    let load = load_dirs(paths);
    let mut diagnostics = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for e in &load.errors {
        diagnostics.extend(e.diagnostics.iter().cloned());
    }
    for dir in &load.notices.missing {
        diagnostics.push(diag(
            &file_pos(dir),
            Severity::Warning,
            NO_SUCH_DIRECTORY.into(),
        ));
    }
    for (file, why) in &load.notices.skipped {
        diagnostics.push(diag(&file_pos(file), Severity::Warning, (*why).into()));
    }
    for f in &load.files {
        for old in &f.replaces {
            diagnostics.push(diag(
                &file_pos(&f.path),
                Severity::Note,
                format!("replaces {}", old.display()),
            ));
        }
        match &f.status {
            FileStatus::Masked => diagnostics.push(diag(
                &file_pos(&f.path),
                Severity::Note,
                "masked (symlink to /dev/null)".into(),
            )),
            FileStatus::Refused(e) => diagnostics.extend(e.diagnostics.iter().cloned()),
            FileStatus::Loaded(file) => {
                diagnostics.extend(file.diagnostics.iter().cloned());
                for rule in &file.rules {
                    if let Some(why) = super::lint::unpinned_amqp(rule) {
                        diagnostics.push(diag(&rule.source, Severity::Warning, why));
                    }
                    if let Some(fb) = &rule.fallback {
                        diagnostics.push(diag(
                            &rule.source,
                            Severity::Note,
                            format!("rule {:?}: {}", rule.name, fallback_text(fb)),
                        ));
                    }
                    if let Some(pool) = &rule.concurrency.pool {
                        if !load.set.pool_defined(pool) {
                            diagnostics.push(diag(
                                &rule.source,
                                Severity::Warning,
                                format!(
                                    "rule {:?} uses pool {pool:?}, which no rule file defines (it gets {} slot)",
                                    rule.name,
                                    super::set::DEFAULT_POOL_LIMIT
                                ),
                            ));
                        }
                    }
                }
                for test in &file.tests {
                    let failures = run_inline_test(file, test);
                    if failures.is_empty() {
                        passed += 1;
                    } else {
                        failed += 1;
                        diagnostics.extend(failures);
                    }
                }
            }
        }
    }
    let some_exist = load.notices.missing.len() < paths.len();
    if some_exist && load.set.is_empty() && load.refusals().next().is_none() {
        let dirs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        diagnostics.push(diag(
            &file_pos(Path::new(&dirs.join(" "))),
            Severity::Warning,
            "no rules found here: a daemon reading these would run nothing".into(),
        ));
    }
    CheckReport {
        load,
        diagnostics,
        tests_passed: passed,
        tests_failed: failed,
    }
}

impl CheckReport {
    /// Add what [`super::preflight`] finds on this host (programs, working directories),
    /// each after its file's other diagnostics.
    pub fn preflight(&mut self) {
        let mut any = false;
        for f in &self.load.files {
            let FileStatus::Loaded(file) = &f.status else {
                continue;
            };
            let found: Vec<Diagnostic> = file
                .rules
                .iter()
                .flat_map(|r| super::preflight::check_rule(r))
                .collect();
            if found.is_empty() {
                continue;
            }
            let after = self
                .diagnostics
                .iter()
                .rposition(|d| *d.pos.file == *f.path)
                .map_or(self.diagnostics.len(), |i| i + 1);
            any = true;
            self.diagnostics.splice(after..after, found);
        }
        if any {
            self.diagnostics.push(diag(
                &file_pos(Path::new("rules check")),
                Severity::Note,
                "programs and working directories were checked on this host; \
                 --no-preflight skips that for rules meant for another host"
                    .into(),
            ));
        }
    }
}

/// Run one inline test against its file's rules; each failure is an error diagnostic.
pub fn run_inline_test(file: &FileRules, test: &InlineTest) -> Vec<Diagnostic> {
    let label = format!("test {:?}", test.name);
    let mut out = Vec::new();
    let fired: Vec<&Rule> = file
        .rules
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.matches(&test.event))
        .collect();
    let mut got: Vec<&str> = fired.iter().map(|r| r.name.as_str()).collect();
    let mut want: Vec<&str> = test.fires.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    if got != want {
        let mut message = format!(
            "{label}: expected fires [{}], got [{}]",
            want.join(", "),
            got.join(", ")
        );
        for missing in want.iter().filter(|w| !got.contains(w)) {
            if let Some(rule) = file.rules.iter().find(|r| r.name == *missing) {
                let why = rule.why_not(&test.event).unwrap_or_default();
                message.push_str(&format!("; {missing} did not fire: {why}"));
            }
        }
        out.push(diag(&test.pos, Severity::Error, message));
    }
    for rule in &fired {
        let rendered = rule.render(&test.event);
        let refusal = test.refuses.iter().find(|(r, _, _)| *r == rule.name);
        match (&rendered, refusal) {
            (Ok(r), Some((_, _, pos))) => out.push(diag(
                pos,
                Severity::Error,
                format!(
                    "{label}: expected rendering of {:?} to be refused, but it rendered {:?}",
                    rule.name, r.argv
                ),
            )),
            (Err(e), Some((_, text, pos))) if !e.to_string().contains(text.as_str()) => {
                out.push(diag(
                    pos,
                    Severity::Error,
                    format!(
                        "{label}: {:?} was refused for another reason: {e}",
                        rule.name
                    ),
                ))
            }
            (Err(e), None) => out.push(diag(&test.pos, Severity::Error, format!("{label}: {e}"))),
            _ => {}
        }
        let Ok(rendered) = rendered else {
            continue;
        };
        for (name, argv, pos) in test.argv.iter().filter(|(n, _, _)| *n == rule.name) {
            if &rendered.argv != argv {
                out.push(diag(
                    pos,
                    Severity::Error,
                    format!(
                        "{label}: argv of {name:?} is {}, expected {}",
                        json(&rendered.argv),
                        json(argv)
                    ),
                ));
            }
        }
        for (name, env, pos) in test.env.iter().filter(|(n, _, _)| *n == rule.name) {
            if &rendered.env != env {
                out.push(diag(
                    pos,
                    Severity::Error,
                    format!(
                        "{label}: env of {name:?} is {}, expected {}",
                        json(&rendered.env),
                        json(env)
                    ),
                ));
            }
        }
        for (name, dir, pos) in test.workdir.iter().filter(|(n, _, _)| *n == rule.name) {
            let got = rendered.workdir.as_ref().map(|p| p.display().to_string());
            if got.as_deref() != Some(dir.as_str()) {
                out.push(diag(
                    pos,
                    Severity::Error,
                    format!("{label}: workdir of {name:?} is {got:?}, expected {dir:?}"),
                ));
            }
        }
    }
    out
}

/// How a rule's fallback reads in `rules check` and `rules test`.
pub fn fallback_text(fb: &Fallback) -> String {
    format!(
        "fallback: every {} (runs with HARK_REASON=fallback when no job started for that long)",
        crate::duration::format(fb.every)
    )
}

fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// One rule that fires for an event.
#[derive(Debug, Clone, Serialize)]
pub struct Fire {
    pub rule: String,
    /// `None` when rendering was refused (see `refused`).
    pub argv: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    pub stdin: StdinMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The rule's safety-net interval (`6h`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// With `run.unit`: the transient unit's settings (`User=root`, `ProtectSystem=strict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Vec<String>>,
}

/// One rule that does not fire, with the first condition that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub rule: String,
    pub reason: String,
}

/// What the rule set does with one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    pub uuid: String,
    pub topic: String,
    pub fires: Vec<Fire>,
    pub misses: Vec<Miss>,
}

/// Evaluate every rule against the event.
pub fn evaluate(set: &RuleSet, event: &Event) -> EventReport {
    let mut fires = Vec::new();
    let mut misses = Vec::new();
    for (rule, why_not) in set.explain(event) {
        match why_not {
            Some(reason) => misses.push(Miss {
                rule: rule.name.clone(),
                reason,
            }),
            None => fires.push(match rule.render(event) {
                Ok(r) => Fire {
                    rule: rule.name.clone(),
                    argv: Some(r.argv),
                    env: Some(r.env),
                    workdir: r.workdir.map(|p| p.display().to_string()),
                    stdin: r.stdin,
                    refused: None,
                    fallback: fallback_every(rule),
                    unit: rule.run.unit.as_ref().map(|u| u.describe()),
                },
                Err(e) => Fire {
                    rule: rule.name.clone(),
                    argv: None,
                    env: None,
                    workdir: None,
                    stdin: rule.run.stdin,
                    refused: Some(e.to_string()),
                    fallback: fallback_every(rule),
                    unit: rule.run.unit.as_ref().map(|u| u.describe()),
                },
            }),
        }
    }
    EventReport {
        uuid: event.uuid.clone(),
        topic: event.topic.clone(),
        fires,
        misses,
    }
}

fn fallback_every(rule: &Rule) -> Option<String> {
    rule.fallback
        .as_ref()
        .map(|f| crate::duration::format(f.every))
}

/// The human-readable form of an [`EventReport`]; `stdin_json` is the event as the
/// command would read it.
pub fn format_report(report: &EventReport, stdin_json: &str) -> String {
    let mut s = format!("event {} {}\n", report.topic, report.uuid);
    if report.fires.is_empty() {
        s.push_str("  no rule fires\n");
    }
    for f in &report.fires {
        match &f.refused {
            Some(reason) => s.push_str(&format!("  fires {} but is REFUSED: {reason}\n", f.rule)),
            None => {
                s.push_str(&format!("  fires {}\n", f.rule));
                s.push_str(&format!("    argv: {}\n", json(&f.argv)));
                if let Some(env) = f.env.as_ref().filter(|e| !e.is_empty()) {
                    s.push_str(&format!("    env: {}\n", json(env)));
                }
                if let Some(dir) = &f.workdir {
                    s.push_str(&format!("    workdir: {dir}\n"));
                }
                match f.stdin {
                    StdinMode::Event => s.push_str(&format!("    stdin: event {stdin_json}\n")),
                    StdinMode::Batch => s.push_str(&format!(
                        "    stdin: batch (a JSON array of the merged events, here [{stdin_json}])\n"
                    )),
                    StdinMode::None => s.push_str("    stdin: none\n"),
                }
                if let Some(every) = &f.fallback {
                    s.push_str(&format!(
                        "    fallback: every {every} (HARK_REASON=fallback, without this event)\n"
                    ));
                }
                if let Some(unit) = &f.unit {
                    s.push_str(&format!(
                        "    unit: a transient systemd unit hark-job-<id>.service: {}\n",
                        unit.join(" ")
                    ));
                }
            }
        }
    }
    for m in &report.misses {
        s.push_str(&format!("  misses {}: {}\n", m.rule, m.reason));
    }
    s
}
