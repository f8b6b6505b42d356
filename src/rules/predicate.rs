//! Compiled match conditions: operators on event fields, the `all`/`any`/`not`
//! combinators, and the explanation of the first condition that failed (what
//! `hark rules test` prints for a rule that did not fire).
//!
//! Regexes and globs are compiled when the rule is loaded; evaluation allocates nothing
//! unless an explanation is asked for.

use std::cmp::Ordering;
use std::fmt;

use globset::GlobSet;
use regex::Regex;
use serde_json::Value;

use super::dpkg::DebVersion;
use super::path::{FieldPath, Val};
use crate::event::Event;

/// A literal written in a rule file. Numbers keep the spelling they were written with.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
    /// A list or map, only reachable through an explicit `eq`/`ne`.
    Json(Value),
}

impl Lit {
    /// The text a string or number literal stands for.
    pub fn text(&self) -> Option<&str> {
        match self {
            Lit::Str(s) | Lit::Num(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Str(s) => {
                let plain = !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || "-_./+~:@".contains(c));
                if plain {
                    f.write_str(s)
                } else {
                    write!(f, "{}", Value::String(s.clone()))
                }
            }
            Lit::Num(n) => f.write_str(n),
            Lit::Bool(b) => write!(f, "{b}"),
            Lit::Null => f.write_str("null"),
            Lit::Json(v) => write!(f, "{v}"),
        }
    }
}

/// Which way a comparison goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl Cmp {
    fn accepts(self, ord: Ordering) -> bool {
        match self {
            Cmp::Gt => ord == Ordering::Greater,
            Cmp::Ge => ord != Ordering::Less,
            Cmp::Lt => ord == Ordering::Less,
            Cmp::Le => ord != Ordering::Greater,
            Cmp::Eq => ord == Ordering::Equal,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "=",
        }
    }
}

/// A number as written, compared exactly when both sides are integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub fn parse(text: &str) -> Option<Num> {
        let t = text.trim();
        if let Ok(i) = t.parse::<i128>() {
            return Some(Num::Int(i));
        }
        t.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    pub fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

/// One operator with its compiled operand.
#[derive(Debug, Clone)]
pub enum Op {
    Eq(Lit),
    Ne(Lit),
    In(Vec<Lit>),
    NotIn(Vec<Lit>),
    Glob {
        set: GlobSet,
        patterns: Vec<String>,
    },
    Regex(Regex),
    Exists(bool),
    Contains(Lit),
    Num {
        cmp: Cmp,
        operand: Num,
        text: String,
    },
    Dpkg {
        cmp: Cmp,
        operand: DebVersion,
    },
}

