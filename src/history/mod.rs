//! History queries over a journal file: the relay's own journal, or one `hark record --db`
//! writes (same format). Shared by `hark history` and the relay's HTTP API.
//!
//! A query is topic globs, a receive-time range, signers, substrings of the JSON and a
//! condition in the rules' `where` syntax (compiled by the rules engine, evaluated by
//! [`Condition::holds`]). Pages are keyset paginated on the journal seq: a page answers
//! the rows past a cursor in the query's order and gives the cursor to continue from.
//!
//! The plan keeps one page's work bounded whatever the journal's size: time becomes a
//! seq span through the time index; a topic glob becomes the distinct topics it matches
//! (skipped through the topic index) and one index walk per topic, merged in seq order;
//! signers, `contains` and `where` are checked on the rows walked, at most
//! [`SCAN_BUDGET`] per page (a page may then come back short, with a cursor).
//!
//! Everything here blocks on SQLite: call it from a plain thread or `spawn_blocking`.

use crate::event::Event;
use crate::journal::{Entry, Journal, JournalError, Scan};
use crate::rules::predicate::Condition;
use crate::topic::TopicPattern;

/// Rows one page examines at most before it returns what it found and a cursor.
pub const SCAN_BUDGET: usize = 4096;
/// Largest page a caller may ask for.
pub const MAX_PAGE: usize = 1000;
/// Rows fetched per topic walk and round when filters may drop rows.
const BATCH: usize = 256;
/// A glob matching more distinct topics than this is checked row by row on one walk.
const MAX_TOPIC_WALKS: usize = 64;
/// Distinct topics enumerated under one literal prefix at most.
const MAX_DISTINCT: usize = 4096;

/// What to find. Every given filter must hold; within `topics` and `signers` one match
/// is enough.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub topics: Vec<TopicPattern>,
    /// Inclusive bounds on the receive time, milliseconds since the Unix epoch.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Names of signatures the event carries (a journaled event's were verified by the
    /// relay before it was journaled).
    pub signers: Vec<String>,
    /// Substrings of the event's JSON text (datagrepper's `contains`).
    pub contains: Vec<String>,
    pub condition: Option<Condition>,
    /// Newest first.
    pub descending: bool,
}

/// One event found.
#[derive(Debug, Clone)]
pub struct Found {
    pub entry: Entry,
    /// Parsed from the frames, with `signers` set to the signature names it carries.
    pub event: Event,
}

/// One page of answers.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Found>,
    /// Pass as `after` for the next page; `None` when the query is answered in full.
    pub next: Option<u64>,
    /// Rows walked for this page.
    pub examined: usize,
    /// Rows whose frames did not parse as an event (skipped).
    pub unreadable: usize,
}

impl Query {
    fn filters_rows(&self) -> bool {
        !self.signers.is_empty() || !self.contains.is_empty() || self.condition.is_some()
    }

