//! Compiling one rule file: YAML text to typed, validated [`Rule`]s plus the file's inline
//! tests and pools. Every error names the file, line and column; a file with any error is
//! refused whole, so a half-understood file never runs. Per-rule lints (warnings) are
//! collected here too, because only here are the positions known.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSetBuilder};
use regex::Regex;
use serde_json::Value;
use serde_saphyr::{Location, MessageFormatter, Spanned};

use super::dpkg::DebVersion;
use super::events;
use super::lint;
use super::path::{FieldPath, Root};
use super::predicate::{Cmp, Condition, Lit, Num, Op, Test};
use super::rule::{
    Coalesce, Concurrency, Fallback, OnBusy, Pool, Retry, Rule, RunSpec, SourcePos, StdinMode,
    DEFAULT_GRACE, DEFAULT_TIMEOUT,
};
use super::syntax::{
    CondEntry, CondMap, FieldSpec, RawFile, RawOps, RawRule, RawRun, RawTest, RawUnit, StrOrList,
};
use super::template::{Ref, Template, Var};
use super::unit::{self, UnitSpec};
use super::{Diagnostic, RuleError, Severity};
use crate::event::Event;
use crate::topic::TopicPattern;

/// Delay before the first retry when `retry` sets no `backoff`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
/// Cap on retry delays when `retry` sets no `max_backoff`.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Below this a fallback interval draws a warning: a safety net that fires every few
/// seconds is a loop (tests use short ones on purpose).
pub const MIN_FALLBACK: Duration = Duration::from_secs(60);

/// One compiled rule file. Cheap to clone; the daemon keeps the last good one per file.
#[derive(Debug, Clone)]
pub struct FileRules {
    pub path: PathBuf,
    pub rules: Vec<Arc<Rule>>,
    pub tests: Vec<InlineTest>,
    pub pools: Vec<(Pool, SourcePos)>,
    /// Warnings and notes found while compiling (never errors: those refuse the file).
    pub diagnostics: Vec<Diagnostic>,
}

impl FileRules {
    /// The file name that overriding and masking go by.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A `tests:` entry, ready to run.
#[derive(Debug, Clone)]
pub struct InlineTest {
    pub name: String,
    pub pos: SourcePos,
    pub event: Event,
    /// The exact set of this file's rules expected to fire.
    pub fires: Vec<String>,
    pub argv: Vec<(String, Vec<String>, SourcePos)>,
    pub env: Vec<(String, BTreeMap<String, String>, SourcePos)>,
    pub workdir: Vec<(String, String, SourcePos)>,
    /// Rules expected to fire but to have rendering refused, with a text the reason holds.
    pub refuses: Vec<(String, String, SourcePos)>,
}

/// The serde-saphyr options every rule file is read with.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    // YAML 1.1's yes/no/on/off booleans turn `suite: no` into false; keep YAML 1.2 rules.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

/// Compile rule-file text. `path` is only used for positions and the file name.
/// The YAML parser's words for a wrong shape, in an admin's: what was expected there.
fn in_plain_words(message: &str, line: u64, column: u64) -> String {
    match message {
        "expected mapping start" if line <= 1 && column <= 1 => {
            "a rule file must be a mapping with a `rules:` list (and optionally `tests:` and `pools:`); see docs/rules.md".into()
        }
        "expected mapping start" => "expected `key: value` entries (a mapping) here".into(),
        "expected sequence start" => "expected a list here (`- item` lines, or `[a, b]`)".into(),
        other => other.into(),
    }
}

pub fn parse_str(path: &Path, text: &str) -> Result<FileRules, RuleError> {
    parse_str_with(path, text, &unit::allowed_users())
}

/// [`parse_str`] with the users `run.unit.user` may name given here rather than taken from
/// hark.yaml's `trigger.unit_users`.
pub fn parse_str_with(
    path: &Path,
    text: &str,
    unit_users: &[String],
) -> Result<FileRules, RuleError> {
    let file: Arc<Path> = Arc::from(path);
    let is_blank = text
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...");
    if is_blank {
        return Ok(FileRules {
            path: path.to_path_buf(),
            rules: Vec::new(),
            tests: Vec::new(),
            pools: Vec::new(),
            diagnostics: Vec::new(),
        });
    }
    let raw: RawFile = serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
        let (line, column, message) = yaml_error(e);
        RuleError {
            file: path.to_path_buf(),
            diagnostics: vec![Diagnostic {
                pos: SourcePos {
                    file: file.clone(),
                    line,
                    column,
                },
                severity: Severity::Error,
                message: in_plain_words(&sanitize(&message), line, column),
            }],
        }
    })?;
    let mut ctx = Ctx::new(file, text, unit_users);
    let out = ctx.file(path, &raw);
    ctx.errors.sort_by_key(|d| (d.pos.line, d.pos.column));
    ctx.lints.sort_by_key(|d| (d.pos.line, d.pos.column));
    if ctx.errors.is_empty() {
        let mut out = out;
        out.diagnostics = ctx.lints;
        Ok(out)
    } else {
        Err(RuleError {
            file: path.to_path_buf(),
            diagnostics: ctx.errors,
        })
    }
}

/// Where the YAML parser stopped, and its message without the snippet.
fn yaml_error(e: serde_saphyr::Error) -> (u64, u64, String) {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = serde_saphyr::UserMessageFormatter.format_message(e.without_snippet());
    (line, column, message.into_owned())
}

/// Compile one condition map written on its own (`hark history --where`, the HTTP API's
/// `where`), with the syntax and checks of a rule's `match.where`. Errors are
/// `ORIGIN:line:col: error: message`, the first one only.
pub fn parse_condition(origin: &str, text: &str) -> Result<Condition, String> {
    let file: Arc<Path> = Arc::from(Path::new(origin));
    let map: CondMap = serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
        let (line, column, message) = yaml_error(e);
        format!("{origin}:{line}:{column}: error: {}", sanitize(&message))
    })?;
    let mut ctx = Ctx::new(file, text, &[]);
    let condition = ctx.cond_map(&map).simplify();
    match ctx.errors.first() {
        Some(first) => Err(first.to_string()),
        None => Ok(condition),
    }
}

/// Keep control characters from a rule file out of the terminal.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Ctx<'a> {
    file: Arc<Path>,
    src: &'a str,
    errors: Vec<Diagnostic>,
    lints: Vec<Diagnostic>,
    /// Who `run.unit.user` may be (`trigger.unit_users`).
    unit_users: &'a [String],
}

impl<'a> Ctx<'a> {
    fn new(file: Arc<Path>, src: &'a str, unit_users: &'a [String]) -> Self {
        Ctx {
            file,
            src,
            errors: Vec::new(),
            lints: Vec::new(),
            unit_users,
        }
    }

    fn pos(&self, loc: &Location) -> SourcePos {
        SourcePos {
            file: self.file.clone(),
            line: loc.line(),
            column: loc.column(),
        }
    }

    fn push(&mut self, severity: Severity, pos: SourcePos, message: String) {
        let d = Diagnostic {
            pos,
            severity,
            message: sanitize(&message),
        };
        if severity == Severity::Error {
            self.errors.push(d);
        } else {
            self.lints.push(d);
        }
    }

    fn error(&mut self, loc: &Location, message: impl Into<String>) {
        let pos = self.pos(loc);
        self.push(Severity::Error, pos, message.into());
    }

