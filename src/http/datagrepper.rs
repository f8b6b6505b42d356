//! datagrepper-compatible `/raw` and `/id`, so that existing datagrepper clients
//! (`fedmsg-dg-replay`, fedmsg's backlog, weekly-report scripts) work against a hark relay.
//!
//! Shapes follow datagrepper's reference (`datagrepper/docs/reference.rst`) and its
//! `/raw` answer `{"arguments", "count", "pages", "raw_messages", "total"}`; messages are
//! in the legacy fedmsg shape (`i`, `msg_id`, `topic`, `timestamp` as a float, `msg`,
//! `username`, `crypto`, `signature`, `certificate`, `headers`, `source_name`,
//! `source_version`). A fedmsg envelope is given as stored; a Laniakea event is mapped
//! (`tag` → `topic`, `uuid` → `msg_id`, `data` → `msg`, `time` → `timestamp`, `author`
//! → `username`, the journal seq as `i`) and carries the whole event under `hark`.
//!
//! Time is the relay's receive time. datagrepper's paging is OFFSET paging with a
//! `total`; here a request walks the journal through [`history::page`] and counts up to
//! [`COUNT_LIMIT`] matches (beyond it `total` is a lower bound and `total_exact` is false).

use std::sync::Arc;

use axum::extract::{Query, State as Shared};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::api::Params;
use super::{Failure, State};
use crate::event::{Event, Format};
use crate::history::{self, Found, Query as HistoryQuery};
use crate::journal::Journal;
use crate::topic::TopicPattern;

/// datagrepper's own bounds.
const MAX_ROWS_PER_PAGE: usize = 100;
const DEFAULT_ROWS_PER_PAGE: usize = 25;
/// `end` alone means the 600 seconds before it (datagrepper's table).
const END_ONLY_SPAN_MS: i64 = 600_000;
/// Matches counted for `total` at most; a page further than this is refused.
pub const COUNT_LIMIT: usize = 100_000;

const RAW_PARAMS: &[&str] = &[
    "topic",
    "category",
    "contains",
    "not_topic",
    "not_category",
    "start",
    "end",
    "delta",
    "page",
    "rows_per_page",
    "order",
    "meta",
    "grouped",
    "chrome",
    "size",
    "user",
    "package",
    "agent",
    "not_user",
    "not_package",
    "not_agent",
];
/// Filters on metadata hark does not derive (fedmsg.meta users and packages, agents).
const UNSUPPORTED: &[&str] = &[
    "user",
    "package",
    "agent",
    "not_user",
    "not_package",
    "not_agent",
];

/// A message's datagrepper category: the module segment of a fedmsg topic
/// (`org.fedoraproject.prod.CATEGORY.…`), or the second segment of a Laniakea or hark
/// tag (`_lk.CATEGORY.…`).
pub fn category(topic: &str) -> Option<&str> {
    let segments: Vec<&str> = topic.split('.').collect();
    if topic.starts_with('_') {
        segments.get(1).copied()
    } else {
        segments.get(3).copied()
    }
}

/// The legacy fedmsg message shape of one journaled event.
pub fn message(found: &Found) -> Value {
    let event = &found.event;
    let mut out = match (&event.format, event.body.as_object()) {
        (Format::Fedmsg, Some(body)) => body.clone(),
        _ => laniakea_message(found.entry.seq, event),
    };
    if let Some(Value::Number(n)) = out.get("timestamp") {
        if let Some(f) = n.as_f64() {
            out.insert("timestamp".into(), json!(f));
        }
    }
    out.entry("headers").or_insert_with(|| json!({}));
    out.insert("source_name".into(), json!("hark"));
    out.insert("source_version".into(), json!(env!("CARGO_PKG_VERSION")));
    Value::Object(out)
}

fn laniakea_message(seq: u64, event: &Event) -> Map<String, Value> {
    let timestamp = event
        .time
        .as_deref()
        .and_then(crate::admit::trust::parse_event_time)
        .map(|t| t.timestamp_micros() as f64 / 1e6);
    let signed = event
        .body
        .get("signatures")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty());
    let mut out = Map::new();
    out.insert("i".into(), json!(seq));
    out.insert("msg_id".into(), json!(event.uuid));
    out.insert("topic".into(), json!(event.topic));
    out.insert("timestamp".into(), json!(timestamp));
    out.insert("msg".into(), event.data.clone());
    out.insert("username".into(), json!(event.author));
    out.insert(
        "crypto".into(),
        if signed {
            json!("ed25519")
        } else {
            Value::Null
        },
    );
    out.insert("signature".into(), Value::Null);
    out.insert("certificate".into(), Value::Null);
    out.insert("hark".into(), event.body.clone());
    out
}

/// A `/raw` request, checked.
#[derive(Debug)]
pub struct Raw {
    query: HistoryQuery,
    /// Kept only when `topic` is given too (a category then narrows the topics).
    categories: Vec<String>,
    contains: Vec<String>,
    not_topics: Vec<String>,
    not_categories: Vec<String>,
    page: usize,
    rows_per_page: usize,
    arguments: Value,
}

