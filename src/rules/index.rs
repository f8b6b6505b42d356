//! The topic index: every rule's topic patterns in one trie over dotted segments, so that
//! finding the rules whose topic matches walks only the branches the topic can take,
//! however many rules are loaded.
//!
//! Literal segments (and each word of `{a,b}`) are hashed children; `*` and in-segment
//! globs are tried at every node that has them; `**` is a child that may swallow any number
//! of segments. Runs of `**` collapse into one, which keeps matching polynomial.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::topic::{Segment, SegmentGlob, TopicPattern};

/// FNV-1a: topic segments are short, and SipHash's setup cost dominated lookups here.
/// Flooding is no concern: the keys come from rule files, not from events.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Children = HashMap<Box<str>, u32, BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
struct Node {
    literal: Children,
    any_one: Option<u32>,
    any_many: Option<u32>,
    globs: Vec<(SegmentGlob, u32)>,
    /// Rules whose pattern ends at this node.
    rules: Vec<u32>,
}

/// Rule ids by topic pattern.
#[derive(Debug)]
pub struct TopicIndex {
    nodes: Vec<Node>,
}

impl Default for TopicIndex {
    fn default() -> Self {
        TopicIndex {
            nodes: vec![Node::default()],
        }
    }
}

impl TopicIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `rule` (an id chosen by the caller) under `pattern`.
    pub fn insert(&mut self, pattern: &TopicPattern, rule: u32) {
        self.insert_at(0, pattern.segments(), rule);
    }

    fn child(&mut self, parent: u32, pick: impl FnOnce(&mut Node) -> &mut Option<u32>) -> u32 {
        let next = self.nodes.len() as u32;
        let slot = pick(&mut self.nodes[parent as usize]);
        match slot {
            Some(id) => *id,
            None => {
                *slot = Some(next);
                self.nodes.push(Node::default());
                next
            }
        }
    }

    fn literal_child(&mut self, parent: u32, word: &str) -> u32 {
        let next = self.nodes.len() as u32;
        let id = *self.nodes[parent as usize]
            .literal
            .entry(word.into())
            .or_insert(next);
        if id == next {
            self.nodes.push(Node::default());
        }
        id
    }

    fn insert_at(&mut self, node: u32, segments: &[Segment], rule: u32) {
        let Some((first, rest)) = segments.split_first() else {
            let rules = &mut self.nodes[node as usize].rules;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
            return;
        };
        match first {
            Segment::Literal(word) => {
                let child = self.literal_child(node, word);
                self.insert_at(child, rest, rule);
            }
            Segment::Alternatives(words) => {
                for word in words {
                    let child = self.literal_child(node, word);
                    self.insert_at(child, rest, rule);
                }
            }
            Segment::AnyOne => {
                let child = self.child(node, |n| &mut n.any_one);
                self.insert_at(child, rest, rule);
            }
            Segment::AnyMany => {
                let rest = skip_double_stars(rest);
                let child = self.child(node, |n| &mut n.any_many);
                self.insert_at(child, rest, rule);
            }
            Segment::Glob(glob) => {
                let existing = self.nodes[node as usize]
                    .globs
                    .iter()
                    .find(|(g, _)| g == glob)
                    .map(|(_, id)| *id);
                let child = match existing {
                    Some(id) => id,
                    None => {
                        let id = self.nodes.len() as u32;
                        self.nodes.push(Node::default());
                        self.nodes[node as usize].globs.push((glob.clone(), id));
                        id
                    }
                };
                self.insert_at(child, rest, rule);
            }
        }
    }

    /// Append the ids of every rule with a pattern matching `topic` to `out`, sorted and
    /// without duplicates (a rule can match along several branches).
    pub fn lookup(&self, topic: &str, out: &mut Vec<u32>) {
        let start = out.len();
        self.visit(0, Some(topic), out);
        let found = &mut out[start..];
        if found.len() > 1 {
            found.sort_unstable();
            let mut w = 1;
            for r in 1..found.len() {
                if found[r] != found[w - 1] {
                    found[w] = found[r];
                    w += 1;
                }
            }
            out.truncate(start + w);
        }
    }

    /// `rest` is the unmatched tail of the topic; `None` once every segment is consumed.
    fn visit(&self, node: u32, rest: Option<&str>, out: &mut Vec<u32>) {
        let n = &self.nodes[node as usize];
        if let Some(many) = n.any_many {
            // `**` swallows zero segments, then one more at each dot.
            let mut tail = rest;
            loop {
                self.visit(many, tail, out);
                match tail {
                    None => break,
                    Some(t) => tail = t.split_once('.').map(|(_, after)| after),
                }
            }
        }
        let Some(topic) = rest else {
            out.extend_from_slice(&n.rules);
            return;
        };
        let (segment, tail) = match topic.split_once('.') {
            Some((seg, after)) => (seg, Some(after)),
            None => (topic, None),
        };
        if let Some(&child) = n.literal.get(segment) {
            self.visit(child, tail, out);
        }
        if let Some(child) = n.any_one {
            self.visit(child, tail, out);
        }
        for (glob, child) in &n.globs {
            if glob.matches(segment) {
                self.visit(*child, tail, out);
            }
        }
    }

    /// Number of trie nodes (for diagnostics and benchmarks).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0].rules.is_empty()
    }
}

