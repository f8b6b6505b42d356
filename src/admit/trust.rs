//! The trust policy: signatures against the trusted keyring, per-signer topic grants,
//! unsigned events, and freshness of `time`. Stateless and cheap to clone, so the relay's
//! verification workers and the daemon's intake thread share it. Loading the keyring from
//! the trusted directory lives here too, for every command that checks signatures.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use tracing::warn;

use super::Refusal;
use crate::config::TrustConfig;
use crate::event::keys::{KeyError, Keyring};
use crate::event::openpgp::{self, OpenPgpKeyring, Problem};
use crate::event::{sign, Event};
use crate::topic::TopicPattern;

#[derive(Debug, Clone)]
struct Grant {
    signer: String,
    topics: Vec<TopicPattern>,
}

/// Signatures, grants, unsigned events and freshness. Cheap to clone; shared by workers.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keyring: Keyring,
    /// Certificates are large (Debian's keyring holds about a thousand): shared, not copied.
    openpgp: std::sync::Arc<OpenPgpKeyring>,
    grants: Vec<Grant>,
    allow_unsigned: bool,
    max_age: Duration,
    max_future: Duration,
}

/// A grant given on the command line: `SIGNER=GLOB[,GLOB...]`.
pub fn parse_grant(text: &str) -> Result<(String, Vec<String>), String> {
    let (signer, globs) = text
        .split_once('=')
        .ok_or_else(|| format!("grant {text:?} must look like SIGNER=GLOB[,GLOB...]"))?;
    if signer.is_empty() || globs.is_empty() {
        return Err(format!(
            "grant {text:?} must look like SIGNER=GLOB[,GLOB...]"
        ));
    }
    Ok((
        signer.to_string(),
        globs.split(',').map(str::to_string).collect(),
    ))
}

impl TrustPolicy {
    pub fn new(
        keyring: Keyring,
        grants: &[(String, Vec<String>)],
        cfg: &TrustConfig,
    ) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for (signer, globs) in grants {
            let topics = globs
                .iter()
                .map(|g| TopicPattern::parse(g).map_err(|e| format!("grant for {signer:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(Grant {
                signer: signer.clone(),
                topics,
            });
        }
        let mut pgp = OpenPgpKeyring::default();
        for (name, path) in &cfg.openpgp_keyrings {
            pgp.add_file(path, name)?;
        }
        Ok(TrustPolicy {
            keyring,
            openpgp: std::sync::Arc::new(pgp),
            grants: compiled,
            allow_unsigned: cfg.allow_unsigned,
            max_age: cfg.max_age,
            max_future: cfg.max_future,
        })
    }

    /// Build from config: load the trusted directory (see [`load_keyring`]) and merge the
    /// config grants with `extra_grants`.
    pub fn from_config(
        cfg: &TrustConfig,
        extra_grants: &[(String, Vec<String>)],
    ) -> Result<Self, String> {
        Self::from_dirs(cfg, extra_grants, &[])
    }

    /// [`TrustPolicy::from_config`], also trusting the keys in `also_trusted` (as `hark
    /// serve` trusts its own key beside an admin's `--trusted` directory).
    pub fn from_dirs(
        cfg: &TrustConfig,
        extra_grants: &[(String, Vec<String>)],
        also_trusted: &[std::path::PathBuf],
    ) -> Result<Self, String> {
        let mut keyring = load_keyring(&cfg.trusted_dir).map_err(|e| e.to_string())?;
        for dir in also_trusted {
            keyring.merge(load_keyring(dir).map_err(|e| e.to_string())?);
        }
        let mut grants: Vec<(String, Vec<String>)> = cfg
            .grants
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        grants.extend(extra_grants.iter().cloned());
        Self::new(keyring, &grants, cfg)
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn allow_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    fn granted(&self, signer: &str, topic: &str) -> bool {
        self.grants
            .iter()
            .filter(|g| g.signer == signer || g.signer == "*")
            .any(|g| g.topics.iter().any(|t| t.matches(topic)))
    }

    /// Verify signatures and fill `event.signers`; then grants, unsigned and freshness.
    pub fn admit(&self, event: &mut Event, now: DateTime<Utc>) -> Result<(), Refusal> {
        let mut claims = self.claims(event);
        claims.verify_each();
        self.admit_checked(event, claims.report, now)
    }

    /// The Ed25519 signatures of `event` by trusted signers, decoded and not yet verified
    /// (for [`sign::verify_batch`] over several events); then [`TrustPolicy::admit_checked`].
    pub fn claims(&self, event: &Event) -> sign::Claims {
        sign::claims(&event.body, &self.keyring)
    }

    /// [`TrustPolicy::admit`] with the Ed25519 signatures already checked into `report`.
    pub fn admit_checked(
        &self,
        event: &mut Event,
        mut report: sign::SignatureReport,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        if let Some((signer, reason)) = report.bad.into_iter().next() {
            return Err(Refusal::BadSignature { signer, reason });
        }
        if !self.openpgp.is_empty() {
            let pgp = openpgp::check(&event.body, &self.openpgp, std::time::SystemTime::now());
            if let Some((signer, problem, reason)) = pgp.bad.into_iter().next() {
                return Err(match problem {
                    Problem::Bad => Refusal::BadSignature { signer, reason },
                    problem => Refusal::KeyUnusable { problem, reason },
                });
            }
            // A name that only carried OpenPGP signatures is no unknown Ed25519 signer.
            report.unknown.retain(|n| !pgp.claimed.contains(n));
            report.unknown.extend(pgp.unknown);
            for name in pgp.verified {
                if !report.verified.contains(&name) {
                    report.verified.push(name);
                }
            }
        }
        event.signers = report.verified;
        if event.signers.is_empty() {
            if !self.allow_unsigned {
                return Err(if report.unknown.is_empty() {
                    Refusal::Unsigned
                } else {
                    Refusal::UntrustedSigners(report.unknown)
                });
            }
        } else if !event.signers.iter().any(|s| self.granted(s, &event.topic)) {
            return Err(Refusal::NotGranted {
                topic: event.topic.clone(),
                signers: event.signers.clone(),
            });
        }
        self.check_fresh(event.time.as_deref(), now)
    }

    fn check_fresh(&self, time: Option<&str>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let Some(text) = time else { return Ok(()) };
        let at = parse_event_time(text).ok_or_else(|| Refusal::BadTime(text.to_string()))?;
        let delta = now.signed_duration_since(at);
        if delta > chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX) {
            return Err(Refusal::Stale {
                time: text.to_string(),
                max_age: self.max_age,
            });
        }
        if -delta > chrono::Duration::from_std(self.max_future).unwrap_or(chrono::Duration::MAX) {
            return Err(Refusal::Future {
                time: text.to_string(),
                max_future: self.max_future,
            });
        }
        Ok(())
    }
}