fn seconds(params: &Params, key: &str) -> Result<Option<f64>, Failure> {
    let value: Option<f64> = params.parsed(key, "seconds since the epoch")?;
    match value {
        Some(v) if !v.is_finite() || v.abs() > 1e12 => {
            Err(Failure::bad_request(format!("{key}={v}: out of range")))
        }
        v => Ok(v),
    }
}

/// A `/raw` query, checked and resolved against `now_ms` (the `delta` parameter).
pub fn raw_request(params: &Params, now_ms: i64) -> Result<Raw, Failure> {
    params.only(RAW_PARAMS)?;
    if let Some(key) = UNSUPPORTED.iter().find(|k| params.all(k).next().is_some()) {
        return Err(Failure::bad_request(format!(
            "{key}: hark derives no users, packages or agents from messages; filter with topic, category or contains"
        )));
    }
    let page: usize = params.parsed("page", "a page number from 1")?.unwrap_or(1);
    if page == 0 {
        return Err(Failure::bad_request("page must be 1 or more"));
    }
    let rows_per_page: usize = params
        .parsed("rows_per_page", "a number of rows")?
        .unwrap_or(DEFAULT_ROWS_PER_PAGE);
    if rows_per_page == 0 || rows_per_page > MAX_ROWS_PER_PAGE {
        return Err(Failure::bad_request(format!(
            "rows_per_page must be from 1 to {MAX_ROWS_PER_PAGE}"
        )));
    }
    if (page - 1).saturating_mul(rows_per_page) >= COUNT_LIMIT {
        return Err(Failure::bad_request(format!(
            "page {page} is beyond the first {COUNT_LIMIT} matches: narrow the query with start/end"
        )));
    }
    let descending = params.descending(true)?;
    let (start, end, delta) = (
        seconds(params, "start")?,
        seconds(params, "end")?,
        seconds(params, "delta")?,
    );
    if delta.is_some_and(|d| d < 0.0) {
        return Err(Failure::bad_request("delta must not be negative"));
    }
    let ms = |s: f64| (s * 1000.0).round() as i64;
    // datagrepper's table of time arguments.
    let (from_ms, to_ms) = match (delta.map(ms), start.map(ms), end.map(ms)) {
        (None, None, None) => (None, None),
        (Some(d), None, None) => (Some(now_ms - d), Some(now_ms)),
        (None, Some(s), None) => (Some(s), Some(now_ms)),
        (Some(d), Some(s), None) => (Some(s), Some(s + d)),
        (None, None, Some(e)) => (Some(e - END_ONLY_SPAN_MS), Some(e)),
        (Some(d), None, Some(e)) => (Some(e - d), Some(e)),
        (_, Some(s), Some(e)) => (Some(s), Some(e)),
    };
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f > t {
            return Err(Failure::bad_request("start is after end"));
        }
    }
    let strings = |key: &str| params.all(key).map(str::to_string).collect::<Vec<_>>();
    let (topics, categories) = (strings("topic"), strings("category"));
    for t in topics.iter().chain(&categories) {
        if t.is_empty() {
            return Err(Failure::bad_request("topic and category must not be empty"));
        }
    }
    // datagrepper topics are exact; categories become patterns when they are the only
    // topic filter, so the topic index plans them.
    let mut patterns = Vec::new();
    for t in &topics {
        patterns.push(literal(t)?);
    }
    if topics.is_empty() {
        for c in &categories {
            for p in [format!("_*.{c}.**"), format!("*.*.*.{c}.**")] {
                patterns.push(
                    TopicPattern::parse(&p)
                        .map_err(|e| Failure::bad_request(format!("category={c:?}: {e}")))?,
                );
            }
        }
    }
    let secs = |v: Option<i64>| v.map(|m| m as f64 / 1000.0);
    let arguments = json!({
        "start": secs(from_ms),
        "end": secs(to_ms),
        "delta": delta,
        "page": page,
        "rows_per_page": rows_per_page,
        "order": if descending { "desc" } else { "asc" },
        "topics": topics,
        "categories": categories,
        "contains": strings("contains"),
        "not_topics": strings("not_topic"),
        "not_categories": strings("not_category"),
        "users": [], "packages": [], "agents": [],
        "not_users": [], "not_packages": [], "not_agents": [],
        "meta": strings("meta"),
        "grouped": false,
    });
    Ok(Raw {
        query: HistoryQuery {
            topics: patterns,
            from_ms,
            to_ms,
            descending,
            ..HistoryQuery::default()
        },
        categories: if topics.is_empty() {
            Vec::new()
        } else {
            categories
        },
        contains: strings("contains"),
        not_topics: strings("not_topic"),
        not_categories: strings("not_category"),
        page,
        rows_per_page,
        arguments,
    })
}

