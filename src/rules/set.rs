//! The rule set: every loaded file's rules in one list, indexed by topic, plus the pools
//! they share. Building it is where cross-file problems (a rule name or pool defined twice)
//! are caught; the later file is refused and the set is built without it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::compile::FileRules;
use super::index::TopicIndex;
use super::rule::{Pool, Rule, SourcePos};
use super::{Diagnostic, RuleError, Severity};
use crate::event::Event;

/// Pool size for a pool that rules use but no file defines.
pub const DEFAULT_POOL_LIMIT: u32 = 1;

/// All loaded rules, ready to match events.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    /// Rule name to its place in `rules`: the scheduler looks rules up by name per start.
    by_name: HashMap<String, usize>,
    index: TopicIndex,
    pools: BTreeMap<String, (Pool, SourcePos)>,
}

impl RuleSet {
    /// Combine compiled files, in load order. A file that redefines a rule name or a pool
    /// (with a different limit) from an earlier file is refused whole and reported.
    pub fn build(files: &[FileRules]) -> (RuleSet, Vec<RuleError>) {
        let mut set = RuleSet::default();
        let mut refused = Vec::new();
        let mut owner: BTreeMap<&str, &SourcePos> = BTreeMap::new();
        for file in files {
            let mut problems = Vec::new();
            let mut mine: BTreeMap<&str, &SourcePos> = BTreeMap::new();
            for rule in &file.rules {
                if let Some(first) = owner.get(rule.name.as_str()) {
                    problems.push(Diagnostic {
                        pos: rule.source.clone(),
                        severity: Severity::Error,
                        message: format!(
                            "rule name {:?} is already defined at {first}; this file is refused",
                            rule.name
                        ),
                    });
                }
                mine.insert(&rule.name, &rule.source);
            }
            for (pool, pos) in &file.pools {
                if let Some((earlier, at)) = set.pools.get(&pool.name) {
                    if earlier.limit != pool.limit {
                        problems.push(Diagnostic {
                            pos: pos.clone(),
                            severity: Severity::Error,
                            message: format!(
                                "pool {:?} is already defined with limit {} at {at}; this file is refused",
                                pool.name, earlier.limit
                            ),
                        });
                    }
                }
            }
            if !problems.is_empty() {
                refused.push(RuleError {
                    file: file.path.clone(),
                    diagnostics: problems,
                });
                continue;
            }
            owner.extend(mine);
            for (pool, pos) in &file.pools {
                set.pools
                    .entry(pool.name.clone())
                    .or_insert_with(|| (pool.clone(), pos.clone()));
            }
            for rule in &file.rules {
                let id = set.rules.len() as u32;
                for topic in &rule.topics {
                    set.index.insert(topic, id);
                }
                set.by_name.insert(rule.name.clone(), set.rules.len());
                set.rules.push(rule.clone());
            }
        }
        (set, refused)
    }

    /// Every rule, in load order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules whose topic matches, by index into [`RuleSet::rules`], without checking signers
    /// or conditions. Appends to `out`, which callers reuse to avoid allocating per event.
    pub fn topic_candidates(&self, topic: &str, out: &mut Vec<u32>) {
        self.index.lookup(topic, out);
    }

    /// The rules that fire for the event, in load order, as indexes into
    /// [`RuleSet::rules`]. Clears `out` first; no allocation once `out` has grown.
    pub fn matching_into(&self, event: &Event, out: &mut Vec<u32>) {
        out.clear();
        self.index.lookup(&event.topic, out);
        out.retain(|&id| self.rules[id as usize].accepts(event));
    }

    /// The rules that fire for the event, in load order.
    pub fn matching(&self, event: &Event) -> Vec<&Arc<Rule>> {
        let mut ids = Vec::new();
        self.matching_into(event, &mut ids);
        ids.into_iter().map(|id| &self.rules[id as usize]).collect()
    }

