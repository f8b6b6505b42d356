//! Static checks on compiled rules: spotting rules that can never fire (contradictory or
//! empty conditions), and AMQP rules that do not pin their broker. This is a best effort that looks at conditions joined by "and" on the
//! same path; a rule it passes may still never fire, but one it flags never will.

use std::cmp::Ordering;

use super::dpkg::DebVersion;
use super::path::{Root, Val};
use super::predicate::{Cmp, Condition, Lit, Num, Op, Test};
use super::rule::Rule;
use crate::topic::TopicPattern;

/// Why the rule can never fire, if that can be seen without an event.
pub fn never_fires(rule: &Rule) -> Option<String> {
    if rule.signed_by.as_ref().is_some_and(Vec::is_empty) {
        return Some("signed_by is an empty list, so no signer is accepted".into());
    }
    unsatisfiable(&rule.condition, &rule.topics)
}

/// A rule written for AMQP messages (it reads `headers`) that does not say which broker
/// they must come from: messages carry no signature, so without `broker` (or `signed_by`)
/// it runs for a message from any broker the daemon consumes.
pub fn unpinned_amqp(rule: &Rule) -> Option<String> {
    if rule.signed_by.is_some() || !reads(&rule.condition, Root::Headers) {
        return None;
    }
    if pins_source(&rule.condition) {
        return None;
    }
    Some(format!(
        "rule {:?} runs commands for AMQP messages (it reads headers) without pinning the broker: \
         add `broker: NAME` under `where` (the broker's amqp.name), since such messages carry no signature",
        rule.name
    ))
}

fn reads(c: &Condition, root: Root) -> bool {
    match c {
        Condition::All(cs) | Condition::Any(cs) => cs.iter().any(|c| reads(c, root)),
        Condition::Not(inner) => reads(inner, root),
        Condition::Test(t) => t.path.root() == root,
    }
}

/// Does every event the condition admits have a given `source`?
fn pins_source(c: &Condition) -> bool {
    match c {
        Condition::All(cs) => cs.iter().any(pins_source),
        Condition::Any(cs) => !cs.is_empty() && cs.iter().all(pins_source),
        Condition::Not(_) => false,
        Condition::Test(t) => {
            t.path.root() == Root::Source && matches!(t.op, Op::Eq(_) | Op::In(_))
        }
    }
}

fn unsatisfiable(c: &Condition, topics: &[TopicPattern]) -> Option<String> {
    match c {
        Condition::Any(cs) => {
            if cs.is_empty() {
                return Some("`any: []` never holds".into());
            }
            let reasons: Vec<String> = cs.iter().filter_map(|c| unsatisfiable(c, topics)).collect();
            (reasons.len() == cs.len())
                .then(|| format!("no `any` alternative can hold (the first: {})", reasons[0]))
        }
        Condition::Not(inner) => always_holds(inner)
            .then(|| "`not` of a condition that always holds (e.g. `not: {}`)".to_string()),
        Condition::Test(t) => test_unsatisfiable(t, topics),
        Condition::All(cs) => {
            if let Some(r) = cs.iter().find_map(|c| unsatisfiable(c, topics)) {
                return Some(r);
            }
            let tests: Vec<&Test> = cs
                .iter()
                .filter_map(|c| match c {
                    Condition::Test(t) => Some(t),
                    _ => None,
                })
                .collect();
            let mut paths: Vec<&str> = tests.iter().map(|t| t.path.as_str()).collect();
            paths.sort_unstable();
            paths.dedup();
            paths.into_iter().find_map(|p| {
                let on_path: Vec<&Op> = tests
                    .iter()
                    .filter(|t| t.path.as_str() == p)
                    .map(|t| &t.op)
                    .collect();
                conflict(&on_path).map(|why| format!("{p}: {why}"))
            })
        }
    }
}

fn always_holds(c: &Condition) -> bool {
    match c {
        Condition::All(cs) => cs.iter().all(always_holds),
        _ => false,
    }
}

fn test_unsatisfiable(t: &Test, topics: &[TopicPattern]) -> Option<String> {
    if let Op::In(lits) = &t.op {
        if lits.is_empty() {
            return Some(format!("{}: `in: []` matches nothing", t.path));
        }
    }
    if t.path.root() == Root::Topic {
        let wanted: Vec<&str> = match &t.op {
            Op::Eq(lit) => lit.text().into_iter().collect(),
            Op::In(lits) => lits.iter().filter_map(Lit::text).collect(),
            _ => return None,
        };
        let reachable = wanted.iter().any(|w| topics.iter().any(|p| p.matches(w)));
        if !reachable {
            let patterns: Vec<&str> = topics.iter().map(|p| p.as_str()).collect();
            return Some(format!(
                "topic must be {} but match.topic is {}",
                wanted.join(" or "),
                patterns.join(" or ")
            ));
        }
    }
    None
}