impl Op {
    /// The operator's name as written in a rule file.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Eq(_) => "eq",
            Op::Ne(_) => "ne",
            Op::In(_) => "in",
            Op::NotIn(_) => "not_in",
            Op::Glob { .. } => "glob",
            Op::Regex(_) => "regex",
            Op::Exists(_) => "exists",
            Op::Contains(_) => "contains",
            Op::Num { cmp, .. } => match cmp {
                Cmp::Gt => "gt",
                Cmp::Ge => "ge",
                Cmp::Lt => "lt",
                Cmp::Le => "le",
                Cmp::Eq => "eq",
            },
            Op::Dpkg { cmp, .. } => match cmp {
                Cmp::Gt => "dpkg_gt",
                Cmp::Ge => "dpkg_ge",
                Cmp::Lt => "dpkg_lt",
                Cmp::Le => "dpkg_le",
                Cmp::Eq => "dpkg_eq",
            },
        }
    }

    /// Does the value (or its absence) satisfy this operator?
    pub fn holds(&self, value: Option<Val<'_>>) -> bool {
        match self {
            Op::Exists(want) => value.is_some() == *want,
            // The negations hold for a missing value, exactly like `not: {path: x}`.
            Op::Ne(lit) => !value.is_some_and(|v| lit_eq(&v, lit)),
            Op::NotIn(lits) => !value.is_some_and(|v| lits.iter().any(|l| lit_eq(&v, l))),
            _ => match value {
                None => false,
                Some(v) => self.holds_present(&v),
            },
        }
    }

    fn holds_present(&self, v: &Val<'_>) -> bool {
        match self {
            Op::Eq(lit) => lit_eq(v, lit),
            Op::In(lits) => lits.iter().any(|l| lit_eq(v, l)),
            Op::Glob { set, .. } => any_text(v, |t| set.is_match(t)),
            Op::Regex(re) => any_text(v, |t| re.is_match(t)),
            Op::Contains(lit) => {
                if v.is_array() {
                    v.items().iter().any(|item| lit_eq(item, lit))
                } else {
                    match (v, lit.text()) {
                        (Val::Str(s), Some(needle)) => s.contains(needle),
                        (Val::Json(Value::String(s)), Some(needle)) => s.contains(needle),
                        _ => false,
                    }
                }
            }
            Op::Num { cmp, operand, .. } => value_num(v)
                .and_then(|n| n.compare(*operand))
                .is_some_and(|ord| cmp.accepts(ord)),
            Op::Dpkg { cmp, operand } => v
                .text()
                .and_then(|t| operand.compare_text(t))
                .is_some_and(|ord| cmp.accepts(ord)),
            Op::Exists(_) | Op::Ne(_) | Op::NotIn(_) => self.holds(Some(*v)),
        }
    }

    /// Why the operator failed on `value`, phrased after the value.
    fn failure(&self, value: Option<Val<'_>>) -> String {
        let Some(v) = value else {
            return match self {
                Op::Exists(true) => "is missing".into(),
                _ => format!("is missing (wanted {self})"),
            };
        };
        let shown = v.describe();
        match self {
            Op::Eq(lit) => format!("{shown} is not {lit}"),
            Op::Ne(lit) => format!("{shown} equals the excluded {lit}"),
            Op::In(lits) => format!("{shown} is not in {}", list(lits)),
            Op::NotIn(lits) => format!("{shown} is in the excluded {}", list(lits)),
            Op::Glob { patterns, .. } => {
                format!("{shown} does not match the glob {}", patterns.join(" or "))
            }
            Op::Regex(re) => format!("{shown} does not match the regex {:?}", re.as_str()),
            Op::Exists(_) => format!("is present ({shown})"),
            Op::Contains(lit) => format!("{shown} does not contain {lit}"),
            Op::Num { cmp, text, .. } => match value_num(&v) {
                Some(_) => format!("{shown} is not {} {text}", cmp.symbol()),
                None => format!("{shown} is not a number"),
            },
            Op::Dpkg { cmp, operand } => match v.text().map(DebVersion::check) {
                Some(None) => format!(
                    "{shown} is not {} {} (Debian version order)",
                    cmp.symbol(),
                    operand
                ),
                Some(Some(e)) => format!("{shown} is not a Debian version ({e})"),
                None => format!("{shown} is not a Debian version"),
            },
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Eq(l) | Op::Ne(l) | Op::Contains(l) => write!(f, "{} {l}", self.name()),
            Op::In(ls) | Op::NotIn(ls) => write!(f, "{} {}", self.name(), list(ls)),
            Op::Glob { patterns, .. } => write!(f, "glob {}", patterns.join(" or ")),
            Op::Regex(re) => write!(f, "regex {:?}", re.as_str()),
            Op::Exists(b) => write!(f, "exists {b}"),
            Op::Num { text, .. } => write!(f, "{} {text}", self.name()),
            Op::Dpkg { operand, .. } => write!(f, "{} {operand}", self.name()),
        }
    }
}

fn list(lits: &[Lit]) -> String {
    let items: Vec<String> = lits.iter().map(Lit::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// String matchers apply to a string or number's text, or to any item of an array.
fn any_text(v: &Val<'_>, mut f: impl FnMut(&str) -> bool) -> bool {
    if v.is_array() {
        return v.items().iter().any(|item| item.text().is_some_and(&mut f));
    }
    v.text().is_some_and(f)
}

fn value_num(v: &Val<'_>) -> Option<Num> {
    match v {
        Val::Json(Value::Number(n)) => Num::parse(n.as_str()),
        Val::Json(Value::String(s)) => Num::parse(s),
        Val::Str(s) => Num::parse(s),
        _ => None,
    }
}

/// Equality between an event value and a literal. A number literal equals a number of the
/// same value, or a string spelled exactly like it (YAML cannot tell `1.10` the version from
/// 1.1 the number; the spelling is kept so both work).
pub fn lit_eq(v: &Val<'_>, lit: &Lit) -> bool {
    match lit {
        Lit::Str(s) => v.text() == Some(s.as_str()),
        Lit::Num(text) => match v {
            Val::Json(Value::Number(n)) => match (Num::parse(n.as_str()), Num::parse(text)) {
                (Some(a), Some(b)) => a.compare(b) == Some(Ordering::Equal),
                _ => false,
            },
            other => other.text() == Some(text.as_str()),
        },
        Lit::Bool(b) => matches!(v, Val::Json(Value::Bool(x)) if x == b),
        Lit::Null => matches!(v, Val::Json(Value::Null)),
        Lit::Json(j) => match v {
            Val::Json(x) => *x == j,
            Val::List(items) => match j {
                Value::Array(want) => {
                    want.len() == items.len()
                        && want
                            .iter()
                            .zip(items.iter())
                            .all(|(w, i)| w.as_str() == Some(i))
                }
                _ => false,
            },
            Val::Str(s) => j.as_str() == Some(s),
        },
    }
}

/// One operator applied to one path.
#[derive(Debug, Clone)]
pub struct Test {
    pub path: FieldPath,
    pub op: Op,
}

impl Test {
    pub fn holds(&self, event: &Event) -> bool {
        self.op.holds(self.path.lookup(event))
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path, self.op)
    }
}

/// A condition tree. An empty `All` holds; an empty `Any` never does.
#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Test(Test),
}