fn skip_double_stars(mut rest: &[Segment]) -> &[Segment] {
    while let Some((Segment::AnyMany, tail)) = rest.split_first() {
        rest = tail;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> TopicIndex {
        let mut idx = TopicIndex::new();
        for (i, p) in patterns.iter().enumerate() {
            idx.insert(&TopicPattern::parse(p).unwrap(), i as u32);
        }
        idx
    }

    fn hits(idx: &TopicIndex, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.lookup(topic, &mut out);
        out
    }

    #[test]
    fn star_never_crosses_a_dot() {
        let idx = index(&["_lk.archive.*.published", "_lk.*"]);
        assert_eq!(hits(&idx, "_lk.archive.master.published"), vec![0]);
        assert_eq!(hits(&idx, "_lk.archive.a.b.published"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive"), vec![1]);
        assert_eq!(hits(&idx, "_lk"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive.published"), Vec::<u32>::new());
    }

    #[test]
    fn double_star_matches_zero_or_more() {
        let idx = index(&["_lk.**", "a.**.z", "**", "a.**.**.z"]);
        assert_eq!(hits(&idx, "_lk"), vec![0, 2]);
        assert_eq!(hits(&idx, "_lk.a.b.c"), vec![0, 2]);
        assert_eq!(hits(&idx, "a.z"), vec![1, 2, 3]);
        assert_eq!(hits(&idx, "a.b.c.z"), vec![1, 2, 3]);
        assert_eq!(hits(&idx, "a.b.c"), vec![2]);
        assert_eq!(hits(&idx, "x"), vec![2]);
    }

    #[test]
    fn literals_alternatives_and_globs() {
        let idx = index(&[
            "org.{debian,fedoraproject}.prod",
            "_lk.archive.package-*",
            "a.v?",
            "org.debian.prod",
        ]);
        assert_eq!(hits(&idx, "org.debian.prod"), vec![0, 3]);
        assert_eq!(hits(&idx, "org.fedoraproject.prod"), vec![0]);
        assert_eq!(hits(&idx, "org.ubuntu.prod"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive.package-upload-accepted"), vec![1]);
        assert_eq!(hits(&idx, "_lk.archive.package.x"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "a.v1"), vec![2]);
        assert_eq!(hits(&idx, "a.v12"), Vec::<u32>::new());
    }

    #[test]
    fn agrees_with_topic_pattern_matches() {
        let patterns = [
            "a", "a.b", "a.*", "a.**", "*.b", "**.b", "a.*.c", "a.**.c", "{a,x}.b", "a.b*", "**",
            "*", "a.*.*", "*.**.c", "a.b.c.d",
        ];
        let topics = [
            "a", "b", "a.b", "a.bb", "x.b", "a.b.c", "a.x.c", "a.b.b.c", "a.b.c.d", "c", "a.c",
        ];
        let idx = index(&patterns);
        for topic in topics {
            let want: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| TopicPattern::parse(p).unwrap().matches(topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(hits(&idx, topic), want, "topic {topic}");
        }
    }
}