fn same(a: &Lit, b: &Lit) -> bool {
    match (a.text(), b.text()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A bound: the value and whether it is strict (`gt`/`lt`).
type Bound<T> = Option<(T, bool)>;

fn tighter<T>(
    cur: Bound<T>,
    new: (T, bool),
    cmp: impl Fn(&T, &T) -> Ordering,
    want: Ordering,
) -> Bound<T> {
    match cur {
        None => Some(new),
        Some(old) => match cmp(&new.0, &old.0) {
            o if o == want => Some(new),
            Ordering::Equal => Some((old.0, old.1 || new.1)),
            _ => Some(old),
        },
    }
}

fn empty_range<T>(lo: &Bound<T>, hi: &Bound<T>, cmp: impl Fn(&T, &T) -> Ordering) -> bool {
    match (lo, hi) {
        (Some((l, ls)), Some((h, hs))) => match cmp(l, h) {
            Ordering::Greater => true,
            Ordering::Equal => *ls || *hs,
            Ordering::Less => false,
        },
        _ => false,
    }
}

fn conflict(ops: &[&Op]) -> Option<String> {
    let exists_false = ops.iter().any(|o| matches!(o, Op::Exists(false)));
    if exists_false {
        if let Some(pos) = ops
            .iter()
            .find(|o| !matches!(o, Op::Exists(false) | Op::Ne(_) | Op::NotIn(_)))
        {
            return Some(format!("`exists: false` contradicts `{pos}`"));
        }
    }
    let eqs: Vec<&Lit> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Eq(l) => Some(l),
            _ => None,
        })
        .collect();
    if let Some(pair) = eqs.windows(2).find(|w| !same(w[0], w[1])) {
        return Some(format!("it cannot equal both {} and {}", pair[0], pair[1]));
    }
    let excluded: Vec<&Lit> = ops
        .iter()
        .flat_map(|o| match o {
            Op::Ne(l) => vec![l],
            Op::NotIn(ls) => ls.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    let in_sets: Vec<&Vec<Lit>> = ops
        .iter()
        .filter_map(|o| match o {
            Op::In(ls) => Some(ls),
            _ => None,
        })
        .collect();
    // Every value the `eq`/`in` operators still allow, if they restrict it to a finite set.
    let mut candidates: Option<Vec<&Lit>> = eqs.first().map(|l| vec![*l]);
    for set in &in_sets {
        candidates = Some(match candidates {
            None => set.iter().collect(),
            Some(c) => c
                .into_iter()
                .filter(|l| set.iter().any(|s| same(l, s)))
                .collect(),
        });
    }
    if let Some(c) = &candidates {
        let left: Vec<&Lit> = c
            .iter()
            .copied()
            .filter(|l| !excluded.iter().any(|x| same(l, x)))
            .filter(|l| admitted_by_matchers(l, ops))
            .filter(|l| admitted_by_bounds(l, ops))
            .collect();
        if left.is_empty() {
            return Some(
                "no value satisfies all of its eq/in/ne/not_in/glob/regex/range conditions".into(),
            );
        }
    }
    let mut num_lo: Bound<Num> = None;
    let mut num_hi: Bound<Num> = None;
    let mut deb_lo: Bound<DebVersion> = None;
    let mut deb_hi: Bound<DebVersion> = None;
    let ncmp = |a: &Num, b: &Num| a.compare(*b).unwrap_or(Ordering::Equal);
    let dcmp = |a: &DebVersion, b: &DebVersion| a.cmp(b);
    for o in ops {
        match o {
            Op::Num { cmp, operand, .. } => match cmp {
                Cmp::Gt | Cmp::Ge => {
                    num_lo = tighter(num_lo, (*operand, *cmp == Cmp::Gt), ncmp, Ordering::Greater)
                }
                Cmp::Lt | Cmp::Le => {
                    num_hi = tighter(num_hi, (*operand, *cmp == Cmp::Lt), ncmp, Ordering::Less)
                }
                Cmp::Eq => {}
            },
            Op::Dpkg { cmp, operand } => {
                let v = || (operand.clone(), matches!(cmp, Cmp::Gt | Cmp::Lt));
                if matches!(cmp, Cmp::Gt | Cmp::Ge | Cmp::Eq) {
                    deb_lo = tighter(deb_lo, v(), dcmp, Ordering::Greater);
                }
                if matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Eq) {
                    deb_hi = tighter(deb_hi, v(), dcmp, Ordering::Less);
                }
            }
            _ => {}
        }
    }
    if empty_range(&num_lo, &num_hi, ncmp) {
        return Some("its numeric bounds leave no value".into());
    }
    if empty_range(&deb_lo, &deb_hi, dcmp) {
        return Some("its Debian version bounds leave no version".into());
    }
    None
}

fn admitted_by_matchers(lit: &Lit, ops: &[&Op]) -> bool {
    let Some(text) = lit.text() else {
        return true;
    };
    ops.iter().all(|o| match o {
        Op::Glob { set, .. } => set.is_match(text),
        Op::Regex(re) => re.is_match(text),
        _ => true,
    })
}

fn admitted_by_bounds(lit: &Lit, ops: &[&Op]) -> bool {
    let Some(text) = lit.text() else {
        return true;
    };
    let owned = serde_json::Value::String(text.to_string());
    let v = Val::Json(&owned);
    ops.iter().all(|o| match o {
        Op::Num { .. } | Op::Dpkg { .. } => o.holds(Some(v)),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::compile::parse_str;
    use super::*;
    use std::path::Path;

    fn lint(match_yaml: &str) -> Option<String> {
        let text = format!(
            "rules:\n  - name: r\n    match:\n{match_yaml}\n    run: {{command: [/bin/true]}}\n"
        );
        let file = parse_str(Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        never_fires(&file.rules[0])
    }

    #[test]
    fn satisfiable_rules_pass() {
        assert_eq!(
            lint("      topic: a.b\n      where: {data.x: 1, data.y: {in: [a, b], ne: a}}"),
            None
        );
        assert_eq!(lint("      topic: a.*\n      where: {topic: a.b}"), None);
        assert_eq!(
            lint("      topic: a\n      where: {data.v: {dpkg_ge: '1.0', dpkg_lt: '2.0'}}"),
            None
        );
        assert_eq!(
            lint("      topic: a\n      where: {data.n: {gt: 1, le: 2}}"),
            None
        );
        assert_eq!(
            lint("      topic: a\n      any: [{data.x: 1}, {data.x: {in: []}}]"),
            None
        );
        assert_eq!(
            lint("      topic: a\n      where: {data.x: {exists: false, ne: 1}}"),
            None
        );
    }

    #[test]
    fn contradictions_are_found() {
        let cases = [
            ("      topic: a\n      signed_by: []", "signed_by"),
            ("      topic: a\n      where: {data.x: {in: []}}", "in: []"),
            (
                "      topic: a\n      where: {data.x: {eq: 1, in: [2, 3]}}",
                "no value",
            ),
            (
                "      topic: a\n      where: {data.x: {in: [a, b], not_in: [a, b]}}",
                "no value",
            ),
            (
                "      topic: a\n      where: {data.x: {eq: a, ne: a}}",
                "no value",
            ),
            (
                "      topic: a\n      where: {data.x: {eq: abc, glob: 'x*'}}",
                "no value",
            ),
            (
                "      topic: a\n      where: {data.x: {exists: false, eq: 1}}",
                "exists: false",
            ),
            (
                "      topic: a\n      where: {data.n: {gt: 5, lt: 5}}",
                "numeric bounds",
            ),
            (
                "      topic: a\n      where: {data.n: {ge: 5, le: 4}}",
                "numeric bounds",
            ),
            (
                "      topic: a\n      where: {data.v: {dpkg_gt: '2.0', dpkg_lt: '1.0'}}",
                "version bounds",
            ),
            (
                "      topic: a\n      where: {data.v: {dpkg_eq: '2.0', dpkg_lt: '2.0~'}}",
                "version bounds",
            ),
            ("      topic: a\n      any: []", "any: []"),
            ("      topic: a\n      not: {}", "`not`"),
            ("      topic: a.*\n      where: {topic: b.c}", "match.topic"),
            (
                "      topic: a\n      all: [{data.x: 1}, {data.x: {in: []}}]",
                "in: []",
            ),
        ];
        for (yaml, want) in cases {
            let got = lint(yaml).unwrap_or_else(|| panic!("not flagged: {yaml}"));
            assert!(got.contains(want), "{yaml}: {got}");
        }
    }
}