impl Condition {
    pub fn holds(&self, event: &Event) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.holds(event)),
            Condition::Any(cs) => cs.iter().any(|c| c.holds(event)),
            Condition::Not(c) => !c.holds(event),
            Condition::Test(t) => t.holds(event),
        }
    }

    /// `None` when the condition holds, else the first thing that failed.
    pub fn why_not(&self, event: &Event) -> Option<String> {
        match self {
            Condition::All(cs) => cs.iter().find_map(|c| c.why_not(event)),
            Condition::Any(cs) => {
                if cs.iter().any(|c| c.holds(event)) {
                    return None;
                }
                match cs.first() {
                    None => Some("`any: []` never holds".into()),
                    Some(first) => Some(format!(
                        "none of the {} `any` alternatives held; the first failed: {}",
                        cs.len(),
                        first.why_not(event).unwrap_or_default()
                    )),
                }
            }
            Condition::Not(c) => c.holds(event).then(|| format!("`not` matched: {c}")),
            Condition::Test(t) => {
                let value = t.path.lookup(event);
                if t.op.holds(value) {
                    None
                } else {
                    Some(format!("{}: {}", t.path, t.op.failure(value)))
                }
            }
        }
    }

    /// Flatten nested `All`s and drop empty ones, so evaluation walks less.
    pub fn simplify(self) -> Condition {
        match self {
            Condition::All(cs) => {
                let mut flat = Vec::new();
                for c in cs {
                    match c.simplify() {
                        Condition::All(inner) => flat.extend(inner),
                        other => flat.push(other),
                    }
                }
                if flat.len() == 1 {
                    flat.pop().unwrap_or(Condition::All(Vec::new()))
                } else {
                    Condition::All(flat)
                }
            }
            Condition::Any(cs) => Condition::Any(cs.into_iter().map(Condition::simplify).collect()),
            Condition::Not(c) => Condition::Not(Box::new(c.simplify())),
            t @ Condition::Test(_) => t,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, cs: &[Condition], sep: &str| -> fmt::Result {
            f.write_str("(")?;
            for (i, c) in cs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{c}")?;
            }
            f.write_str(")")
        };
        match self {
            Condition::All(cs) => join(f, cs, " and "),
            Condition::Any(cs) => join(f, cs, " or "),
            Condition::Not(c) => write!(f, "not {c}"),
            Condition::Test(t) => write!(f, "{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        let mut ev = Event::from_value(json!({
            "tag": "_lk.archive.package-upload-accepted", "uuid": "u-1", "format": "1.0",
            "time": "2024-01-01T00:00:00",
            "data": {
                "repo": "master", "suite": "experimental", "version": "1.10-1",
                "count": 7, "ratio": 0.5, "big": 123456789012345678901234567890u128,
                "is_new": true, "nothing": null, "files": ["a.dsc", "a.tar.xz"],
                "text": "hello world", "numstr": "42"
            }
        }))
        .unwrap();
        ev.signers = vec!["archive-master".into()];
        ev
    }

    fn t(path: &str, op: Op) -> (bool, Option<String>) {
        let cond = Condition::Test(Test {
            path: FieldPath::parse(path).unwrap(),
            op,
        });
        let ev = event();
        (cond.holds(&ev), cond.why_not(&ev))
    }

    fn holds(path: &str, op: Op) -> bool {
        let (h, why) = t(path, op);
        assert_eq!(h, why.is_none(), "holds and why_not agree for {path}");
        h
    }

    fn s(x: &str) -> Lit {
        Lit::Str(x.into())
    }

    fn glob(p: &[&str]) -> Op {
        let mut b = globset::GlobSetBuilder::new();
        for x in p {
            b.add(globset::Glob::new(x).unwrap());
        }
        Op::Glob {
            set: b.build().unwrap(),
            patterns: p.iter().map(|x| x.to_string()).collect(),
        }
    }

    fn num(cmp: Cmp, x: &str) -> Op {
        Op::Num {
            cmp,
            operand: Num::parse(x).unwrap(),
            text: x.into(),
        }
    }

    fn dpkg(cmp: Cmp, x: &str) -> Op {
        Op::Dpkg {
            cmp,
            operand: DebVersion::parse(x).unwrap(),
        }
    }

    #[test]
    fn eq_and_ne() {
        assert!(holds("data.repo", Op::Eq(s("master"))));
        assert!(!holds("data.repo", Op::Eq(s("Master"))));
        assert!(holds("data.count", Op::Eq(Lit::Num("7".into()))));
        assert!(holds("data.count", Op::Eq(Lit::Num("7.0".into()))));
        assert!(holds("data.count", Op::Eq(s("7"))));
        assert!(holds("data.numstr", Op::Eq(Lit::Num("42".into()))));
        assert!(holds("data.is_new", Op::Eq(Lit::Bool(true))));
        assert!(!holds("data.is_new", Op::Eq(s("true"))));
        assert!(holds("data.nothing", Op::Eq(Lit::Null)));
        assert!(!holds("data.missing", Op::Eq(Lit::Null)));
        assert!(holds(
            "data.files",
            Op::Eq(Lit::Json(json!(["a.dsc", "a.tar.xz"])))
        ));
        assert!(holds(
            "topic",
            Op::Eq(s("_lk.archive.package-upload-accepted"))
        ));
        assert!(holds(
            "signers",
            Op::Eq(Lit::Json(json!(["archive-master"])))
        ));
        assert!(holds("data.repo", Op::Ne(s("x"))));
        assert!(!holds("data.repo", Op::Ne(s("master"))));
        assert!(
            holds("data.missing", Op::Ne(s("x"))),
            "ne holds when missing"
        );
        assert!(holds(
            "data.big",
            Op::Eq(Lit::Num("123456789012345678901234567890".into()))
        ));
        assert!(!holds(
            "data.big",
            Op::Eq(Lit::Num("123456789012345678901234567891".into()))
        ));
    }

    #[test]
    fn in_and_not_in() {
        let suites = vec![s("landing"), s("byzantium")];
        let (h, why) = t("data.suite", Op::In(suites.clone()));
        assert!(!h);
        assert_eq!(
            why.as_deref(),
            Some("data.suite: \"experimental\" is not in [landing, byzantium]")
        );
        assert!(holds("data.repo", Op::In(vec![s("x"), s("master")])));
        assert!(holds("data.suite", Op::NotIn(suites)));
        assert!(!holds("data.suite", Op::NotIn(vec![s("experimental")])));
        assert!(holds("data.missing", Op::NotIn(vec![s("experimental")])));
        assert!(!holds("data.missing", Op::In(vec![s("experimental")])));
    }

    #[test]
    fn glob_and_regex() {
        assert!(holds("data.repo", glob(&["mas*"])));
        assert!(holds("data.repo", glob(&["x*", "?aster"])));
        assert!(!holds("data.repo", glob(&["x*"])));
        assert!(
            holds("data.files", glob(&["*.dsc"])),
            "any item of an array"
        );
        assert!(!holds("data.files", glob(&["*.deb"])));
        assert!(holds("data.count", glob(&["[0-9]"])));
        // Unanchored unless written so.
        assert!(holds("data.text", Op::Regex(Regex::new("lo wo").unwrap())));
        assert!(!holds(
            "data.text",
            Op::Regex(Regex::new("^lo wo").unwrap())
        ));
        assert!(holds(
            "data.text",
            Op::Regex(Regex::new("^hello world$").unwrap())
        ));
        assert!(holds(
            "data.files",
            Op::Regex(Regex::new(r"\.tar\.").unwrap())
        ));
        assert!(!holds("data.missing", Op::Regex(Regex::new("").unwrap())));
        let (_, why) = t("data.repo", Op::Regex(Regex::new("^x").unwrap()));
        assert_eq!(
            why.as_deref(),
            Some("data.repo: \"master\" does not match the regex \"^x\"")
        );
    }

    #[test]
    fn exists_and_contains() {
        assert!(holds("data.repo", Op::Exists(true)));
        assert!(holds("data.nothing", Op::Exists(true)), "null is present");
        assert!(holds("data.missing", Op::Exists(false)));
        assert!(!holds("data.repo", Op::Exists(false)));
        assert_eq!(
            t("data.missing", Op::Exists(true)).1.as_deref(),
            Some("data.missing: is missing")
        );
        assert!(holds("data.files", Op::Contains(s("a.dsc"))));
        assert!(!holds("data.files", Op::Contains(s("a"))));
        assert!(holds("data.text", Op::Contains(s("lo wo"))));
        assert!(!holds("data.text", Op::Contains(s("xyz"))));
        assert!(holds("signers", Op::Contains(s("archive-master"))));
        assert!(
            !holds("data.count", Op::Contains(s("7"))),
            "numbers are not substrings"
        );
    }

    #[test]
    fn numeric_comparisons() {
        assert!(holds("data.count", num(Cmp::Gt, "6")));
        assert!(!holds("data.count", num(Cmp::Gt, "7")));
        assert!(holds("data.count", num(Cmp::Ge, "7")));
        assert!(holds("data.count", num(Cmp::Lt, "7.5")));
        assert!(!holds("data.count", num(Cmp::Lt, "7")));
        assert!(holds("data.count", num(Cmp::Le, "7")));
        assert!(holds("data.ratio", num(Cmp::Lt, "1")));
        assert!(
            holds("data.numstr", num(Cmp::Gt, "41")),
            "numeric strings compare"
        );
        assert!(!holds("data.repo", num(Cmp::Gt, "0")));
        assert_eq!(
            t("data.repo", num(Cmp::Gt, "0")).1.as_deref(),
            Some("data.repo: \"master\" is not a number")
        );
        assert!(holds(
            "data.big",
            num(Cmp::Gt, "123456789012345678901234567889")
        ));
        assert!(!holds("data.missing", num(Cmp::Gt, "0")));
    }

    #[test]
    fn dpkg_comparisons() {
        assert!(
            holds("data.version", dpkg(Cmp::Ge, "1.2-1")),
            "1.10 > 1.2 in dpkg order"
        );
        assert!(holds("data.version", dpkg(Cmp::Gt, "1.9")));
        assert!(holds("data.version", dpkg(Cmp::Lt, "1.10-1+b1")));
        assert!(holds("data.version", dpkg(Cmp::Le, "1.10-1")));
        assert!(holds("data.version", dpkg(Cmp::Eq, "0:1.10-1")));
        assert!(!holds("data.version", dpkg(Cmp::Lt, "1.10~rc1")));
        assert!(!holds("data.version", dpkg(Cmp::Gt, "1:0")));
        let (_, why) = t("data.text", dpkg(Cmp::Gt, "1"));
        assert!(why.unwrap().contains("is not a Debian version"));
    }

    #[test]
    fn combinators() {
        let test = |p: &str, op: Op| {
            Condition::Test(Test {
                path: FieldPath::parse(p).unwrap(),
                op,
            })
        };
        let ev = event();
        let repo = || test("data.repo", Op::Eq(s("master")));
        let exp = || test("data.suite", Op::Eq(s("experimental")));
        let no = || test("data.suite", Op::Eq(s("landing")));
        assert!(Condition::All(vec![repo(), exp()]).holds(&ev));
        assert!(!Condition::All(vec![repo(), no()]).holds(&ev));
        assert!(Condition::Any(vec![no(), exp()]).holds(&ev));
        assert!(!Condition::Any(vec![]).holds(&ev));
        assert!(Condition::All(vec![]).holds(&ev));
        let not = Condition::Not(Box::new(exp()));
        assert!(!not.holds(&ev));
        assert_eq!(
            not.why_not(&ev).as_deref(),
            Some("`not` matched: data.suite eq experimental")
        );
        let any = Condition::Any(vec![no(), no()]);
        assert!(any
            .why_not(&ev)
            .unwrap()
            .contains("none of the 2 `any` alternatives"));
        let nested = Condition::All(vec![
            repo(),
            Condition::All(vec![exp(), Condition::Not(Box::new(no()))]),
        ]);
        assert!(nested.clone().holds(&ev));
        assert!(matches!(nested.simplify(), Condition::All(v) if v.len() == 3));
    }
}
