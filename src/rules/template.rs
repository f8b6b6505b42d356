//! Templates in `command`, `env`, `workdir` and coalesce/concurrency keys: `${data.path}`,
//! `${topic}`, `${uuid}`, `${var}` for a rule's `vars`, and `$$` for a literal `$`.
//!
//! Templates are parsed once at load. Rendering never splits a value into several
//! arguments; the one exception is an argv element that is exactly `${path}` holding an
//! array, which becomes one element per item. Every substituted value is checked here, so
//! no caller can forget to: objects, NUL bytes, a leading `-` (unless the variable's
//! `pattern` admits it) and values that miss their variable's `pattern` are refused.

use regex::Regex;
use serde_json::Value;

use super::path::{FieldPath, Val};
use crate::event::Event;

/// A rule variable: a named path with an optional validating pattern and default.
#[derive(Debug, Clone)]
pub struct Var {
    pub name: String,
    pub from: FieldPath,
    pub pattern: Option<Regex>,
    /// Used when the path is missing; written by the admin, so not checked.
    pub default: Option<String>,
}

/// What a `${...}` refers to.
#[derive(Debug, Clone)]
pub enum Ref {
    Path(FieldPath),
    /// Index into the rule's vars.
    Var(usize),
}

#[derive(Debug, Clone)]
pub enum Part {
    Lit(String),
    Sub(Ref),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template syntax error: the message and the character offset in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl Template {
    /// Parse `text`, resolving `${name}` against `var_names` (index = position).
    pub fn parse(text: &str, var_names: &[&str]) -> Result<Self, TemplateError> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i].1;
            let next = chars.get(i + 1).map(|x| x.1);
            if c == '$' && next == Some('$') {
                lit.push('$');
                i += 2;
            } else if c == '$' && next == Some('{') {
                let start = i;
                let inner_start = i + 2;
                let close = find_close(&chars, inner_start).ok_or_else(|| TemplateError {
                    offset: start,
                    message: "unterminated '${': expected '}' (write '$$' for a literal '$')"
                        .into(),
                })?;
                let inner: String = chars[inner_start..close].iter().map(|x| x.1).collect();
                let inner_trim = inner.trim();
                if inner_trim.is_empty() {
                    return Err(TemplateError {
                        offset: start,
                        message: "empty '${}': expected a variable or a path like data.repo".into(),
                    });
                }
                let reference =
                    resolve(inner_trim, var_names).map_err(|message| TemplateError {
                        offset: start,
                        message,
                    })?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Sub(reference));
                i = close + 1;
            } else if c == '\0' {
                // No argument, variable or path can hold a NUL: the kernel would cut the
                // argument there, and std refuses to spawn it. Refused at load, not when the
                // job runs. (Inside `${data["..."]}` it is a key, never rendered.)
                return Err(TemplateError {
                    offset: i,
                    message: "a NUL byte (\"\\0\" in YAML) cannot be part of a command, \
                              environment or path"
                        .into(),
                });
            } else {
                // A lone '$' (as in a shell's "$1") stays literal.
                lit.push(c);
                i += 1;
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: text.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// True when the template substitutes nothing.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The substitutions, in order.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Sub(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// The literal text before the first substitution.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Lit(l)) => l,
            _ => "",
        }
    }

    /// Render to one string; arrays are refused.
    pub fn render(&self, vars: &[Var], event: &Event) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Sub(r) => match fetch(r, vars, event)? {
                    Fetched::One(text) => out.push_str(&text),
                    Fetched::Many(_) => {
                        return Err(format!(
                            "{} is an array; only an argument that is exactly ${{{}}} expands \
                             to one argument per item",
                            ref_name(r, vars),
                            ref_name(r, vars)
                        ))
                    }
                },
            }
        }
        Ok(out)
    }

    /// Render as argv element(s): exactly `${path}` holding an array expands to one
    /// element per item; everything else yields exactly one element.
    pub fn render_args(
        &self,
        vars: &[Var],
        event: &Event,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if let [Part::Sub(r)] = self.parts.as_slice() {
            match fetch(r, vars, event)? {
                Fetched::One(text) => out.push(text),
                Fetched::Many(items) => out.extend(items),
            }
            return Ok(());
        }
        out.push(self.render(vars, event)?);
        Ok(())
    }
}