/// An exact topic as a pattern that matches only itself.
fn literal(topic: &str) -> Result<TopicPattern, Failure> {
    match TopicPattern::parse(topic) {
        Ok(p) if p.is_literal() => Ok(p),
        _ => Err(Failure::bad_request(format!(
            "topic={topic:?}: datagrepper topics are exact (for globs use /v1/events)"
        ))),
    }
}

impl Raw {
    /// The checks the index plan cannot do; within a filter one match is enough
    /// (datagrepper's "CNF").
    fn admits(&self, found: &Found) -> bool {
        let topic = found.entry.topic.as_str();
        let cat = category(topic).unwrap_or("");
        if !self.categories.is_empty() && !self.categories.iter().any(|c| c == cat) {
            return false;
        }
        if self.not_topics.iter().any(|t| t == topic)
            || self.not_categories.iter().any(|c| c == cat)
        {
            return false;
        }
        if !self.contains.is_empty() {
            let json = found
                .entry
                .frames
                .last()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(json);
            if !self.contains.iter().any(|c| text.contains(c.as_str())) {
                return false;
            }
        }
        true
    }

    fn answer(&self, journal: &Journal) -> Result<Value, Failure> {
        let skip = (self.page - 1) * self.rows_per_page;
        let (mut total, mut messages, mut after, mut exact) = (0usize, Vec::new(), None, true);
        loop {
            let page =
                history::page(journal, &self.query, after, history::MAX_PAGE).map_err(|e| {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("reading the journal: {e}"),
                    )
                })?;
            for found in page.events.iter().filter(|f| self.admits(f)) {
                if total >= skip && messages.len() < self.rows_per_page {
                    messages.push(message(found));
                }
                total += 1;
            }
            match page.next {
                None => break,
                Some(n) => after = Some(n),
            }
            if total >= COUNT_LIMIT {
                exact = false;
                break;
            }
        }
        Ok(json!({
            "arguments": self.arguments,
            "count": messages.len(),
            "pages": total.div_ceil(self.rows_per_page),
            "raw_messages": messages,
            "total": total,
            "total_exact": exact,
        }))
    }
}

pub async fn raw(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Failure> {
    let request = raw_request(&Params(params), chrono::Utc::now().timestamp_millis())?;
    Ok(Json(state.with_journal(move |j| request.answer(j)).await?))
}

/// `/id?id=MSG_ID`: the message, or 404.
pub async fn id(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Failure> {
    let params = Params(params);
    params.only(&["id", "is_raw", "size", "chrome"])?;
    let Some(id) = params.one("id")?.map(str::to_string) else {
        return Err(Failure::bad_request(
            "id: the message id is required (/id?id=MSG_ID)",
        ));
    };
    let found = state
        .with_journal({
            let id = id.clone();
            move |j| {
                history::by_uuid(j, &id).map_err(|e| {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("reading the journal: {e}"),
                    )
                })
            }
        })
        .await?;
    match found.first() {
        Some(f) => Ok(Json(message(f))),
        None => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no message with id {id}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)]) -> Params {
        Params(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn time_arguments_follow_datagrepper_s_table() {
        let now = 1_000_000_000;
        let r = |q: &[(&str, &str)]| {
            let r = raw_request(&params(q), now).expect("valid");
            (r.query.from_ms, r.query.to_ms)
        };
        assert_eq!(r(&[]), (None, None));
        assert_eq!(r(&[("delta", "60")]), (Some(now - 60_000), Some(now)));
        assert_eq!(r(&[("start", "100")]), (Some(100_000), Some(now)));
        assert_eq!(
            r(&[("start", "100"), ("delta", "10")]),
            (Some(100_000), Some(110_000))
        );
        assert_eq!(r(&[("end", "1000")]), (Some(400_000), Some(1_000_000)));
        assert_eq!(
            r(&[("end", "1000"), ("delta", "10")]),
            (Some(990_000), Some(1_000_000))
        );
        assert_eq!(
            r(&[("start", "1"), ("end", "2"), ("delta", "99")]),
            (Some(1000), Some(2000))
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        for (q, says) in [
            (vec![("rows_per_page", "101")], "rows_per_page"),
            (vec![("rows_per_page", "x")], "rows_per_page"),
            (vec![("page", "0")], "page"),
            (vec![("order", "up")], "order"),
            (vec![("start", "soon")], "start"),
            (vec![("start", "10"), ("end", "5")], "start is after end"),
            (vec![("user", "ralph")], "user"),
            (vec![("topic", "a.*")], "exact"),
            (vec![("frobnicate", "1")], "unknown parameter"),
        ] {
            let err = raw_request(&params(&q), 0).expect_err("refused");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(says), "{q:?}: {}", err.message);
        }
    }

    #[test]
    fn categories_of_fedmsg_and_laniakea_topics() {
        assert_eq!(
            category("org.fedoraproject.prod.bodhi.update.comment"),
            Some("bodhi")
        );
        assert_eq!(category("_lk.archive.package-upload"), Some("archive"));
        assert_eq!(category("short"), None);
    }
}