/// The trusted keyring from `dir`. A missing directory means no trusted keys; a key file
/// that cannot be read is logged and skipped, so one bad file never hides the others.
pub fn load_keyring(dir: &Path) -> Result<Keyring, KeyError> {
    if !dir.is_dir() {
        return Ok(Keyring::default());
    }
    let (keyring, errors) = Keyring::load_dir(dir)?;
    for e in errors {
        warn!("skipping trusted key: {e}");
    }
    Ok(keyring)
}

/// Parse an event time: RFC 3339 with an offset, or Laniakea's naive `isoformat()`, which
/// is the sender's local time (we assume the same zone as ours).
pub fn parse_event_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .and_then(|naive| Local.from_local_datetime(&naive).earliest())
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::keys::SigningKey;
    use serde_json::json;

    fn policy(allow_unsigned: bool, grants: &[(&str, &str)]) -> (TrustPolicy, SigningKey) {
        let key = SigningKey::generate("archive");
        let mut ring = Keyring::default();
        ring.insert(key.verify_key());
        let grants: Vec<(String, Vec<String>)> = grants
            .iter()
            .map(|(s, g)| (s.to_string(), vec![g.to_string()]))
            .collect();
        let cfg = TrustConfig {
            allow_unsigned,
            ..TrustConfig::default()
        };
        (TrustPolicy::new(ring, &grants, &cfg).unwrap(), key)
    }

    fn event(topic: &str, time: &str, key: Option<&SigningKey>) -> Event {
        let mut body =
            json!({"tag": topic, "uuid": "u1", "format": "1.0", "time": time, "data": {}});
        if let Some(k) = key {
            sign::sign(&mut body, k).unwrap();
        }
        Event::from_value(body).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn fresh() -> String {
        Utc::now().to_rfc3339()
    }

    #[test]
    fn signed_and_granted_passes_with_signers() {
        let (p, key) = policy(false, &[("archive", "_lk.archive.**")]);
        let mut ev = event("_lk.archive.published", &fresh(), Some(&key));
        p.admit(&mut ev, now()).unwrap();
        assert_eq!(ev.signers, vec!["archive"]);
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (p, key) = policy(false, &[("archive", "_lk.archive.**")]);
        let other = SigningKey::generate("stranger");
        let cases = [
            (
                event("_lk.jobs.x", &fresh(), Some(&key)),
                "topic-not-granted",
            ),
            (event("_lk.archive.x", &fresh(), None), "unsigned"),
            (
                event("_lk.archive.x", &fresh(), Some(&other)),
                "untrusted-signer",
            ),
            (
                event("_lk.archive.x", "2001-01-01T00:00:00", Some(&key)),
                "stale",
            ),
            (
                event("_lk.archive.x", "2999-01-01T00:00:00Z", Some(&key)),
                "future",
            ),
            (event("_lk.archive.x", "yesterday", Some(&key)), "bad-time"),
        ];
        for (mut ev, reason) in cases {
            assert_eq!(
                p.admit(&mut ev, now()).unwrap_err().reason(),
                reason,
                "{}",
                ev.topic
            );
        }
        let mut tampered = event("_lk.archive.x", &fresh(), Some(&key));
        tampered.body["data"] = json!({"evil": true});
        assert_eq!(
            p.admit(&mut tampered, now()).unwrap_err().reason(),
            "bad-signature"
        );
    }

    #[test]
    fn wildcard_grant_and_allow_unsigned() {
        let (p, key) = policy(true, &[("*", "**")]);
        let mut ev = event("_lk.anything", &fresh(), Some(&key));
        p.admit(&mut ev, now()).unwrap();
        let mut unsigned = event("_lk.anything", &fresh(), None);
        p.admit(&mut unsigned, now()).unwrap();
        assert!(unsigned.signers.is_empty());
    }

    #[test]
    fn naive_local_times_parse() {
        assert!(parse_event_time("2023-11-30T12:00:00.123456").is_some());
        assert!(parse_event_time("2023-11-30T12:00:00").is_some());
        assert!(parse_event_time("2023-11-30T12:00:00+02:00").is_some());
        assert!(parse_event_time("nope").is_none());
    }
}