/// Find the `}` closing a `${`, skipping quoted keys such as `data["a}b"]`.
fn find_close(chars: &[(usize, char)], from: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut i = from;
    while i < chars.len() {
        let c = chars[i].1;
        match quote {
            Some(q) => {
                if c == '\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '}' => return Some(i),
                _ => {}
            },
        }
        i += 1;
    }
    None
}

fn resolve(inner: &str, var_names: &[&str]) -> Result<Ref, String> {
    if let Some(index) = var_names.iter().position(|n| *n == inner) {
        return Ok(Ref::Var(index));
    }
    let is_bare_name = !inner.contains(['.', '[']);
    if is_bare_name && super::path::Root::from_name(inner).is_none() {
        let known = if var_names.is_empty() {
            "this rule defines no vars".to_string()
        } else {
            format!("this rule's vars are: {}", var_names.join(", "))
        };
        return Err(format!(
            "unknown variable '{inner}' ({known}; event fields are topic, uuid, time, origin, \
             author, data.<path>)"
        ));
    }
    FieldPath::parse(inner).map(Ref::Path)
}

pub fn ref_name(r: &Ref, vars: &[Var]) -> String {
    match r {
        Ref::Path(p) => p.as_str().to_string(),
        Ref::Var(i) => vars.get(*i).map(|v| v.name.clone()).unwrap_or_default(),
    }
}

enum Fetched {
    One(String),
    Many(Vec<String>),
}

fn fetch(r: &Ref, vars: &[Var], event: &Event) -> Result<Fetched, String> {
    let (path, var) = match r {
        Ref::Path(p) => (p, None),
        Ref::Var(i) => {
            let var = vars
                .get(*i)
                .ok_or_else(|| "internal error: variable index out of range".to_string())?;
            (&var.from, Some(var))
        }
    };
    let name = ref_name(r, vars);
    let Some(value) = path.lookup(event) else {
        if let Some(default) = var.and_then(|v| v.default.clone()) {
            return Ok(Fetched::One(default));
        }
        return Err(match var {
            Some(v) => format!("{}: {} is missing from the event", v.name, path),
            None => format!("{path} is missing from the event"),
        });
    };
    if value.is_array() {
        let items = value
            .items()
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let text = scalar_text(item).map_err(|e| format!("{name}[{i}]: {e}"))?;
                check_value(&text, var).map_err(|e| format!("{name}[{i}]: {e}"))?;
                Ok(text)
            })
            .collect::<Result<Vec<_>, String>>()?;
        return Ok(Fetched::Many(items));
    }
    let text = scalar_text(&value).map_err(|e| format!("{name}: {e}"))?;
    check_value(&text, var).map_err(|e| format!("{name}: {e}"))?;
    Ok(Fetched::One(text))
}

fn scalar_text(value: &Val<'_>) -> Result<String, String> {
    match value {
        Val::Str(s) => Ok((*s).to_string()),
        Val::List(_) => Err("is an array".into()),
        Val::Json(v) => match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.as_str().to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Err("is null".into()),
            Value::Array(_) => Err("is a nested array".into()),
            Value::Object(_) => Err(format!("is an object ({}), not a value", value.describe())),
        },
    }
}

