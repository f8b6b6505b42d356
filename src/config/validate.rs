//! Checks on `hark.yaml` that serde cannot express: settings that only make sense together,
//! and values whose syntax belongs to another module (topic globs in `trust.grants`). Each
//! problem names the key path it is about; [`Config::load`](super::Config::load) turns that
//! into `file:line:col` by finding the key in the YAML text it parsed.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::Config;
use crate::topic::TopicPattern;

/// One thing wrong with a configuration, about the setting at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path of the offending setting, with `[i]` for a list element:
    /// `trigger.results_relay`, `trust.grants.buildd[1]`.
    pub path: String,
    pub message: String,
}

/// Every cross-field problem of `config`, in a stable order (section, then setting).
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (signer, globs) in &config.trust.grants {
        for (i, glob) in globs.iter().enumerate() {
            if let Err(e) = TopicPattern::parse(glob) {
                problems.push(Problem {
                    path: format!("trust.grants.{signer}[{i}]"),
                    message: format!("grant for {signer:?}: {e}"),
                });
            }
        }
    }
    let t = &config.trigger;
    // Results are signed events; publishing them unsigned, or holding a key with nowhere
    // to publish, is a half-done setup rather than a choice.
    match (&t.results_relay, &t.results_key) {
        (Some(_), None) => problems.push(Problem {
            path: "trigger.results_relay".into(),
            message: "trigger.results_relay needs trigger.results_key (the key that signs \
                      job results): set both or neither"
                .into(),
        }),
        (None, Some(_)) => problems.push(Problem {
            path: "trigger.results_key".into(),
            message: "trigger.results_key needs trigger.results_relay (where job results \
                      are published): set both or neither"
                .into(),
        }),
        _ => {}
    }
    let h = &config.http;
    match (&h.tls_cert, &h.tls_key) {
        (Some(_), None) => problems.push(Problem {
            path: "http.tls_cert".into(),
            message: "http.tls_cert needs http.tls_key: set both or neither".into(),
        }),
        (None, Some(_)) => problems.push(Problem {
            path: "http.tls_key".into(),
            message: "http.tls_key needs http.tls_cert: set both or neither".into(),
        }),
        _ => {}
    }
    problems
}

/// Where each key path was written in a YAML text: the position of the key itself for
/// mapping entries, of the element for list entries. 1-based `(line, column)`.
#[derive(Debug, Default)]
pub struct Positions(BTreeMap<String, (u64, u64)>);

impl Positions {
    /// Index `text`. YAML that does not parse (or uses a shape this walk does not know)
    /// yields no positions: errors are then reported without one rather than not at all.
    pub fn of(text: &str) -> Positions {
        let mut out = Positions::default();
        if let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(text) {
            out.walk(String::new(), &root.value);
        }
        out
    }

    fn walk(&mut self, prefix: String, node: &Node) {
        match node {
            Node::Map(entries) => {
                for (key, value) in entries {
                    let path = if prefix.is_empty() {
                        key.value.0.clone()
                    } else {
                        format!("{prefix}.{}", key.value.0)
                    };
                    self.insert(&path, &key.referenced);
                    self.walk(path, &value.value);
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{prefix}[{i}]");
                    self.insert(&path, &item.referenced);
                    self.walk(path, &item.value);
                }
            }
            Node::Scalar => {}
        }
    }

    fn insert(&mut self, path: &str, at: &serde_saphyr::Location) {
        if at.line() > 0 {
            self.0
                .entry(path.to_string())
                .or_insert((at.line(), at.column()));
        }
    }

    /// The position of `path`, else of its nearest ancestor that was written.
    pub fn find(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path;
        loop {
            if let Some(at) = self.0.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A YAML node reduced to its shape: enough to know where each key sits.
#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

/// A mapping key as text, whatever scalar type YAML gave it (`1:`, `true:`).
#[derive(Debug)]
struct Key(String);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<Key>, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_list_elements() {
        let text = "relay:\n  workers: 2\ntrust:\n  grants:\n    buildd: [\"a.*\", \"b.**\"]\n    other:\n      - x\n      - y\n";
        let p = Positions::of(text);
        assert_eq!(p.find("relay"), Some((1, 1)));
        assert_eq!(p.find("relay.workers"), Some((2, 3)));
        assert_eq!(p.find("trust.grants.buildd"), Some((5, 5)));
        assert_eq!(p.find("trust.grants.buildd[1]"), Some((5, 21)));
        assert_eq!(p.find("trust.grants.other[1]"), Some((8, 9)));
        // Not written: the nearest ancestor that is.
        assert_eq!(p.find("relay.submit"), Some((1, 1)));
        assert_eq!(p.find("zmq.linger"), None);
    }

    #[test]
    fn unparsable_text_has_no_positions() {
        assert_eq!(Positions::of("a: [\n").find("a"), None);
    }
}
