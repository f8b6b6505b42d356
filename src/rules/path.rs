//! Field paths into an event (`topic`, `uuid`, `data.a.b`, `data.files[0]`,
//! `data["key.with.dots"]`) and the borrowed values they resolve to. Shared by predicates
//! and templates so both read an event the same way.

use std::fmt;

use serde_json::Value;

use crate::event::Event;

/// The event field a path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Topic,
    Uuid,
    Time,
    Origin,
    Author,
    Signers,
    Data,
    /// AMQP message headers (`headers.fedora_messaging_schema`); absent on other events.
    Headers,
    /// The configured name of the AMQP broker an event came from; absent on bus events.
    Source,
}

impl Root {
    pub const NAMES: &'static [&'static str] = &[
        "topic", "uuid", "time", "origin", "author", "signers", "data", "headers", "broker",
    ];

    pub fn from_name(name: &str) -> Option<Root> {
        Some(match name {
            "topic" => Root::Topic,
            "uuid" => Root::Uuid,
            "time" => Root::Time,
            "origin" => Root::Origin,
            "author" => Root::Author,
            "signers" => Root::Signers,
            "data" => Root::Data,
            "headers" => Root::Headers,
            "broker" => Root::Source,
            _ => return None,
        })
    }
}

/// One step below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A parsed path. Displays as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    root: Root,
    steps: Vec<Step>,
    text: String,
}

/// A value found in an event, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Str(&'a str),
    Json(&'a Value),
    /// The verified signers.
    List(&'a [String]),
}

impl<'a> Val<'a> {
    /// The text of a string or number (numbers keep their JSON spelling).
    pub fn text(&self) -> Option<&'a str> {
        match self {
            Val::Str(s) => Some(s),
            Val::Json(Value::String(s)) => Some(s),
            Val::Json(Value::Number(n)) => Some(n.as_str()),
            _ => None,
        }
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Val::List(_) | Val::Json(Value::Array(_)))
    }

    /// Items of an array value, each as a `Val`.
    pub fn items(&self) -> Vec<Val<'a>> {
        match self {
            Val::List(l) => l.iter().map(|s| Val::Str(s)).collect(),
            Val::Json(Value::Array(a)) => a.iter().map(Val::Json).collect(),
            _ => Vec::new(),
        }
    }

    /// A short rendering for explanations, JSON-quoted and cut when long.
    pub fn describe(&self) -> String {
        let full = match self {
            Val::Str(s) => Value::String((*s).to_string()).to_string(),
            Val::Json(v) => v.to_string(),
            Val::List(l) => serde_json::to_string(l).unwrap_or_default(),
        };
        if full.chars().count() > 80 {
            let cut: String = full.chars().take(77).collect();
            format!("{cut}...")
        } else {
            full
        }
    }

    /// The JSON type name, for refusals and explanations.
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "string",
            Val::List(_) => "array",
            Val::Json(v) => match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            },
        }
    }
}