/// The safety checks every substituted value passes.
fn check_value(text: &str, var: Option<&Var>) -> Result<(), String> {
    let shown = Val::Str(text).describe();
    if text.contains('\0') {
        return Err(format!("value {shown} contains a NUL byte"));
    }
    if let Some(pattern) = var.and_then(|v| v.pattern.as_ref()) {
        if !pattern.is_match(text) {
            return Err(format!(
                "value {shown} does not match the pattern {:?}",
                pattern.as_str()
            ));
        }
        return Ok(());
    }
    if text.starts_with('-') {
        return Err(format!(
            "value {shown} starts with '-' and could be read as an option (give the variable \
             a pattern that admits it if that is intended)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(data: Value) -> Event {
        Event::from_value(json!({
            "tag": "_lk.archive.master.published", "uuid": "u-1", "format": "1.0",
            "time": "2024-01-01T00:00:00", "data": data
        }))
        .unwrap()
    }

    fn var(name: &str, from: &str, pattern: Option<&str>) -> Var {
        Var {
            name: name.into(),
            from: FieldPath::parse(from).unwrap(),
            pattern: pattern.map(|p| Regex::new(p).unwrap()),
            default: None,
        }
    }

    fn render(t: &str, vars: &[Var], data: Value) -> Result<String, String> {
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        Template::parse(t, &names).unwrap().render(vars, &ev(data))
    }

    fn args(t: &str, data: Value) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        Template::parse(t, &[])
            .unwrap()
            .render_args(&[], &ev(data), &mut out)?;
        Ok(out)
    }

    #[test]
    fn substitutes_paths_vars_and_dollars() {
        let vars = [var("repo", "data.repo", Some("^[a-z]+$"))];
        assert_eq!(
            render(
                "rsync://m/${repo}/ $${HOME} $1 ${topic} ${uuid}",
                &vars,
                json!({"repo": "master"})
            ),
            Ok("rsync://m/master/ ${HOME} $1 _lk.archive.master.published u-1".into())
        );
        assert_eq!(
            render(
                "${data.n}",
                &[],
                serde_json::from_str(r#"{"n": 1.50}"#).unwrap()
            ),
            Ok("1.50".into())
        );
        assert_eq!(
            render("${data.b}", &[], json!({"b": true})),
            Ok("true".into())
        );
        assert_eq!(
            render("${data[\"a}b\"]}", &[], json!({"a}b": "x"})),
            Ok("x".into())
        );
    }

    #[test]
    fn a_value_never_splits_an_argument() {
        assert_eq!(
            args("--x=${data.s}", json!({"s": "a b c"})),
            Ok(vec!["--x=a b c".into()])
        );
        assert_eq!(
            args("${data.s}", json!({"s": "a b"})),
            Ok(vec!["a b".into()])
        );
    }

    #[test]
    fn whole_element_arrays_expand() {
        assert_eq!(
            args("${data.files}", json!({"files": ["a.dsc", "b c.tar"]})),
            Ok(vec!["a.dsc".into(), "b c.tar".into()])
        );
        assert_eq!(args("${data.files}", json!({"files": []})), Ok(vec![]));
        let err = args("x${data.files}", json!({"files": ["a"]})).unwrap_err();
        assert!(err.contains("is an array"), "{err}");
        let err = args("${data.files}", json!({"files": ["-rf"]})).unwrap_err();
        assert!(
            err.contains("data.files[0]") && err.contains("starts with '-'"),
            "{err}"
        );
    }

    #[test]
    fn refusals() {
        let cases = [
            (json!({"v": {"a": 1}}), "is an object"),
            (json!({"v": "a\u{0}b"}), "NUL"),
            (json!({"v": "-rf"}), "starts with '-'"),
            (json!({"v": null}), "is null"),
            (json!({}), "missing"),
            (json!({"v": [[1]]}), "nested array"),
        ];
        for (data, why) in cases {
            let err = render("${data.v}", &[], data.clone()).unwrap_err();
            assert!(err.contains(why), "{data}: {err}");
        }
        let vars = [var("v", "data.v", Some("^[a-z]+$"))];
        let err = render("${v}", &vars, json!({"v": "a;b"})).unwrap_err();
        assert!(err.contains("does not match the pattern"), "{err}");
        let vars = [var("v", "data.v", Some("^-?[a-z]+$"))];
        assert_eq!(render("${v}", &vars, json!({"v": "-ab"})), Ok("-ab".into()));
        let vars = [var("v", "data.v", None)];
        let err = render("${v}", &vars, json!({"v": "-ab"})).unwrap_err();
        assert!(err.starts_with("v: "), "{err}");
        let err = render("${v}", &vars, json!({"v": "a\u{0}"})).unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn defaults_fill_missing_values() {
        let mut v = var("suite", "data.suite", Some("^[a-z]+$"));
        v.default = Some("unstable".into());
        assert_eq!(render("${suite}", &[v], json!({})), Ok("unstable".into()));
    }

    #[test]
    fn nul_in_the_text_is_refused_where_it_is() {
        let e = Template::parse("a$\0@", &[]).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("NUL"), "{}", e.message);
        // A key that holds one is fine: the key is looked up, the value rendered.
        assert!(Template::parse("${data[\"a\0b\"]}", &[]).is_ok());
    }

    #[test]
    fn syntax_errors_carry_offsets() {
        let e = Template::parse("ab${data.x", &[]).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("unterminated"));
        let e = Template::parse("${}", &[]).unwrap_err();
        assert!(e.message.contains("empty"));
        let e = Template::parse("x ${nope}", &["repo"]).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("unknown variable 'nope'") && e.message.contains("repo"));
        let e = Template::parse("${data..x}", &[]).unwrap_err();
        assert!(e.message.contains("empty key"));
    }
}
