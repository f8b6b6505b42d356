//! The rule file as written: serde types that mirror the YAML, with source positions kept
//! (`Spanned`) wherever a later check may need to point at a line and column. Unknown and
//! duplicate keys are refused here, by serde-saphyr, with their position.
//!
//! Nothing here interprets values; `compile` turns these into typed rules.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::rule::{OnBusy, StdinMode};

/// The whole file. Top-level keys starting with `x-` are ignored, so that they can hold
/// YAML anchors shared by several rules (`x-defaults: &run {...}`).
#[derive(Debug, Default)]
pub struct RawFile {
    pub rules: Vec<Spanned<RawRule>>,
    pub tests: Vec<Spanned<RawTest>>,
    pub pools: Option<SpannedMap<Spanned<RawPool>>>,
}

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with rules, tests and pools")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFile, A::Error> {
                const FIELDS: &[&str] = &["rules", "tests", "pools", "x-..."];
                // Repeated keys never get here: serde-saphyr refuses them first.
                let mut file = RawFile::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "rules" => file.rules = map.next_value()?,
                        "tests" => file.tests = map.next_value()?,
                        "pools" => file.pools = map.next_value()?,
                        k if k.starts_with("x-") => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        other => return Err(de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(file)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "match")]
    pub match_: Spanned<RawMatch>,
    #[serde(default)]
    pub vars: Option<SpannedMap<Spanned<RawVar>>>,
    pub run: Spanned<RawRun>,
    #[serde(default)]
    pub coalesce: Option<Spanned<RawCoalesce>>,
    #[serde(default)]
    pub concurrency: Option<Spanned<RawConcurrency>>,
    #[serde(default)]
    pub retry: Option<Spanned<RawRetry>>,
    #[serde(default)]
    pub fallback: Option<Spanned<RawFallback>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub every: Spanned<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub topic: Spanned<StrOrList>,
    #[serde(default)]
    pub signed_by: Option<Spanned<StrOrList>>,
    #[serde(default, rename = "where")]
    pub where_: Option<Spanned<CondMap>>,
    #[serde(default)]
    pub not: Option<Spanned<CondMap>>,
    #[serde(default)]
    pub any: Option<Spanned<Vec<Spanned<CondMap>>>>,
    #[serde(default)]
    pub all: Option<Spanned<Vec<Spanned<CondMap>>>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVar {
    pub from: Spanned<String>,
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    #[serde(default)]
    pub default: Option<Spanned<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub command: Spanned<StrOrList>,
    #[serde(default)]
    pub shell: Option<Spanned<bool>>,
    #[serde(default)]
    pub env: Option<SpannedMap<Spanned<String>>>,
    #[serde(default)]
    pub workdir: Option<Spanned<String>>,
    #[serde(default)]
    pub stdin: Option<Spanned<StdinMode>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub grace: Option<Spanned<String>>,
    #[serde(default)]
    pub unit: Option<Spanned<RawUnit>>,
}

/// `run.unit`: run the job as a transient systemd unit (`rules/unit.rs` checks it).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnit {
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    #[serde(default)]
    pub slice: Option<Spanned<String>>,
    #[serde(default)]
    pub properties: Option<SpannedMap<Spanned<Value>>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoalesce {
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    pub quiet: Spanned<String>,
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    #[serde(default)]
    pub limit: Option<Spanned<u32>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub on_busy: Option<OnBusy>,
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Spanned<u32>,
    #[serde(default)]
    pub backoff: Option<Spanned<String>>,
    #[serde(default)]
    pub max_backoff: Option<Spanned<String>>,
    #[serde(default)]
    pub on_exit: Option<Vec<i32>>,
    #[serde(default)]
    pub on_timeout: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub limit: Spanned<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: Spanned<String>,
    pub event: Spanned<Value>,
    pub fires: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub argv: Option<SpannedMap<Spanned<Vec<String>>>>,
    #[serde(default)]
    pub env: Option<SpannedMap<Spanned<std::collections::BTreeMap<String, String>>>>,
    #[serde(default)]
    pub workdir: Option<SpannedMap<Spanned<String>>>,
    #[serde(default)]
    pub refuses: Option<SpannedMap<Spanned<String>>>,
}

/// A string or a list of strings.
#[derive(Debug)]
pub enum StrOrList {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for StrOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StrOrList, E> {
                Ok(StrOrList::One(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(StrOrList::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping kept in file order, keys with their positions. serde-saphyr already refuses
/// duplicate keys, so this only has to remember order and positions.
#[derive(Debug)]
pub struct SpannedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpannedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = SpannedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<V>()?;
                    entries.push((key, value));
                }
                Ok(SpannedMap(entries))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// A condition map: every entry must hold. Keys are field paths, or `all`/`any`/`not`.
#[derive(Debug)]
pub struct CondMap(pub Vec<(Spanned<String>, CondEntry)>);

#[derive(Debug)]
pub enum CondEntry {
    All(Spanned<Vec<Spanned<CondMap>>>),
    Any(Spanned<Vec<Spanned<CondMap>>>),
    Not(Spanned<CondMap>),
    Field(Spanned<FieldSpec>),
}

impl<'de> Deserialize<'de> for CondMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CondMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of field paths (data.x: value) or all/any/not")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CondMap, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let entry = match key.value.as_str() {
                        "all" => CondEntry::All(map.next_value()?),
                        "any" => CondEntry::Any(map.next_value()?),
                        "not" => CondEntry::Not(map.next_value()?),
                        _ => CondEntry::Field(map.next_value()?),
                    };
                    entries.push((key, entry));
                }
                Ok(CondMap(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a field path is tested against: a scalar (equality) or a map of operators.
#[derive(Debug)]
pub enum FieldSpec {
    Scalar(Value),
    Ops(Box<RawOps>),
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a scalar to compare with, or a map of operators such as {in: [a, b]} \
                     (a bare list is ambiguous: write {in: [...]} or {eq: [...]})",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::String(v.to_string())))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::String(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldSpec, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| FieldSpec::Scalar(Value::Number(n)))
                    .ok_or_else(|| E::custom("expected a finite number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::String(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Scalar(Value::Null))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                RawOps::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|ops| FieldSpec::Ops(Box::new(ops)))
            }
        }
        d.deserialize_any(V)
    }
}

/// For operands where `null` is a value: serde would read `eq: null` as "not given".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Operators on one field; every one given must hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    #[serde(default, deserialize_with = "present")]
    pub eq: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub ne: Option<Spanned<Value>>,
    #[serde(default, rename = "in")]
    pub in_: Option<Spanned<Vec<Spanned<Value>>>>,
    #[serde(default)]
    pub not_in: Option<Spanned<Vec<Spanned<Value>>>>,
    #[serde(default)]
    pub glob: Option<Spanned<StrOrList>>,
    #[serde(default)]
    pub regex: Option<Spanned<String>>,
    #[serde(default)]
    pub exists: Option<Spanned<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub contains: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub gt: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub ge: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub lt: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub le: Option<Spanned<Value>>,
    #[serde(default)]
    pub dpkg_gt: Option<Spanned<String>>,
    #[serde(default)]
    pub dpkg_ge: Option<Spanned<String>>,
    #[serde(default)]
    pub dpkg_lt: Option<Spanned<String>>,
    #[serde(default)]
    pub dpkg_le: Option<Spanned<String>>,
    #[serde(default)]
    pub dpkg_eq: Option<Spanned<String>>,
}