    fn admits(&self, entry: &Entry, event: &Event) -> bool {
        if !self.topics.is_empty() && !self.topics.iter().any(|p| p.matches(&entry.topic)) {
            return false;
        }
        if !self.signers.is_empty() && !event.signers.iter().any(|s| self.signers.contains(s)) {
            return false;
        }
        if !self.contains.is_empty() {
            let json = entry.frames.last().map(Vec::as_slice).unwrap_or_default();
            if !self.contains.iter().all(|c| contains(json, c.as_bytes())) {
                return false;
            }
        }
        self.condition.as_ref().is_none_or(|c| c.holds(event))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The event in a journaled row: `[topic, json]` as published, or `[json]`.
pub fn parse_entry(entry: &Entry) -> Option<Event> {
    let mut event = match entry.frames.len() {
        1 => Event::from_submission(entry.frames[0].clone()).ok()?,
        _ => Event::from_frames(entry.frames.clone()).ok()?,
    };
    event.signers = signature_names(&event);
    Some(event)
}

/// The names under a Laniakea event's `signatures`, sorted.
pub fn signature_names(event: &Event) -> Vec<String> {
    let mut names: Vec<String> = event
        .body
        .get("signatures")
        .and_then(|s| s.as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The walks a page merges: one per exact topic, or one over every row.
enum Walks {
    Nothing,
    All,
    Topics(Vec<String>),
}

fn plan_topics(journal: &Journal, topics: &[TopicPattern]) -> Result<Walks, JournalError> {
    if topics.is_empty() {
        return Ok(Walks::All);
    }
    let mut exact: Vec<String> = Vec::new();
    for pattern in topics {
        if pattern.is_literal() {
            exact.push(pattern.as_str().to_string());
            continue;
        }
        let Some(found) = journal.topics_with_prefix(&pattern.literal_prefix(), MAX_DISTINCT)?
        else {
            return Ok(Walks::All);
        };
        exact.extend(found.into_iter().filter(|t| pattern.matches(t)));
        if exact.len() > MAX_TOPIC_WALKS {
            return Ok(Walks::All);
        }
    }
    exact.sort();
    exact.dedup();
    Ok(match exact.len() {
        0 => Walks::Nothing,
        n if n > MAX_TOPIC_WALKS => Walks::All,
        _ => Walks::Topics(exact),
    })
}

/// One page of `query`: up to `limit` (at most [`MAX_PAGE`]) events past the seq `after`
/// in the query's order, on one read snapshot of the journal.
pub fn page(
    journal: &Journal,
    query: &Query,
    after: Option<u64>,
    limit: usize,
) -> Result<Page, JournalError> {
    journal.snapshot(|j| page_in_snapshot(j, query, after, limit.clamp(1, MAX_PAGE)))
}

fn page_in_snapshot(
    journal: &Journal,
    query: &Query,
    after: Option<u64>,
    limit: usize,
) -> Result<Page, JournalError> {
    let mut out = Page::default();
    // The seq span that can hold the time range; rows in it are still checked by time.
    let span = if query.from_ms.is_some() || query.to_ms.is_some() {
        let from = query.from_ms.unwrap_or(i64::MIN);
        let to = query.to_ms.unwrap_or(i64::MAX);
        match journal.seqs_for_time(from, to)? {
            Some(span) => span,
            None => return Ok(out),
        }
    } else {
        (1, u64::MAX)
    };
    let (mut cursor, bound) = if query.descending {
        let start = span.1.saturating_add(1);
        (after.map_or(start, |a| a.min(start)), span.0)
    } else {
        let start = span.0.saturating_sub(1);
        (after.map_or(start, |a| a.max(start)), span.1)
    };
    let walks = match plan_topics(journal, &query.topics)? {
        Walks::Nothing => return Ok(out),
        Walks::All => vec![None],
        Walks::Topics(t) => t.into_iter().map(Some).collect(),
    };
    let batch = if query.filters_rows() {
        BATCH
    } else {
        limit.min(BATCH)
    };
    let before = |a: u64, b: u64| if query.descending { a > b } else { a < b };
    loop {
        let mut rows: Vec<Entry> = Vec::new();
        // The furthest seq every walk has reached: rows up to it are complete.
        let mut frontier: Option<u64> = None;
        for topic in &walks {
            let got = journal.scan(&Scan {
                descending: query.descending,
                after: Some(cursor),
                bound: Some(bound),
                topic: topic.as_deref(),
                from_ms: query.from_ms,
                to_ms: query.to_ms,
                limit: batch,
            })?;
            if got.len() == batch {
                if let Some(last) = got.last().map(|e| e.seq) {
                    frontier =
                        Some(frontier.map_or(last, |f| if before(last, f) { last } else { f }));
                }
            }
            rows.extend(got);
        }
        if let Some(f) = frontier {
            rows.retain(|e| e.seq == f || before(e.seq, f));
        }
        rows.sort_by(|a, b| {
            if query.descending {
                b.seq.cmp(&a.seq)
            } else {
                a.seq.cmp(&b.seq)
            }
        });
        for entry in rows {
            out.examined += 1;
            let seq = entry.seq;
            let Some(event) = parse_entry(&entry) else {
                out.unreadable += 1;
                continue;
            };
            if query.admits(&entry, &event) {
                out.events.push(Found { entry, event });
                if out.events.len() == limit {
                    out.next = Some(seq);
                    return Ok(out);
                }
            }
        }
        let Some(f) = frontier else {
            return Ok(out);
        };
        cursor = f;
        if out.examined >= SCAN_BUDGET {
            out.next = Some(f);
            return Ok(out);
        }
    }
}

/// Every event with this uuid (Laniakea `uuid` or fedmsg `msg_id`), newest first, through
/// the journal's per-row uuid filters ([`Journal::with_uuid`]): an exact uuid index cost
/// every append more than lookups are worth.
pub fn by_uuid(journal: &Journal, uuid: &str) -> Result<Vec<Found>, JournalError> {
    Ok(journal
        .with_uuid(uuid)?
        .into_iter()
        .filter_map(|entry| parse_entry(&entry).map(|event| Found { entry, event }))
        .collect())
}

#[cfg(test)]
mod tests;
