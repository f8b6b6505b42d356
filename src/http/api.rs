//! Routes of the HTTP API, and the native read-only ones: `/healthz`, `/readyz` and `/v1/events`
//! (keyset paginated history with the filters of `hark history`).

use std::sync::Arc;

use axum::extract::{Query, State as Shared};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{datagrepper, Failure, State};
use crate::history::{self, Query as HistoryQuery};
use crate::topic::TopicPattern;

/// Most events one `/v1/events` page returns.
pub const MAX_LIMIT: usize = history::MAX_PAGE;
const DEFAULT_LIMIT: usize = 100;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(super::page::page))
        .route("/healthz", get(healthz))
        .route("/v1/stream", get(super::stream::stream))
        .route("/readyz", get(readyz))
        .route("/v1/events", get(events))
        .route("/raw", get(datagrepper::raw))
        .route("/raw/", get(datagrepper::raw))
        .route("/id", get(datagrepper::id))
        .route("/id/", get(datagrepper::id))
        .route("/v1/submit", post(super::submit::submit))
        .route("/v1/hooks/{name}", post(super::hooks::hook))
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                "no such endpoint (see docs/formats.md, HTTP API)",
            )
        })
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(Shared(state): Shared<Arc<State>>) -> Response {
    if state.is_ready() {
        Json(json!({"ready": true, "relay": state.opts.relay})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "relay": state.opts.relay})),
        )
            .into_response()
    }
}

/// Query parameters in order, repeatable (`topic=a&topic=b`).
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The one value of `key`; given twice is an error.
    pub fn one<'a>(&'a self, key: &'a str) -> Result<Option<&'a str>, Failure> {
        let mut values = self.all(key);
        let first = values.next();
        if values.next().is_some() {
            return Err(Failure::bad_request(format!("{key}: give it once")));
        }
        Ok(first)
    }

    pub fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, Failure> {
        match self.one(key)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| Failure::bad_request(format!("{key}={text:?}: expected {what}"))),
        }
    }

    /// Every key is one of `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), Failure> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(Failure::bad_request(format!(
                "unknown parameter {k:?} (known: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// `order=asc|desc`; `default_desc` when absent.
    pub fn descending(&self, default_desc: bool) -> Result<bool, Failure> {
        match self.one("order")? {
            None => Ok(default_desc),
            Some("asc") => Ok(false),
            Some("desc") => Ok(true),
            Some(other) => Err(Failure::bad_request(format!(
                "order={other:?}: expected asc or desc"
            ))),
        }
    }
}

fn time_param(params: &Params, key: &str) -> Result<Option<i64>, Failure> {
    params
        .one(key)?
        .map(|t| {
            crate::cli::history::parse_time(t)
                .map_err(|e| Failure::bad_request(format!("{key}: {e}")))
        })
        .transpose()
}

const EVENTS_PARAMS: &[&str] = &[
    "topic", "since", "start", "end", "signer", "contains", "where", "after", "limit", "order",
];

/// The `/v1/events` query: the filters of `hark history`.
pub fn events_query(params: &Params) -> Result<(HistoryQuery, Option<u64>, usize), Failure> {
    params.only(EVENTS_PARAMS)?;
    let topics = params
        .all("topic")
        .map(|t| {
            TopicPattern::parse(t).map_err(|e| Failure::bad_request(format!("topic={t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let since = params
        .one("since")?
        .map(|t| crate::duration::parse(t).map_err(|e| Failure::bad_request(format!("since: {e}"))))
        .transpose()?;
    let start = time_param(params, "start")?;
    if since.is_some() && start.is_some() {
        return Err(Failure::bad_request("give since or start, not both"));
    }
    let from_ms = since
        .map(|d| {
            chrono::Utc::now().timestamp_millis() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
        .or(start);
    let condition = params
        .one("where")?
        .map(|text| {
            crate::rules::compile::parse_condition("where", text)
                .map_err(|e| Failure::bad_request(e.to_string()))
        })
        .transpose()?;
    let limit = params
        .parsed::<usize>("limit", "a number of events")?
        .unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Failure::bad_request(format!(
            "limit={limit}: from 1 to {MAX_LIMIT}"
        )));
    }
    let query = HistoryQuery {
        topics,
        from_ms,
        to_ms: time_param(params, "end")?,
        signers: params.all("signer").map(str::to_string).collect(),
        contains: params.all("contains").map(str::to_string).collect(),
        condition,
        descending: params.descending(false)?,
    };
    Ok((query, params.parsed::<u64>("after", "a seq")?, limit))
}

/// One found event as its recording line (docs/formats.md), as JSON.
pub fn record_value(found: &history::Found) -> Value {
    serde_json::from_str(&crate::cli::history::record_line(found)).unwrap_or(Value::Null)
}

async fn events(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, Failure> {
    let (query, after, limit) = events_query(&Params(params))?;
    let page = state
        .with_journal(move |journal| {
            history::page(journal, &query, after, limit).map_err(|e| {
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading the journal: {e}"),
                )
            })
        })
        .await?;
    let events: Vec<Value> = page.events.iter().map(record_value).collect();
    Ok(Json(json!({
        "events": events,
        "next": page.next,
        "examined": page.examined,
    })))
}