    fn warn(&mut self, loc: &Location, message: impl Into<String>) {
        let pos = self.pos(loc);
        self.push(Severity::Warning, pos, message.into());
    }

    fn note(&mut self, loc: &Location, message: impl Into<String>) {
        let pos = self.pos(loc);
        self.push(Severity::Note, pos, message.into());
    }

    /// The source text of a scalar, when the parser kept byte offsets.
    fn raw(&self, loc: &Location) -> Option<&'a str> {
        let span = loc.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        self.src.get(start..start.checked_add(len)?)
    }

    /// Position of a character inside a string scalar; the scalar's start when the
    /// source spelling differs from the value (escapes, folding).
    fn pos_in(&self, s: &Spanned<String>, char_offset: usize) -> SourcePos {
        let mut pos = self.pos(&s.referenced);
        if s.referenced != s.defined {
            return pos;
        }
        let Some(raw) = self.raw(&s.defined) else {
            return pos;
        };
        let quoted = (raw.starts_with('"') || raw.starts_with('\''))
            && raw.len() >= 2
            && raw[1..raw.len() - 1] == *s.value;
        if raw == s.value || quoted {
            pos.column += char_offset as u64 + u64::from(quoted);
        }
        pos
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match crate::duration::parse(&s.value) {
            Ok(d) if d.is_zero() => {
                self.error(&s.referenced, format!("{what} must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(&s.referenced, format!("{what}: {e}"));
                None
            }
        }
    }

    fn regex(&mut self, s: &Spanned<String>, what: &str) -> Option<Regex> {
        match Regex::new(&s.value) {
            Ok(re) => Some(re),
            Err(e) => {
                // regex's own message draws a caret diagram over several lines; keep
                // the last line, which says what is wrong.
                let text = e.to_string();
                let why = text
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("invalid")
                    .trim_start_matches("error: ")
                    .to_string();
                self.error(
                    &s.referenced,
                    format!("{what}: invalid regular expression {:?}: {why}", s.value),
                );
                None
            }
        }
    }

    /// A literal operand. Numbers keep the spelling they were written with.
    fn lit(&mut self, v: &Spanned<Value>, compound_ok: bool, what: &str) -> Option<Lit> {
        Some(match &v.value {
            Value::String(s) => Lit::Str(s.clone()),
            Value::Bool(b) => Lit::Bool(*b),
            Value::Null => Lit::Null,
            Value::Number(n) => {
                let written = self
                    .raw(&v.defined)
                    .map(str::trim)
                    .filter(|raw| Num::parse(raw).is_some());
                Lit::Num(written.unwrap_or(n.as_str()).to_string())
            }
            compound @ (Value::Array(_) | Value::Object(_)) => {
                if compound_ok {
                    Lit::Json(compound.clone())
                } else {
                    self.error(
                        &v.referenced,
                        format!("{what} takes a scalar (string, number, true/false or null)"),
                    );
                    return None;
                }
            }
        })
    }

    fn number(&mut self, v: &Spanned<Value>, what: &str) -> Option<(Num, String)> {
        let text = match self.lit(v, false, what)? {
            Lit::Num(t) | Lit::Str(t) => t,
            _ => String::new(),
        };
        match Num::parse(&text) {
            Some(n) => Some((n, text)),
            None => {
                self.error(
                    &v.referenced,
                    format!("{what} takes a number, found {}", v.value),
                );
                None
            }
        }
    }

    fn template(&mut self, s: &Spanned<String>, var_names: &[&str]) -> Option<Template> {
        match Template::parse(&s.value, var_names) {
            Ok(t) => Some(t),
            Err(e) => {
                let pos = self.pos_in(s, e.offset);
                self.push(Severity::Error, pos, e.message);
                None
            }
        }
    }

    fn file(&mut self, path: &Path, raw: &RawFile) -> FileRules {
        let mut rules = Vec::new();
        let mut seen: HashMap<String, Location> = HashMap::new();
        for raw_rule in &raw.rules {
            let name = &raw_rule.value.name;
            if let Some(first) = seen.get(&name.value) {
                let first = self.pos(first);
                self.error(
                    &name.referenced,
                    format!(
                        "duplicate rule name {:?} (first defined at {first})",
                        name.value
                    ),
                );
            } else {
                seen.insert(name.value.clone(), name.referenced);
            }
            let errors_before = self.errors.len();
            let rule = self.rule(&raw_rule.value);
            if self.errors.len() == errors_before {
                if let Some(rule) = rule {
                    rules.push(Arc::new(rule));
                }
            }
        }
        let mut pools = Vec::new();
        if let Some(map) = &raw.pools {
            for (name, pool) in &map.0 {
                if !is_name(&name.value) {
                    self.error(
                        &name.referenced,
                        format!(
                            "pool name {:?} may hold only letters, digits, '.', '_' and '-'",
                            name.value
                        ),
                    );
                }
                if pool.value.limit.value == 0 {
                    self.error(
                        &pool.value.limit.referenced,
                        "a pool's limit must be at least 1",
                    );
                }
                pools.push((
                    Pool {
                        name: name.value.clone(),
                        limit: pool.value.limit.value,
                    },
                    self.pos(&name.referenced),
                ));
            }
        }
        let mut tests = Vec::new();
        let mut test_names: HashMap<String, Location> = HashMap::new();
        for raw_test in &raw.tests {
            let name = &raw_test.value.name;
            if let Some(first) = test_names.get(&name.value) {
                let first = self.pos(first);
                self.warn(
                    &name.referenced,
                    format!("duplicate test name {:?} (first at {first})", name.value),
                );
            } else {
                test_names.insert(name.value.clone(), name.referenced);
            }
            if let Some(test) = self.test(&raw_test.value, &seen) {
                tests.push(test);
            }
        }
        for raw_rule in &raw.rules {
            let name = &raw_rule.value.name;
            let tested = tests.iter().any(|t| t.fires.contains(&name.value));
            if !tested && seen.contains_key(&name.value) {
                self.note(
                    &name.referenced,
                    format!("rule {:?} has no inline test in which it fires", name.value),
                );
            }
        }
        FileRules {
            path: path.to_path_buf(),
            rules,
            tests,
            pools,
            diagnostics: Vec::new(),
        }
    }

    fn rule(&mut self, raw: &RawRule) -> Option<Rule> {
        let name = &raw.name;
        if !is_name(&name.value) {
            self.error(
                &name.referenced,
                format!(
                    "rule name {:?} must start with a letter or digit and hold only letters, \
                     digits, '.', '_' and '-'",
                    name.value
                ),
            );
        }
        let vars = self.vars(raw);
        let var_names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        let m = &raw.match_.value;
        let topics = self.topics(&m.topic);
        let signed_by = m.signed_by.as_ref().map(|s| match &s.value {
            StrOrList::One(one) => vec![one.clone()],
            StrOrList::Many(many) => many.iter().map(|x| x.value.clone()).collect(),
        });
        let mut parts = Vec::new();
        if let Some(w) = &m.where_ {
            parts.push(self.cond_map(&w.value));
        }
        if let Some(n) = &m.not {
            parts.push(Condition::Not(Box::new(self.cond_map(&n.value))));
        }
        if let Some(any) = &m.any {
            let alts = any.value.iter().map(|c| self.cond_map(&c.value)).collect();
            parts.push(Condition::Any(alts));
        }
        if let Some(all) = &m.all {
            let each = all.value.iter().map(|c| self.cond_map(&c.value)).collect();
            parts.push(Condition::All(each));
        }
        let condition = Condition::All(parts).simplify();
        let run = self.run(&raw.run, &var_names, &vars);
        let coalesce = raw.coalesce.as_ref().and_then(|c| {
            let key = match &c.value.key {
                Some(k) => Some(self.template(k, &var_names)?),
                None => None,
            };
            let quiet = self.duration(&c.value.quiet, "coalesce.quiet")?;
            let max_delay = match &c.value.max_delay {
                Some(d) => {
                    let max = self.duration(d, "coalesce.max_delay")?;
                    if max < quiet {
                        self.error(
                            &d.referenced,
                            format!(
                                "coalesce.max_delay ({}) is shorter than quiet ({})",
                                d.value, c.value.quiet.value
                            ),
                        );
                    }
                    Some(max)
                }
                None => None,
            };
            Some(Coalesce {
                key,
                quiet,
                max_delay,
            })
        });
        let concurrency = match &raw.concurrency {
            None => Concurrency::default(),
            Some(c) => {
                let limit = c.value.limit.as_ref().map_or(1, |l| {
                    if l.value == 0 {
                        self.error(&l.referenced, "concurrency.limit must be at least 1");
                    }
                    l.value
                });
                let key = c
                    .value
                    .key
                    .as_ref()
                    .and_then(|k| self.template(k, &var_names));
                let pool = c.value.pool.as_ref().map(|p| {
                    if !is_name(&p.value) {
                        self.error(&p.referenced, format!("invalid pool name {:?}", p.value));
                    }
                    p.value.clone()
                });
                Concurrency {
                    limit,
                    key,
                    on_busy: c.value.on_busy.unwrap_or(OnBusy::Queue),
                    pool,
                }
            }
        };
        let retry = raw.retry.as_ref().and_then(|r| {
            let r = &r.value;
            if r.attempts.value == 0 {
                self.error(
                    &r.attempts.referenced,
                    "retry.attempts counts the first run too, so it must be at least 1",
                );
            }
            let backoff = match &r.backoff {
                Some(b) => self.duration(b, "retry.backoff")?,
                None => DEFAULT_BACKOFF,
            };
            let max_backoff = match &r.max_backoff {
                Some(b) => self.duration(b, "retry.max_backoff")?,
                None => DEFAULT_MAX_BACKOFF.max(backoff),
            };
            let on_exit = r.on_exit.clone().unwrap_or_default();
            if let Some(bad) = on_exit.iter().find(|c| !(1..=255).contains(*c)) {
                self.error(
                    &r.attempts.referenced,
                    format!("retry.on_exit: {bad} is not a failing exit status (1 to 255)"),
                );
            }
            Some(Retry {
                attempts: r.attempts.value,
                backoff,
                max_backoff,
                on_exit,
                on_timeout: r.on_timeout.unwrap_or(false),
            })
        });
        if let Some(run) = &run {
            let batches = coalesce.is_some() || concurrency.on_busy == OnBusy::Coalesce;
            if run.stdin == StdinMode::Batch && !batches {
                let loc = raw
                    .run
                    .value
                    .stdin
                    .as_ref()
                    .map_or(raw.run.referenced, |s| s.referenced);
                self.error(
                    &loc,
                    "stdin: batch needs coalesce or concurrency.on_busy: coalesce (nothing else \
                     merges events into one run)",
                );
            }
        }
        let fallback = raw.fallback.as_ref().and_then(|f| {
            let every = self.duration(&f.value.every, "fallback.every")?;
            if every < MIN_FALLBACK {
                self.warn(
                    &f.value.every.referenced,
                    format!(
                        "fallback.every is shorter than {}: a safety net, not a loop",
                        crate::duration::format(MIN_FALLBACK)
                    ),
                );
            }
            Some((Fallback { every }, f.referenced))
        });
        let rule = Rule {
            name: name.value.clone(),
            description: raw.description.clone(),
            source: self.pos(&name.referenced),
            topics: topics?,
            signed_by,
            condition,
            vars,
            run: run?,
            coalesce,
            concurrency,
            retry,
            fallback: fallback.as_ref().map(|(f, _)| f.clone()),
        };
        if let Some((_, at)) = &fallback {
            if let Err(e) = rule.render(&rule.fallback_event("check")) {
                self.error(
                    at,
                    format!(
                        "a fallback run has no event, so the command must render without one: {}: {} \
                         (give the var a default, or drop the fallback)",
                        e.field, e.reason
                    ),
                );
            }
        }
        if let Some(reason) = lint::never_fires(&rule) {
            self.warn(
                &name.referenced,
                format!("rule {:?} can never fire: {reason}", rule.name),
            );
        }
        Some(rule)
    }

    fn vars(&mut self, raw: &RawRule) -> Vec<Var> {
        let mut vars = Vec::new();
        let Some(map) = &raw.vars else {
            return vars;
        };
        for (name, var) in &map.0 {
            if !is_identifier(&name.value) {
                self.error(
                    &name.referenced,
                    format!(
                        "variable name {:?} must be letters, digits and '_', not starting with a digit",
                        name.value
                    ),
                );
                continue;
            }
            if Root::from_name(&name.value).is_some() {
                self.error(
                    &name.referenced,
                    format!(
                        "variable name {:?} would hide the event field of that name",
                        name.value
                    ),
                );
                continue;
            }
            let from = match FieldPath::parse(&var.value.from.value) {
                Ok(p) => p,
                Err(e) => {
                    self.error(
                        &var.value.from.referenced,
                        format!("vars.{}.from: {e}", name.value),
                    );
                    continue;
                }
            };
            let pattern = match &var.value.pattern {
                Some(p) => {
                    let Some(re) = self.regex(p, &format!("vars.{}.pattern", name.value)) else {
                        continue;
                    };
                    let anchored = (p.value.starts_with('^') || p.value.starts_with("\\A"))
                        && (p.value.ends_with('$') || p.value.ends_with("\\z"));
                    if !anchored {
                        self.warn(
                            &p.referenced,
                            format!(
                                "vars.{}.pattern {:?} is not anchored, so it admits any value that merely contains a match; write ^...$",
                                name.value, p.value
                            ),
                        );
                    }
                    Some(re)
                }
                None => None,
            };
            vars.push(Var {
                name: name.value.clone(),
                from,
                pattern,
                default: var.value.default.as_ref().map(|d| d.value.clone()),
            });
        }
        vars
    }

    fn topics(&mut self, topic: &Spanned<StrOrList>) -> Option<Vec<TopicPattern>> {
        let items: Vec<(String, Location)> = match &topic.value {
            StrOrList::One(s) => vec![(s.clone(), topic.referenced)],
            StrOrList::Many(list) => list
                .iter()
                .map(|s| (s.value.clone(), s.referenced))
                .collect(),
        };
        if items.is_empty() {
            self.error(
                &topic.referenced,
                "match.topic needs at least one pattern ('**' matches every topic)",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (text, loc) in items {
            match TopicPattern::parse(&text) {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.error(&loc, format!("match.topic: {e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn cond_map(&mut self, map: &CondMap) -> Condition {
        let mut parts = Vec::new();
        for (key, entry) in &map.0 {
            match entry {
                CondEntry::All(list) => {
                    let each = list.value.iter().map(|c| self.cond_map(&c.value)).collect();
                    parts.push(Condition::All(each));
                }
                CondEntry::Any(list) => {
                    let alts = list.value.iter().map(|c| self.cond_map(&c.value)).collect();
                    parts.push(Condition::Any(alts));
                }
                CondEntry::Not(inner) => {
                    parts.push(Condition::Not(Box::new(self.cond_map(&inner.value))));
                }
                CondEntry::Field(spec) => {
                    let path = match FieldPath::parse(&key.value) {
                        Ok(p) => p,
                        Err(e) => {
                            self.error(&key.referenced, e);
                            continue;
                        }
                    };
                    match &spec.value {
                        FieldSpec::Scalar(v) => {
                            let spanned = Spanned::new(v.clone(), spec.referenced, spec.defined);
                            if let Some(lit) = self.lit(&spanned, false, "a field") {
                                parts.push(Condition::Test(Test {
                                    path,
                                    op: Op::Eq(lit),
                                }));
                            }
                        }
                        FieldSpec::Ops(ops) => {
                            let tests = self.ops(&path, ops, &spec.referenced);
                            parts.extend(tests.into_iter().map(Condition::Test));
                        }
                    }
                }
            }
        }
        Condition::All(parts)
    }

    fn ops(&mut self, path: &FieldPath, ops: &RawOps, loc: &Location) -> Vec<Test> {
        let mut out: Vec<Op> = Vec::new();
        if let Some(e) = &ops.exists {
            out.push(Op::Exists(e.value));
        }
        if let Some(v) = &ops.eq {
            out.extend(self.lit(v, true, "eq").map(Op::Eq));
        }
        if let Some(v) = &ops.ne {
            out.extend(self.lit(v, true, "ne").map(Op::Ne));
        }
        if let Some(list) = &ops.in_ {
            let lits = list
                .value
                .iter()
                .filter_map(|v| self.lit(v, false, "in"))
                .collect();
            out.push(Op::In(lits));
        }
        if let Some(list) = &ops.not_in {
            let lits = list
                .value
                .iter()
                .filter_map(|v| self.lit(v, false, "not_in"))
                .collect();
            out.push(Op::NotIn(lits));
        }
        if let Some(v) = &ops.contains {
            if let Some(lit) = self.lit(v, false, "contains") {
                if matches!(lit, Lit::Null) {
                    self.error(
                        &v.referenced,
                        "contains takes a string, number or true/false",
                    );
                } else {
                    out.push(Op::Contains(lit));
                }
            }
        }
        if let Some(g) = &ops.glob {
            let items: Vec<(String, Location)> = match &g.value {
                StrOrList::One(s) => vec![(s.clone(), g.referenced)],
                StrOrList::Many(list) => list
                    .iter()
                    .map(|s| (s.value.clone(), s.referenced))
                    .collect(),
            };
            let mut builder = GlobSetBuilder::new();
            let mut patterns = Vec::new();
            for (text, at) in items {
                match GlobBuilder::new(&text).build() {
                    Ok(glob) => {
                        builder.add(glob);
                        patterns.push(text);
                    }
                    Err(e) => self.error(&at, format!("glob: invalid pattern {text:?}: {e}")),
                }
            }
            match builder.build() {
                Ok(set) => out.push(Op::Glob { set, patterns }),
                Err(e) => self.error(&g.referenced, format!("glob: {e}")),
            }
        }
        if let Some(r) = &ops.regex {
            out.extend(self.regex(r, "regex").map(Op::Regex));
        }
        for (v, cmp, name) in [
            (&ops.gt, Cmp::Gt, "gt"),
            (&ops.ge, Cmp::Ge, "ge"),
            (&ops.lt, Cmp::Lt, "lt"),
            (&ops.le, Cmp::Le, "le"),
        ] {
            if let Some(v) = v {
                if let Some((operand, text)) = self.number(v, name) {
                    out.push(Op::Num { cmp, operand, text });
                }
            }
        }
        for (v, cmp, name) in [
            (&ops.dpkg_gt, Cmp::Gt, "dpkg_gt"),
            (&ops.dpkg_ge, Cmp::Ge, "dpkg_ge"),
            (&ops.dpkg_lt, Cmp::Lt, "dpkg_lt"),
            (&ops.dpkg_le, Cmp::Le, "dpkg_le"),
            (&ops.dpkg_eq, Cmp::Eq, "dpkg_eq"),
        ] {
            if let Some(v) = v {
                match DebVersion::parse(&v.value) {
                    Ok(operand) => out.push(Op::Dpkg { cmp, operand }),
                    Err(e) => self.error(&v.referenced, format!("{name}: {e}")),
                }
            }
        }
        let any_given = ops.exists.is_some()
            || ops.eq.is_some()
            || ops.ne.is_some()
            || ops.in_.is_some()
            || ops.not_in.is_some()
            || ops.contains.is_some()
            || ops.glob.is_some()
            || ops.regex.is_some()
            || ops.gt.is_some()
            || ops.ge.is_some()
            || ops.lt.is_some()
            || ops.le.is_some()
            || ops.dpkg_gt.is_some()
            || ops.dpkg_ge.is_some()
            || ops.dpkg_lt.is_some()
            || ops.dpkg_le.is_some()
            || ops.dpkg_eq.is_some();
        if !any_given {
            self.error(
                loc,
                format!(
                    "{path}: empty operator map; expected one of eq, ne, in, not_in, glob, regex, \
                     exists, contains, gt, ge, lt, le, dpkg_gt, dpkg_ge, dpkg_lt, dpkg_le, dpkg_eq"
                ),
            );
        }
        out.into_iter()
            .map(|op| Test {
                path: path.clone(),
                op,
            })
            .collect()
    }

    fn run(&mut self, raw: &Spanned<RawRun>, var_names: &[&str], vars: &[Var]) -> Option<RunSpec> {
        let r = &raw.value;
        let shell = r.shell.as_ref().is_some_and(|s| s.value);
        if let Some(s) = r.shell.as_ref().filter(|s| s.value) {
            self.warn(
                &s.referenced,
                "shell: true runs the command through /bin/sh; prefer an argv list (event values \
                 reach the script only as \"$1\"... arguments or env)",
            );
        }
        let elements: Vec<Spanned<String>> = match &r.command.value {
            StrOrList::One(s) => {
                if !shell {
                    self.error(
                        &r.command.referenced,
                        "run.command must be a list of arguments, e.g. [/usr/bin/rsync, -a, ...] \
                         (a single string is a shell script, which needs shell: true)",
                    );
                    return None;
                }
                vec![Spanned::new(
                    s.clone(),
                    r.command.referenced,
                    r.command.defined,
                )]
            }
            StrOrList::Many(list) => list
                .iter()
                .map(|s| Spanned::new(s.value.clone(), s.referenced, s.defined))
                .collect(),
        };
        if elements.is_empty() {
            self.error(&r.command.referenced, "run.command is empty");
            return None;
        }
        let mut command = Vec::new();
        for (i, element) in elements.iter().enumerate() {
            let Some(t) = self.template(element, var_names) else {
                continue;
            };
            if i == 0 && !t.is_literal() {
                let what = if shell {
                    "with shell: true the script cannot substitute ${...}; pass event values as \
                     arguments (\"$1\") or env, and write $$ for a literal $"
                } else {
                    "the program (argv[0]) cannot come from the event"
                };
                self.error(&element.referenced, what);
                continue;
            }
            if i == 0 && !shell && !element.value.starts_with('/') {
                self.warn(
                    &element.referenced,
                    format!(
                        "argv[0] {:?} is not an absolute path, so the daemon's PATH decides which program runs",
                        element.value
                    ),
                );
            }
            for reference in t.refs() {
                let unvalidated = match reference {
                    Ref::Path(p) if p.is_event_data() => {
                        Some(format!("${{{p}}} comes straight from the event"))
                    }
                    Ref::Var(v) if vars.get(*v).is_some_and(|v| v.pattern.is_none()) => {
                        Some(format!("variable {} has no pattern", var_names[*v]))
                    }
                    _ => None,
                };
                if let Some(why) = unvalidated {
                    self.warn(
                        &element.referenced,
                        format!("argv[{i}] substitutes event data without a pattern: {why}; define a var with a pattern (^...$)"),
                    );
                }
            }
            command.push(t);
        }
        let mut env = BTreeMap::new();
        if let Some(map) = &r.env {
            for (name, value) in &map.0 {
                if !is_identifier(&name.value) {
                    self.error(
                        &name.referenced,
                        format!(
                            "environment variable name {:?} must be letters, digits and '_'",
                            name.value
                        ),
                    );
                    continue;
                }
                if name.value.starts_with("HARK_") {
                    self.error(
                        &name.referenced,
                        format!(
                            "{}: the HARK_ prefix is reserved for variables the daemon sets",
                            name.value
                        ),
                    );
                    continue;
                }
                if let Some(t) = self.template(value, var_names) {
                    env.insert(name.value.clone(), t);
                }
            }
        }
        let workdir = match &r.workdir {
            Some(w) => {
                let t = self.template(w, var_names)?;
                if !t.literal_prefix().starts_with('/') {
                    self.error(
                        &w.referenced,
                        "run.workdir must be an absolute path starting with a literal '/'",
                    );
                    return None;
                }
                Some(t)
            }
            None => None,
        };
        let timeout = match &r.timeout {
            Some(t) => self.duration(t, "run.timeout")?,
            None => DEFAULT_TIMEOUT,
        };
        let grace = match &r.grace {
            Some(g) => self.duration(g, "run.grace")?,
            None => DEFAULT_GRACE,
        };
        let unit = match &r.unit {
            Some(u) => Some(self.unit(u)?),
            None => None,
        };
        (command.len() == elements.len()).then_some(RunSpec {
            command,
            shell,
            env,
            workdir,
            stdin: r.stdin.as_ref().map_or(StdinMode::Event, |s| s.value),
            timeout,
            grace,
            unit,
        })
    }

    /// `run.unit`: every error at its key or value; `None` when there was one.
    fn unit(&mut self, raw: &Spanned<RawUnit>) -> Option<UnitSpec> {
        let errors_before = self.errors.len();
        let mut spec = UnitSpec::default();
        if let Some(user) = &raw.value.user {
            match unit::check_user(&user.value, self.unit_users) {
                Ok(()) => spec.user = Some(user.value.clone()),
                Err(why) => self.error(&user.referenced, why),
            }
        }
        if let Some(slice) = &raw.value.slice {
            match unit::check_slice(&slice.value) {
                Ok(()) => spec.slice = Some(slice.value.clone()),
                Err(why) => self.error(&slice.referenced, why),
            }
        }
        for (name, value) in raw.value.properties.iter().flat_map(|m| &m.0) {
            match unit::property(&name.value, &value.value) {
                Ok(p) => spec.properties.push(p),
                Err(None) => self.error(
                    &name.referenced,
                    format!(
                        "run.unit.properties: {:?} is not on the allow-list ({})",
                        name.value,
                        unit::allowed_names()
                    ),
                ),
                Err(Some(why)) => {
                    self.error(&value.referenced, format!("run.unit.properties: {why}"))
                }
            }
        }
        (self.errors.len() == errors_before).then_some(spec)
    }

    fn test(&mut self, raw: &RawTest, rules: &HashMap<String, Location>) -> Option<InlineTest> {
        let errors_before = self.errors.len();
        let label = format!("test {:?}", raw.name.value);
        let event = match events::from_loose(raw.event.value.clone()) {
            Ok(ev) => Some(ev),
            Err(e) => {
                self.error(&raw.event.referenced, format!("{label}: event: {e}"));
                None
            }
        };
        let mut fires = Vec::new();
        for name in &raw.fires.value {
            if !rules.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!(
                        "{label}: fires names {:?}, which is not a rule of this file",
                        name.value
                    ),
                );
            } else if fires.contains(&name.value) {
                self.error(
                    &name.referenced,
                    format!("{label}: {:?} is listed twice", name.value),
                );
            } else {
                fires.push(name.value.clone());
            }
        }
        let expect_fired = |ctx: &mut Self, key: &Spanned<String>, what: &str| -> bool {
            if fires.contains(&key.value) {
                true
            } else {
                ctx.error(
                    &key.referenced,
                    format!(
                        "{label}: {what} given for {:?}, which the test does not list under fires",
                        key.value
                    ),
                );
                false
            }
        };
        let mut argv = Vec::new();
        for (rule, v) in raw.argv.iter().flat_map(|m| m.0.iter()) {
            if expect_fired(self, rule, "argv") {
                argv.push((rule.value.clone(), v.value.clone(), self.pos(&v.referenced)));
            }
        }
        let mut env = Vec::new();
        for (rule, v) in raw.env.iter().flat_map(|m| m.0.iter()) {
            if expect_fired(self, rule, "env") {
                env.push((rule.value.clone(), v.value.clone(), self.pos(&v.referenced)));
            }
        }
        let mut workdir = Vec::new();
        for (rule, v) in raw.workdir.iter().flat_map(|m| m.0.iter()) {
            if expect_fired(self, rule, "workdir") {
                workdir.push((rule.value.clone(), v.value.clone(), self.pos(&v.referenced)));
            }
        }
        let mut refuses = Vec::new();
        for (rule, v) in raw.refuses.iter().flat_map(|m| m.0.iter()) {
            if expect_fired(self, rule, "refuses") {
                let expected_output = argv.iter().any(|(r, _, _)| *r == rule.value);
                if expected_output {
                    self.error(
                        &rule.referenced,
                        format!(
                            "{label}: {:?} cannot both render argv and be refused",
                            rule.value
                        ),
                    );
                }
                refuses.push((rule.value.clone(), v.value.clone(), self.pos(&v.referenced)));
            }
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(InlineTest {
            name: raw.name.value.clone(),
            pos: self.pos(&raw.name.referenced),
            event: event?,
            fires,
            argv,
            env,
            workdir,
            refuses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(yaml: &str) -> Result<FileRules, RuleError> {
        parse_str(Path::new("t.yaml"), yaml)
    }

    fn errors(yaml: &str) -> Vec<String> {
        match compile(yaml) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn one_error(yaml: &str) -> String {
        let errs = errors(yaml);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().unwrap_or_default()
    }

    fn rule(yaml: &str) -> Rule {
        let file = compile(yaml).unwrap_or_else(|e| panic!("{e}"));
        file.rules[0].as_ref().clone()
    }

    fn event(v: Value) -> Event {
        events::from_loose(v).unwrap()
    }

    const RUN: &str = "    run: {command: [/bin/true]}\n";

    #[test]
    fn empty_and_comment_only_files_load_with_no_rules() {
        assert!(compile("").unwrap().rules.is_empty());
        assert!(compile("# nothing yet\n\n---\n").unwrap().rules.is_empty());
        assert!(compile("rules: []\n").unwrap().rules.is_empty());
    }

    #[test]
    fn yaml_errors_name_line_column_and_what_was_expected() {
        let e = one_error("rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true], timeuot: 1s}\n");
        assert!(e.starts_with("t.yaml:4:33: error: unknown field `timeuot`, expected one of command, shell, env, workdir, stdin, timeout, grace"), "{e}");
        let e = one_error("rules:\n  - name: a\n    match: {topic: a}\n    match: {topic: b}\n");
        assert!(
            e.starts_with("t.yaml:4:5: error: duplicate mapping key `match`"),
            "{e}"
        );
        let e = one_error(
            "rules:\n  - name: a\n    match: {topic: a, where: {data.x: [1, 2]}}\n"
                .to_string()
                .as_str(),
        );
        assert!(e.contains("a bare list is ambiguous"), "{e}");
        let e = one_error("rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true], stdin: all}\n");
        assert!(
            e.contains("unknown variant `all`, expected one of event, batch, none"),
            "{e}"
        );
        let e = one_error("rules:\n  - name: a\n    run: {command: [/bin/true]}\n");
        assert!(e.contains("missing field `match`"), "{e}");
        let e = one_error("rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true]}\n    concurrency: {on_busy: later}\n");
        assert!(
            e.contains("expected one of queue, coalesce, skip, supersede"),
            "{e}"
        );
    }

    #[test]
    fn template_errors_point_inside_the_string() {
        let plain = "rules:\n  - name: a\n    match: {topic: a}\n    run:\n      command:\n        - /bin/echo\n        - x${nope}\n";
        assert_eq!(one_error(plain), "t.yaml:7:12: error: unknown variable 'nope' (this rule defines no vars; event fields are topic, uuid, time, origin, author, data.<path>)");
        let quoted = "rules:\n  - name: a\n    match: {topic: a}\n    run:\n      command: [/bin/echo, \"ab${data..x}\"]\n";
        assert!(
            one_error(quoted).starts_with("t.yaml:5:31: error: empty key in path"),
            "{}",
            one_error(quoted)
        );
        let env = "rules:\n  - name: a\n    match: {topic: a}\n    run:\n      command: [/bin/true]\n      env: {A: 'x ${'}\n";
        assert!(
            one_error(env).starts_with("t.yaml:6:19: error: unterminated"),
            "{}",
            one_error(env)
        );
    }

    #[test]
    fn fallback_needs_a_sane_interval_and_a_command_that_renders_without_an_event() {
        let base = "rules:\n  - name: a\n    match: {topic: a}\n";
        let ok = rule(&format!(
            "{base}    vars: {{repo: {{from: data.repo, default: main}}}}\n    run: {{command: [/usr/bin/sync, '${{repo}}']}}\n    fallback: {{every: 6h}}\n"
        ));
        assert_eq!(
            ok.fallback.as_ref().map(|f| f.every),
            Some(Duration::from_secs(6 * 3600))
        );
        let argv = ok.render(&ok.fallback_event("u")).unwrap().argv;
        assert_eq!(
            argv,
            ["/usr/bin/sync", "main"],
            "the var default stands in for the event"
        );
        let file = compile(&format!(
            "{base}    run: {{command: [/bin/true]}}\n    fallback: {{every: 10s}}\n"
        ))
        .unwrap();
        let warned: Vec<String> = file.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(
            warned
                .iter()
                .any(|w| w.starts_with("t.yaml:5:") && w.contains("shorter than 1m")),
            "{warned:?}"
        );
        let needs_event = one_error(&format!(
            "{base}    run: {{command: [/usr/bin/sync, '${{data.repo}}']}}\n    fallback: {{every: 1h}}\n"
        ));
        assert!(
            needs_event.starts_with("t.yaml:5:") && needs_event.contains("render without one"),
            "{needs_event}"
        );
    }

    #[test]
    fn run_sections_are_validated() {
        let base = "rules:\n  - name: a\n    match: {topic: a}\n";
        let cases = [
            (
                "    run: {command: 'echo hi'}\n",
                "must be a list of arguments",
            ),
            ("    run: {command: []}\n", "run.command is empty"),
            (
                "    run: {command: ['${data.prog}']}\n",
                "argv[0]) cannot come from the event",
            ),
            (
                "    run: {command: ['echo ${data.x}'], shell: true}\n",
                "script cannot substitute",
            ),
            (
                "    run: {command: [/bin/true], workdir: 'srv/${data.x}'}\n",
                "absolute path",
            ),
            (
                "    run: {command: [/bin/true], env: {HARK_X: y}}\n",
                "reserved",
            ),
            (
                "    run: {command: [/bin/true], env: {'A-B': y}}\n",
                "letters, digits",
            ),
            (
                "    run: {command: [/bin/true], timeout: 0s}\n",
                "longer than zero",
            ),
            (
                "    run: {command: [/bin/true], grace: 5}\n",
                "invalid duration",
            ),
            (
                "    run: {command: [/bin/true], stdin: batch}\n",
                "stdin: batch needs coalesce",
            ),
            (
                "    run: {command: [/bin/true]}\n    coalesce: {quiet: 10m, max_delay: 1m}\n",
                "shorter than quiet",
            ),
            (
                "    run: {command: [/bin/true]}\n    concurrency: {limit: 0}\n",
                "at least 1",
            ),
            (
                "    run: {command: [/bin/true]}\n    retry: {attempts: 0}\n",
                "at least 1",
            ),
            (
                "    run: {command: [/bin/true]}\n    retry: {attempts: 2, on_exit: [0]}\n",
                "not a failing exit status",
            ),
            (
                "    vars: {data: {from: data.x}}\n    run: {command: [/bin/true]}\n",
                "would hide the event field",
            ),
            (
                "    vars: {1x: {from: data.x}}\n    run: {command: [/bin/true]}\n",
                "must be letters",
            ),
            (
                "    vars: {x: {from: dta.x}}\n    run: {command: [/bin/true]}\n",
                "vars.x.from: unknown field",
            ),
            (
                "    vars: {x: {from: data.x, pattern: '('}}\n    run: {command: [/bin/true]}\n",
                "invalid regular expression",
            ),
        ];
        for (run, want) in cases {
            let e = errors(&format!("{base}{run}")).join("\n");
            assert!(e.contains(want), "{run}: {e}");
        }
        let bad_name = errors(&format!(
            "rules:\n  - name: 'a b'\n    match: {{topic: a}}\n{RUN}"
        ))
        .join("\n");
        assert!(bad_name.contains("rule name \"a b\""), "{bad_name}");
        let dup = errors(&format!("rules:\n  - name: a\n    match: {{topic: a}}\n{RUN}  - name: a\n    match: {{topic: b}}\n{RUN}")).join("\n");
        assert!(
            dup.contains(
                "t.yaml:5:11: error: duplicate rule name \"a\" (first defined at t.yaml:2:11)"
            ),
            "{dup}"
        );
    }

    #[test]
    fn the_typed_rule_carries_everything_the_daemon_needs() {
        let r = rule(
            "rules:\n  - name: full\n    description: d\n    match: {topic: [a.b, 'c.**'], signed_by: s1}\n    vars: {repo: {from: data.repo, pattern: '^[a-z]+$', default: main}}\n    run:\n      command: [/usr/bin/x, '${repo}']\n      env: {R: '${repo}'}\n      workdir: /srv/${repo}\n      stdin: batch\n      timeout: 1h30m\n      grace: 5s\n    coalesce: {key: '${repo}', quiet: 30s, max_delay: 10m}\n    concurrency: {limit: 2, key: '${repo}', on_busy: skip, pool: io}\n    retry: {attempts: 3, backoff: 10s, max_backoff: 1m, on_exit: [75], on_timeout: true}\n",
        );
        assert_eq!(r.name, "full");
        assert_eq!(r.description.as_deref(), Some("d"));
        assert_eq!(r.source.line, 2);
        assert_eq!(r.topics.len(), 2);
        assert_eq!(r.signed_by, Some(vec!["s1".to_string()]));
        assert_eq!(r.run.stdin, StdinMode::Batch);
        assert_eq!(r.run.timeout, Duration::from_secs(5400));
        assert_eq!(r.run.grace, Duration::from_secs(5));
        let c = r.coalesce.as_ref().unwrap();
        assert_eq!(
            (c.quiet, c.max_delay),
            (Duration::from_secs(30), Some(Duration::from_secs(600)))
        );
        assert_eq!(r.concurrency.limit, 2);
        assert_eq!(r.concurrency.on_busy, OnBusy::Skip);
        assert_eq!(r.concurrency.pool.as_deref(), Some("io"));
        let retry = r.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, 3);
        assert_eq!(retry.max_backoff, Duration::from_secs(60));
        assert!(retry.on_timeout);
        let ev = event(json!({"tag": "c.x.y", "signers": ["s1"], "data": {"repo": "sid"}}));
        assert!(r.matches(&ev));
        let out = r.render(&ev).unwrap();
        assert_eq!(out.argv, vec!["/usr/bin/x", "sid"]);
        assert_eq!(out.env.get("R").map(String::as_str), Some("sid"));
        assert_eq!(out.workdir.as_deref(), Some(Path::new("/srv/sid")));
        assert_eq!(r.coalesce_key(&ev).unwrap().as_deref(), Some("sid"));
        assert_eq!(r.concurrency_key(&ev).unwrap().as_deref(), Some("sid"));
        let missing = event(json!({"tag": "a.b", "signers": ["s1"]}));
        assert_eq!(
            r.render(&missing).unwrap().argv,
            vec!["/usr/bin/x", "main"],
            "default"
        );
        let bad = event(json!({"tag": "a.b", "signers": ["s1"], "data": {"repo": "../etc"}}));
        let e = r.render(&bad).unwrap_err();
        assert_eq!(e.field, "argv[1]");
        assert!(
            e.to_string()
                .starts_with("rule full: argv[1]: repo: value \"../etc\" does not match"),
            "{e}"
        );
        assert!(r.coalesce_key(&bad).is_err());
    }

    #[test]
    fn anchors_under_x_keys_are_shared() {
        let f = compile("x-run: &run\n  command: [/bin/true]\n  timeout: 5m\nrules:\n  - name: a\n    match: {topic: a}\n    run: *run\n  - name: b\n    match: {topic: b}\n    run:\n      <<: *run\n      stdin: none\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.rules[0].run.timeout, Duration::from_secs(300));
        assert_eq!(f.rules[1].run.timeout, Duration::from_secs(300));
        assert_eq!(f.rules[1].run.stdin, StdinMode::None);
        let e = one_error("defaults: 1\n");
        assert!(
            e.contains("unknown field `defaults`, expected one of rules, tests, pools, x-..."),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let r = rule(&format!(
            "rules:\n  - name: a\n    match: {{topic: a}}\n{RUN}"
        ));
        assert_eq!(r.run.stdin, StdinMode::Event);
        assert_eq!(r.run.timeout, DEFAULT_TIMEOUT);
        assert_eq!(r.run.grace, DEFAULT_GRACE);
        assert!(!r.run.shell);
        assert!(r.coalesce.is_none() && r.retry.is_none() && r.signed_by.is_none());
        assert_eq!(r.concurrency.limit, 1);
        assert_eq!(r.concurrency.on_busy, OnBusy::Queue);
        let r = rule("rules:\n  - name: a\n    match: {topic: a}\n    run: {command: [/bin/true]}\n    retry: {attempts: 2}\n");
        let retry = r.retry.unwrap();
        assert_eq!(
            (retry.backoff, retry.max_backoff),
            (DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF)
        );
        assert!(retry.on_exit.is_empty());
    }

    #[test]
    fn shell_rules_pass_values_as_arguments() {
        let r = rule("rules:\n  - name: sh\n    match: {topic: a}\n    vars: {v: {from: data.v, pattern: '^[a-z ]+$'}}\n    run:\n      shell: true\n      command: ['echo \"$1\" $$HOME', '${v}']\n");
        let ev = event(json!({"tag": "a", "data": {"v": "two words"}}));
        assert_eq!(
            r.render(&ev).unwrap().argv,
            vec!["/bin/sh", "-c", "echo \"$1\" $HOME", "hark:sh", "two words"]
        );
        let r = rule("rules:\n  - name: sh1\n    match: {topic: a}\n    run: {shell: true, command: 'exit 0'}\n");
        assert_eq!(
            r.render(&ev).unwrap().argv,
            vec!["/bin/sh", "-c", "exit 0", "hark:sh1"]
        );
    }

    #[test]
    fn workdir_never_climbs() {
        let r = rule("rules:\n  - name: w\n    match: {topic: a}\n    vars: {d: {from: data.d, pattern: '^[a-z./]+$'}}\n    run: {command: [/bin/true], workdir: '/srv/${d}'}\n");
        let ok = event(json!({"tag": "a", "data": {"d": "x/y"}}));
        assert_eq!(
            r.render(&ok).unwrap().workdir.as_deref(),
            Some(Path::new("/srv/x/y"))
        );
        let climb = event(json!({"tag": "a", "data": {"d": "../etc"}}));
        assert!(r.render(&climb).unwrap_err().reason.contains("'..'"));
    }

    #[test]
    fn conditions_compose() {
        let r = rule("rules:\n  - name: c\n    match:\n      topic: a\n      where:\n        data.repo: master\n        data[\"k.dots\"]: {exists: true}\n      not: {data.suite: experimental}\n      any:\n        - {data.n: {gt: 10}}\n        - all: [{data.tag: {glob: ['v*', 'r*']}}, {data.tag: {regex: '[0-9]$'}}]\n      all:\n        - data.files: {contains: x.dsc}\n    run: {command: [/bin/true]}\n");
        let base = json!({"repo": "master", "k.dots": 1, "suite": "sid", "n": 11, "tag": "x", "files": ["x.dsc"]});
        let fires = |patch: Value| {
            let mut data = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    data.as_object_mut().unwrap().remove(k);
                } else {
                    data[k] = v.clone();
                }
            }
            r.matches(&event(json!({"tag": "a", "data": data})))
        };
        assert!(fires(json!({})));
        assert!(!fires(json!({"repo": "other"})));
        assert!(!fires(json!({"k.dots": null})));
        assert!(!fires(json!({"suite": "experimental"})));
        assert!(!fires(json!({"n": 3})));
        assert!(fires(json!({"n": 3, "tag": "v12"})));
        assert!(!fires(json!({"n": 3, "tag": "v1x"})));
        assert!(!fires(json!({"files": ["y.dsc"]})));
        let why = r
            .why_not(&event(json!({"tag": "a", "data": {"repo": "x"}})))
            .unwrap();
        assert_eq!(why, "data.repo: \"x\" is not master");
        let why = r.why_not(&event(json!({"tag": "b"}))).unwrap();
        assert_eq!(why, "topic \"b\" does not match a");
    }

    #[test]
    fn yaml_scalars_keep_their_meaning() {
        let r = rule("rules:\n  - name: s\n    match:\n      topic: a\n      where: {data.v: 1.10, data.suite: no, data.mode: 0755, data.flag: true}\n    run: {command: [/bin/true]}\n");
        let ev = event(
            json!({"tag": "a", "data": {"v": "1.10", "suite": "no", "mode": "0755", "flag": true}}),
        );
        assert_eq!(r.why_not(&ev), None);
        let num = event(
            json!({"tag": "a", "data": {"v": 1.1, "suite": "no", "mode": "0755", "flag": true}}),
        );
        assert_eq!(r.why_not(&num), None, "1.10 the number equals 1.1");
        let wrong = event(
            json!({"tag": "a", "data": {"v": "1.1", "suite": "no", "mode": "0755", "flag": true}}),
        );
        assert!(
            r.why_not(&wrong).is_some(),
            "but not the string spelled differently"
        );
    }

    #[test]
    fn operands_are_checked_at_load() {
        let base = "rules:\n  - name: a\n    match:\n      topic: a\n      where: ";
        for (w, want) in [
            ("{data.x: {}}", "empty operator map"),
            ("{data.x: {gt: abc}}", "gt takes a number"),
            ("{data.x: {dpkg_lt: ':1'}}", "dpkg_lt: epoch"),
            ("{data.x: {glob: '[a'}}", "glob: invalid pattern"),
            ("{data.x: {in: [[1]]}}", "in takes a scalar"),
            ("{data.x: {contains: null}}", "contains takes a string"),
            ("{data.x: {contains: [1]}}", "contains takes a scalar"),
            ("{data.x: {gt: null}}", "gt takes a number"),
            ("{'data.x[': 1}", "missing ']'"),
            ("{topic: {eq: x}, uuid.x: 1}", "plain string"),
        ] {
            let e = errors(&format!("{base}{w}\n{RUN}")).join("\n");
            assert!(e.contains(want), "{w}: {e}");
        }
    }

    #[test]
    fn inline_tests_are_checked_against_the_file() {
        let base = format!("rules:\n  - name: a\n    match: {{topic: a}}\n{RUN}tests:\n");
        for (t, want) in [
            (
                "  - {name: t, event: {tag: a}, fires: [b]}\n",
                "which is not a rule of this file",
            ),
            (
                "  - {name: t, event: {tag: a}, fires: [a, a]}\n",
                "listed twice",
            ),
            (
                "  - {name: t, event: {tag: a}, fires: [], argv: {a: []}}\n",
                "does not list under fires",
            ),
            (
                "  - {name: t, event: {data: {}}, fires: []}\n",
                "needs a tag",
            ),
            (
                "  - {name: t, event: {tag: a, colour: red}, fires: []}\n",
                "unknown key \"colour\"",
            ),
            (
                "  - {name: t, event: {tag: a}, fires: [a], argv: {a: [x]}, refuses: {a: y}}\n",
                "cannot both",
            ),
        ] {
            let e = errors(&format!("{base}{t}")).join("\n");
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn argv_data_without_a_pattern_is_flagged() {
        let f = compile("rules:\n  - name: a\n    match: {topic: a}\n    vars: {v: {from: data.v}, p: {from: data.p, pattern: '^x$'}}\n    run: {command: [/bin/echo, '${v}', '${p}', '${data.w}', '${signers[0]}'], env: {E: '${data.e}'}}\n").unwrap();
        let warnings: Vec<String> = f
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(|d| d.message.clone())
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].contains("argv[1]") && warnings[0].contains("variable v has no pattern")
        );
        assert!(warnings[1].contains("argv[3]") && warnings[1].contains("${data.w}"));
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    const HEAD: &str = "rules:\n  - name: a\n    match: {topic: a}\n    run:\n      command: [/bin/true]\n      unit:\n";

    fn with_users(body: &str, users: &[&str]) -> Result<FileRules, RuleError> {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        parse_str_with(Path::new("t.yaml"), &format!("{HEAD}{body}"), &users)
    }

    fn errors(body: &str, users: &[&str]) -> Vec<String> {
        match with_users(body, users) {
            Ok(_) => panic!("expected errors for:\n{body}"),
            Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_unit_with_an_allowed_user_compiles_to_its_properties() {
        let body = "        user: root\n        slice: hark-jobs.slice\n        properties:\n          ProtectSystem: strict\n          ReadWritePaths: [/srv/piuparts]\n          PrivateTmp: true\n          MemoryMax: 4G\n          CPUQuota: 150%\n          TasksMax: 256\n";
        let file = with_users(body, &["root"]).unwrap_or_else(|e| panic!("{e}"));
        let unit = file.rules[0].run.unit.clone().expect("a unit");
        assert_eq!(
            unit.describe(),
            [
                "User=root",
                "Slice=hark-jobs.slice",
                "ProtectSystem=strict",
                "ReadWritePaths=/srv/piuparts",
                "PrivateTmp=true",
                "MemoryMax=4G",
                "CPUQuota=150%",
                "TasksMax=256"
            ]
        );
    }

    #[test]
    fn a_user_that_is_not_allowed_is_refused_at_its_position() {
        let e = errors("        user: mirror\n", &["root"]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.yaml:7:15: error: run.unit.user mirror is not in trigger.unit_users"
            ),
            "{e:?}"
        );
        // No list at all: nobody.
        assert!(errors("        user: root\n", &[])[0].contains("allows none"));
    }

    #[test]
    fn unknown_properties_bad_values_and_keys_are_refused_with_file_line_col() {
        let body =
            "        properties:\n          ExecStartPre: /bin/sh\n          MemoryMax: lots\n";
        let e = errors(body, &[]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.yaml:8:11: error: run.unit.properties: \"ExecStartPre\" is not on the allow-list (ProtectSystem,"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.yaml:9:22: error: run.unit.properties: MemoryMax takes bytes"),
            "{e:?}"
        );
        let e = errors("        group: wheel\n", &[]);
        assert!(
            e[0].starts_with("t.yaml:7:9: error: unknown field `group`"),
            "{e:?}"
        );
        let e = errors("        slice: jobs\n", &[]);
        assert!(
            e[0].starts_with("t.yaml:7:16: error: run.unit.slice"),
            "{e:?}"
        );
    }
}