    /// For every rule: `None` if it fires, or why not.
    pub fn explain<'a>(&'a self, event: &Event) -> Vec<(&'a Arc<Rule>, Option<String>)> {
        self.rules.iter().map(|r| (r, r.why_not(event))).collect()
    }

    /// The slots in a pool: its definition, or [`DEFAULT_POOL_LIMIT`].
    pub fn pool_limit(&self, name: &str) -> u32 {
        self.pools
            .get(name)
            .map_or(DEFAULT_POOL_LIMIT, |(pool, _)| pool.limit)
    }

    /// Pools defined in rule files.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values().map(|(p, _)| p)
    }

    pub fn pool_defined(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile::parse_str;
    use crate::rules::events::from_loose;
    use serde_json::json;
    use std::path::Path;

    fn file(name: &str, yaml: &str) -> FileRules {
        parse_str(Path::new(name), yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_rule_set_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuleSet>();
        assert_send_sync::<FileRules>();
    }

    #[test]
    fn matching_follows_load_order_and_checks_everything() {
        let a = file(
            "10-a.yaml",
            "rules:\n  - name: any-archive\n    match: {topic: '_lk.archive.**'}\n    run: {command: [/bin/true]}\n  - name: signed-upload\n    match: {topic: [_lk.archive.package-upload-accepted, '_lk.*.package-upload-accepted'], signed_by: [archive]}\n    run: {command: [/bin/true]}\npools:\n  io: {limit: 3}\n",
        );
        let b = file(
            "20-b.yaml",
            "rules:\n  - name: master-only\n    match: {topic: '_lk.archive.*', where: {data.repo: master}}\n    run: {command: [/bin/true]}\n    concurrency: {pool: io}\n",
        );
        let (set, refused) = RuleSet::build(&[a, b]);
        assert!(refused.is_empty());
        assert_eq!(set.len(), 3);
        assert_eq!(set.pool_limit("io"), 3);
        assert_eq!(set.pool_limit("other"), DEFAULT_POOL_LIMIT);
        let names = |v: serde_json::Value| -> Vec<String> {
            let ev = from_loose(v).unwrap();
            set.matching(&ev).iter().map(|r| r.name.clone()).collect()
        };
        assert_eq!(
            names(
                json!({"tag": "_lk.archive.package-upload-accepted", "signers": ["archive"], "data": {"repo": "master"}})
            ),
            vec!["any-archive", "signed-upload", "master-only"],
            "a rule matching through two patterns fires once"
        );
        assert_eq!(
            names(json!({"tag": "_lk.archive.package-upload-accepted", "data": {"repo": "x"}})),
            vec!["any-archive"]
        );
        assert_eq!(names(json!({"tag": "_lk.archive"})), vec!["any-archive"]);
        assert!(names(json!({"tag": "_lk.other.x"})).is_empty());
        let ev = from_loose(json!({"tag": "_lk.archive.x", "data": {"repo": "y"}})).unwrap();
        let explained: Vec<(String, Option<String>)> = set
            .explain(&ev)
            .into_iter()
            .map(|(r, why)| (r.name.clone(), why))
            .collect();
        assert_eq!(explained[0], ("any-archive".into(), None));
        assert!(explained[1]
            .1
            .as_deref()
            .unwrap_or("")
            .starts_with("topic \"_lk.archive.x\" does not match"));
        assert_eq!(
            explained[2].1.as_deref(),
            Some("data.repo: \"y\" is not master")
        );
    }

    #[test]
    fn conflicting_pools_refuse_the_later_file() {
        let a = file("a.yaml", "pools: {io: {limit: 2}}\n");
        let same = file("b.yaml", "pools: {io: {limit: 2}}\n");
        let other = file("c.yaml", "pools: {io: {limit: 5}}\n");
        let (set, refused) = RuleSet::build(&[a, same, other]);
        assert_eq!(set.pool_limit("io"), 2);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].file, Path::new("c.yaml"));
        assert!(refused[0]
            .to_string()
            .contains("already defined with limit 2"));
    }
}