impl FieldPath {
    /// Parse `root(.key | [index] | ["quoted key"])*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root_end = text.find(['.', '[']).unwrap_or(text.len());
        let root_name = &text[..root_end];
        let root = Root::from_name(root_name).ok_or_else(|| {
            format!(
                "unknown field {root_name:?}: a path starts with one of {}",
                Root::NAMES.join(", ")
            )
        })?;
        let mut steps = Vec::new();
        let mut rest = &text[root_end..];
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err(format!(
                        "empty key in path {text:?} (use data[\"...\"] for keys with dots)"
                    ));
                }
                if key.contains([']', '"', '\'']) || key.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "key {key:?} in path {text:?} needs quoting: data[\"{key}\"]"
                    ));
                }
                steps.push(Step::Key(key.to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let (step, consumed) = parse_bracket(after, text)?;
                steps.push(step);
                rest = &after[consumed..];
            } else {
                return Err(format!("expected '.' or '[' in path {text:?} at {rest:?}"));
            }
        }
        if !matches!(root, Root::Data | Root::Signers | Root::Headers) && !steps.is_empty() {
            return Err(format!(
                "{root_name} is a plain string; only data, headers and signers have parts ({text:?})"
            ));
        }
        if root == Root::Signers && steps.iter().any(|s| matches!(s, Step::Key(_))) {
            return Err(format!(
                "signers is a list; index it as signers[0] ({text:?})"
            ));
        }
        Ok(FieldPath {
            root,
            steps,
            text: text.to_string(),
        })
    }

    pub fn root(&self) -> Root {
        self.root
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for paths whose value an event sender chooses freely.
    pub fn is_event_data(&self) -> bool {
        !matches!(self.root, Root::Signers | Root::Source)
    }

    /// Resolve against an event; `None` when any step is missing.
    pub fn lookup<'a>(&self, event: &'a Event) -> Option<Val<'a>> {
        let start = match self.root {
            Root::Topic => return Some(Val::Str(&event.topic)),
            Root::Uuid => return Some(Val::Str(&event.uuid)),
            Root::Time => return event.time.as_deref().map(Val::Str),
            Root::Origin => return event.origin.as_deref().map(Val::Str),
            Root::Author => return event.author.as_deref().map(Val::Str),
            Root::Signers => {
                return match self.steps.first() {
                    None => Some(Val::List(&event.signers)),
                    Some(Step::Index(i)) => event.signers.get(*i).map(|s| Val::Str(s)),
                    Some(Step::Key(_)) => None,
                };
            }
            Root::Source => return event.source.as_deref().map(Val::Str),
            Root::Data => &event.data,
            Root::Headers if event.headers.is_null() => return None,
            Root::Headers => &event.headers,
        };
        let mut cur = start;
        for step in &self.steps {
            cur = match (step, cur) {
                (Step::Key(k), Value::Object(map)) => map.get(k)?,
                (Step::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(Val::Json(cur))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parse what follows `[`: an index or a quoted key, through the closing `]`.
/// Returns the step and the number of bytes consumed after the `[`.
fn parse_bracket(after: &str, whole: &str) -> Result<(Step, usize), String> {
    let quote = after.chars().next();
    match quote {
        Some(q @ ('"' | '\'')) => {
            let mut key = String::new();
            let mut chars = after.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some((_, e)) => key.push(e),
                        None => break,
                    }
                } else if c == q {
                    let close = i + c.len_utf8();
                    if after[close..].starts_with(']') {
                        return Ok((Step::Key(key), close + 1));
                    }
                    return Err(format!("expected ']' after quoted key in path {whole:?}"));
                } else {
                    key.push(c);
                }
            }
            Err(format!("unterminated quoted key in path {whole:?}"))
        }
        _ => {
            let end = after
                .find(']')
                .ok_or_else(|| format!("missing ']' in path {whole:?}"))?;
            let index = after[..end].trim().parse::<usize>().map_err(|_| {
                format!(
                    "expected an index or a quoted key inside [...] in path {whole:?}, found {:?}",
                    &after[..end]
                )
            })?;
            Ok((Step::Index(index), end + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        let mut ev = Event::from_value(json!({
            "tag": "_lk.archive.x", "uuid": "u-1", "format": "1.0", "time": "2024-01-01T00:00:00",
            "data": {"a": {"b": 1}, "files": ["x.dsc", "y.tar"], "key.with.dots": "dotted", "n": null}
        }))
        .unwrap();
        ev.signers = vec!["archive-master".into()];
        ev
    }

    fn get(path: &str) -> Option<String> {
        let ev = event();
        FieldPath::parse(path)
            .unwrap()
            .lookup(&ev)
            .map(|v| v.describe())
    }

    #[test]
    fn paths_resolve() {
        assert_eq!(get("topic").as_deref(), Some("\"_lk.archive.x\""));
        assert_eq!(get("uuid").as_deref(), Some("\"u-1\""));
        assert_eq!(get("time").as_deref(), Some("\"2024-01-01T00:00:00\""));
        assert_eq!(get("data.a.b").as_deref(), Some("1"));
        assert_eq!(get("data.files[0]").as_deref(), Some("\"x.dsc\""));
        assert_eq!(get("data.files[1]").as_deref(), Some("\"y.tar\""));
        assert_eq!(get("data.files[2]"), None);
        assert_eq!(
            get("data[\"key.with.dots\"]").as_deref(),
            Some("\"dotted\"")
        );
        assert_eq!(get("data['key.with.dots']").as_deref(), Some("\"dotted\""));
        assert_eq!(get("data.n").as_deref(), Some("null"));
        assert_eq!(get("data.missing"), None);
        assert_eq!(get("data.a.b.c"), None);
        assert_eq!(get("signers[0]").as_deref(), Some("\"archive-master\""));
        assert_eq!(get("origin"), None);
    }

    #[test]
    fn bad_paths_say_why() {
        for (bad, why) in [
            ("dat.x", "unknown field"),
            ("data..x", "empty key"),
            ("data.files[x]", "expected an index"),
            ("data[\"x", "unterminated"),
            ("data.files[0", "missing ']'"),
            ("topic.x", "plain string"),
            ("data.a b", "needs quoting"),
        ] {
            let err = FieldPath::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
