//! `POST /v1/hooks/NAME`: forge webhooks as signed events.
//!
//! Each hook (`http.hooks.NAME`) has its own secret and kind: GitLab and Salsa send the
//! secret itself in `X-Gitlab-Token`; GitHub, Forgejo and Gitea sign the body with
//! HMAC-SHA256 in `X-Hub-Signature-256: sha256=<hex>`; a generic hook does the same in a
//! header of its choice. Every comparison is constant-time. A payload that verifies
//! becomes the event `_hark.hook.NAME.<event kind>` with the payload as `data`, signed
//! with the hook's own key, and goes through the relay's submit path like any submission:
//! the hook's signer needs the relay's trust and a grant, and rules say `signed_by` it.
//! The event's uuid is derived from the forge's delivery id when it sends one, so a
//! delivery the forge retries is a duplicate, not a second event.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::listen::Peer;
use super::{submit, Failure, State};
use crate::config::{HookConfig, HookKind};
use crate::event::keys::{read_signing_key, SigningKey};

/// One configured hook, loaded.
pub struct Hook {
    pub name: String,
    pub kind: HookKind,
    secret: Vec<u8>,
    /// The header carrying a generic hook's signature.
    header: String,
    pub key: SigningKey,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Load every hook's secret and key; an unreadable or empty one is an error at start.
pub fn load(hooks: &BTreeMap<String, HookConfig>) -> anyhow::Result<Vec<Hook>> {
    let mut out = Vec::new();
    for (name, cfg) in hooks {
        if !segment_ok(name) {
            anyhow::bail!("http.hooks.{name}: a hook name is one topic segment of [a-z0-9_-]");
        }
        let secret = read_secret(&cfg.secret_file)
            .map_err(|e| anyhow::anyhow!("http.hooks.{name}.secret_file: {e}"))?;
        let key = read_signing_key(&cfg.key)
            .map_err(|e| anyhow::anyhow!("http.hooks.{name}.key: {e}"))?;
        out.push(Hook::new(
            name,
            cfg.kind,
            secret,
            cfg.header.as_deref(),
            key,
        ));
    }
    Ok(out)
}

fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The secret is the file's first line, as an admin writes it with `echo`.
    let line: Vec<u8> = text
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default()
        .to_vec();
    let line = line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "{}: empty; write the hook's secret on its first line",
            path.display()
        ));
    }
    Ok(line)
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A forge's event name as one topic segment: `Push Hook` → `push-hook`.
pub fn kind_segment(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.trim().chars().take(64) {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Hook {
    /// A hook with its secret and key already read; `header` is a generic hook's signature
    /// header (default `X-Hub-Signature-256`).
    pub fn new(
        name: &str,
        kind: HookKind,
        secret: Vec<u8>,
        header: Option<&str>,
        key: SigningKey,
    ) -> Hook {
        Hook {
            name: name.to_string(),
            kind,
            secret,
            header: header.unwrap_or("X-Hub-Signature-256").to_ascii_lowercase(),
            key,
        }
    }

    /// Whether the request carries this hook's secret (constant time).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        match self.kind {
            HookKind::Gitlab => {
                let Some(token) = header(headers, "x-gitlab-token") else {
                    return false;
                };
                // Digests have equal length, so the comparison does not leak the secret's.
                let (a, b) = (
                    Sha256::digest(token.as_bytes()),
                    Sha256::digest(&self.secret),
                );
                a.ct_eq(&b).into()
            }
            HookKind::Github | HookKind::Forgejo | HookKind::Gitea | HookKind::Hmac => {
                let name = match self.kind {
                    HookKind::Hmac => self.header.as_str(),
                    _ => "x-hub-signature-256",
                };
                let Some(value) = header(headers, name) else {
                    return false;
                };
                let hex = value.trim().strip_prefix("sha256=").unwrap_or(value.trim());
                let Some(signature) = decode_hex(hex) else {
                    return false;
                };
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
                    return false;
                };
                mac.update(body);
                mac.verify_slice(&signature).is_ok()
            }
        }
    }

    /// The forge's name for what happened (`push`, `merge_request`, `pull_request`...).
    pub fn event_kind(&self, headers: &HeaderMap, payload: &Value) -> String {
        let raw = match self.kind {
            // GitLab's header says "Push Hook"; the body's object_kind says "push".
            HookKind::Gitlab => payload
                .get("object_kind")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    header(headers, "x-gitlab-event")
                        .map(|e| e.trim_end_matches(" Hook").to_string())
                }),
            HookKind::Github => header(headers, "x-github-event").map(str::to_string),
            HookKind::Forgejo => header(headers, "x-forgejo-event")
                .or_else(|| header(headers, "x-gitea-event"))
                .map(str::to_string),
            HookKind::Gitea => header(headers, "x-gitea-event").map(str::to_string),
            HookKind::Hmac => header(headers, "x-hook-event")
                .map(str::to_string)
                .or_else(|| {
                    payload
                        .get("event")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }),
        };
        kind_segment(raw.as_deref().unwrap_or("unknown"))
    }

    /// The forge's id of this delivery, which stays the same when it retries.
    fn delivery(&self, headers: &HeaderMap) -> Option<String> {
        [
            "x-gitlab-event-uuid",
            "x-github-delivery",
            "x-gitea-delivery",
            "x-forgejo-delivery",
            "x-hook-delivery",
        ]
        .iter()
        .find_map(|h| header(headers, h))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
    }

    /// The signed event for a verified payload.
    pub fn event(&self, headers: &HeaderMap, payload: Value) -> Result<Value, Failure> {
        let tag = format!(
            "_hark.hook.{}.{}",
            self.name,
            self.event_kind(headers, &payload)
        );
        let mut event = crate::bus::publish::unsigned_event(&tag, payload, None, None);
        if let (Some(delivery), Some(obj)) = (self.delivery(headers), event.as_object_mut()) {
            let digest = Sha256::digest(format!("hark hook {}\n{delivery}", self.name).as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
            obj.insert("uuid".into(), Value::String(id.to_string()));
        }
        crate::event::sign::sign(&mut event, &self.key).map_err(|e| match e {
            // The forge's own payload holds it (1e400): its fault, not the relay's.
            crate::event::sign::SignError::NonFinite(_) => {
                Failure::bad_request(format!("the payload cannot be an event: {e}"))
            }
            _ => Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("signing the hook's event: {e}"),
            ),
        })?;
        Ok(event)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub async fn hook(
    Shared(state): Shared<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let deadline = Instant::now() + state.opts.request_timeout;
    if let Err(wait) = state.limiter.take(peer.client) {
        state.metrics.inc("hark_http_rate_limited_total", &[]);
        return submit::too_many(wait);
    }
    let Some(hook) = state.opts.hooks.iter().find(|h| h.name == name) else {
        return Failure::new(
            StatusCode::NOT_FOUND,
            format!("no hook {name:?} (http.hooks)"),
        )
        .into_response();
    };
    let bytes = match submit::read_body(body, state.opts.max_body, deadline).await {
        Ok(b) => b,
        Err(f) => return f.into_response(),
    };
    if !hook.verify(&headers, &bytes) {
        state
            .metrics
            .inc("hark_http_hooks_refused_total", &[("hook", &hook.name)]);
        tracing::warn!(hook = %hook.name, client = %peer.client, "webhook refused: missing or wrong secret");
        return Failure::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong secret for this hook",
        )
        .into_response();
    }
    let unusable = |f: Failure| {
        if f.status == StatusCode::BAD_REQUEST {
            state
                .metrics
                .inc("hark_http_hooks_unusable_total", &[("hook", &hook.name)]);
        }
        tracing::warn!(hook = %hook.name, client = %peer.client, "webhook refused: {}", f.message);
        f.into_response()
    };
    let payload: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return unusable(Failure::bad_request(format!(
                "the payload is not JSON: {e}"
            )))
        }
    };
    let event = match hook.event(&headers, payload) {
        Ok(e) => e,
        Err(f) => return unusable(f),
    };
    let frame = match crate::event::canonical::to_vec(&event) {
        Ok(f) => f,
        Err(e) => {
            return Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}"))
                .into_response()
        }
    };
    submit::relay_frame(&state, frame, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_become_one_topic_segment() {
        assert_eq!(kind_segment("Push Hook"), "push-hook");
        assert_eq!(kind_segment("merge_request"), "merge_request");
        assert_eq!(kind_segment("../../x"), "x");
        assert_eq!(kind_segment("  "), "unknown");
        assert_eq!(kind_segment("a.b*c"), "a-b-c");
    }

    fn hook(kind: HookKind, secret: &str) -> Hook {
        Hook {
            name: "h".into(),
            kind,
            secret: secret.as_bytes().to_vec(),
            header: "x-hub-signature-256".into(),
            key: SigningKey::generate("h-hook"),
        }
    }

    #[test]
    fn github_s_documented_hmac_example_verifies() {
        // "Validating webhook deliveries", GitHub's documentation: this secret and body
        // give this signature.
        let h = hook(HookKind::Github, "It's a Secret to Everybody");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        assert!(h.verify(&headers, b"Hello, World!"));
        assert!(!h.verify(&headers, b"Hello, World?"));
        assert!(!hook(HookKind::Github, "another secret").verify(&headers, b"Hello, World!"));
        assert!(!h.verify(&HeaderMap::new(), b"Hello, World!"));
    }

    #[test]
    fn gitlab_tokens_must_match_exactly() {
        let h = hook(HookKind::Gitlab, "s3cret");
        let with = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-gitlab-token", token.parse().unwrap());
            headers
        };
        assert!(h.verify(&with("s3cret"), b"{}"));
        for wrong in ["s3cre", "s3cret ", "S3CRET", ""] {
            assert!(!h.verify(&with(wrong), b"{}"), "{wrong:?}");
        }
        assert!(!h.verify(&HeaderMap::new(), b"{}"));
    }

    #[test]
    fn hex_decoding_refuses_garbage() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é0"), None);
    }
}
