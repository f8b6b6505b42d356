//! OpenPGP signatures, hark's second trust kind, for sites whose people and services are
//! already in OpenPGP keyrings (Debian's `debian-keyring`, an archive's own key).
//!
//! An OpenPGP signature covers exactly the bytes an Ed25519 signature covers (the event's
//! canonical JSON without `signatures` and `unsigned`), and sits in the same place, so
//! signedjson peers (Laniakea, python-signedjson) ignore it as a signer they do not know:
//!
//! ```text
//! "signatures": {"<name>": {"openpgp:<FINGERPRINT>": "<base64 of the binary signature packet>"}}
//! ```
//!
//! FINGERPRINT (upper-case hex) names the key that made the signature, a signing subkey or
//! the primary key. The verifier finds that key in its configured keyrings and names the
//! signer after the keyring's configured name, never after `<name>`, which is not signed.
//! A verified signature makes two signer names: the keyring's name, and
//! `openpgp:<PRIMARY FINGERPRINT>` for rules that pin one key.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

use openpgp::cert::amalgamation::ValidAmalgamation as _;
use openpgp::cert::CertParser;
use openpgp::crypto::KeyPair;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::MarshalInto;
use openpgp::types::{RevocationStatus, SignatureType};
use openpgp::{Cert, Fingerprint, Packet};
use serde_json::Value;

use super::keys::{decode_base64, encode_base64};
use super::sign::{checked_bytes, insert_signature, signed_bytes, SignError};

/// The key-id prefix of an OpenPGP signature in `signatures[name]`.
pub const KEY_ID_PREFIX: &str = "openpgp:";

/// Why a present OpenPGP signature does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Expired,
    Revoked,
    NotForSigning,
    /// Malformed, or does not verify.
    Bad,
}

/// Certificates from the configured keyrings, each with the signer name it gives.
#[derive(Debug, Clone, Default)]
pub struct OpenPgpKeyring {
    certs: Vec<(Cert, String)>,
    /// Every key (primary and subkeys) to its certificate.
    by_key: HashMap<Fingerprint, usize>,
}

impl OpenPgpKeyring {
    /// Add every certificate of the keyring file at `path` (binary, as Debian ships them,
    /// or ASCII-armored), each signing as `name`.
    pub fn add_file(&mut self, path: &Path, name: &str) -> Result<usize, String> {
        let parser = CertParser::from_file(path)
            .map_err(|e| format!("OpenPGP keyring {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in parser {
            let cert = cert.map_err(|e| format!("OpenPGP keyring {}: {e}", path.display()))?;
            let index = self.certs.len();
            for key in cert.keys() {
                self.by_key.insert(key.key().fingerprint(), index);
            }
            self.certs.push((cert, name.to_string()));
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "OpenPGP keyring {}: holds no certificate",
                path.display()
            ));
        }
        Ok(added)
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// What the OpenPGP signatures on one event say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Signer names from verified signatures (keyring name, then `openpgp:<FPR>`).
    pub verified: Vec<String>,
    /// Signatures by a known key that do not count: the envelope's name, the problem, why.
    pub bad: Vec<(String, Problem, String)>,
    /// Names in `signatures` that carry an OpenPGP signature at all (known key or not).
    pub claimed: Vec<String>,
    /// `openpgp:<FINGERPRINT>` of signatures by keys in no configured keyring.
    pub unknown: Vec<String>,
}

/// Check every OpenPGP signature on `event` against `keyring`, at time `now`.
pub fn check(event: &Value, keyring: &OpenPgpKeyring, now: SystemTime) -> Report {
    let mut report = Report::default();
    let Some(signatures) = event.get("signatures").and_then(Value::as_object) else {
        return report;
    };
    let mut message: Option<Vec<u8>> = None;
    for (name, by_key) in signatures {
        let Some(by_key) = by_key.as_object() else {
            continue;
        };
        for (key_id, text) in by_key {
            let Some(hex) = key_id.strip_prefix(KEY_ID_PREFIX) else {
                continue;
            };
            if !report.claimed.contains(name) {
                report.claimed.push(name.clone());
            }
            let Some((fingerprint, &index)) = hex
                .parse::<Fingerprint>()
                .ok()
                .and_then(|f| keyring.by_key.get(&f).map(|i| (f, i)))
            else {
                report.unknown.push(key_id.clone());
                continue;
            };
            let (cert, signer) = &keyring.certs[index];
            let bytes = match &message {
                Some(m) => m,
                None => match signed_bytes(event) {
                    Ok(m) => message.insert(m),
                    Err(e) => {
                        report.bad.push((
                            name.clone(),
                            Problem::Bad,
                            format!("cannot canonicalize: {e}"),
                        ));
                        continue;
                    }
                },
            };
            match verify_one(cert, fingerprint, text, bytes, now) {
                Ok(()) => {
                    for n in [
                        signer.clone(),
                        format!("{KEY_ID_PREFIX}{}", cert.fingerprint()),
                    ] {
                        if !report.verified.contains(&n) {
                            report.verified.push(n);
                        }
                    }
                }
                Err((problem, why)) => report.bad.push((name.clone(), problem, why)),
            }
        }
    }
    report
}

fn verify_one(
    cert: &Cert,
    handle: Fingerprint,
    text: &Value,
    message: &[u8],
    now: SystemTime,
) -> Result<(), (Problem, String)> {
    let bad = |why: String| (Problem::Bad, why);
    let packet = text
        .as_str()
        .and_then(|t| decode_base64(t).ok())
        .and_then(|b| Packet::from_bytes(&b).ok());
    let Some(Packet::Signature(signature)) = packet else {
        return Err(bad(format!(
            "{KEY_ID_PREFIX}{handle} is not a base64 OpenPGP signature packet"
        )));
    };
    let policy = StandardPolicy::new();
    let primary = cert.fingerprint();
    // Revocation first: a revoked certificate is also "not valid", which would hide why.
    if let RevocationStatus::Revoked(_) = cert.revocation_status(&policy, now) {
        return Err((
            Problem::Revoked,
            format!("the OpenPGP certificate {primary} is revoked"),
        ));
    }
    // Not expiry (alive() below says that): no binding signature the standard policy
    // accepts at `now`, e.g. one made with SHA-1 or dated in the future.
    let valid = cert.with_policy(&policy, now).map_err(|e| {
        bad(format!(
            "the OpenPGP certificate {primary} has no self-signature the standard policy accepts now: {e}"
        ))
    })?;
    if valid.alive().is_err() {
        return Err((
            Problem::Expired,
            format!("the OpenPGP certificate {primary} has expired"),
        ));
    }
    let Some(key) = valid.keys().key_handle(handle.clone()).next() else {
        return Err(bad(format!("{handle} is not a valid key of {primary}")));
    };
    if let RevocationStatus::Revoked(_) = key.revocation_status() {
        return Err((
            Problem::Revoked,
            format!("the OpenPGP key {handle} is revoked"),
        ));
    }
    if key.alive().is_err() {
        return Err((
            Problem::Expired,
            format!("the OpenPGP key {handle} has expired"),
        ));
    }
    if !key.for_signing() {
        return Err((
            Problem::NotForSigning,
            format!("the OpenPGP key {handle} is not a signing key (its key flags do not allow signing)"),
        ));
    }
    signature.verify_message(key.key(), message).map_err(|e| {
        bad(format!(
            "the OpenPGP signature by {handle} does not verify: {e}"
        ))
    })
}

/// A secret OpenPGP key that signs events (the signing-capable key of a certificate that
/// holds secret key material).
pub struct OpenPgpSigner {
    keypair: KeyPair,
    fingerprint: Fingerprint,
}

impl OpenPgpSigner {
    /// The first alive, unrevoked signing key with unencrypted secret material in `path`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let cert = Cert::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let policy = StandardPolicy::new();
        let key = cert
            .keys()
            .with_policy(&policy, None)
            .secret()
            .for_signing()
            .alive()
            .revoked(false)
            .next()
            .ok_or_else(|| {
                format!(
                    "{}: no valid signing key with its secret part",
                    path.display()
                )
            })?;
        let fingerprint = key.key().fingerprint();
        let keypair = key
            .key()
            .clone()
            .into_keypair()
            .map_err(|e| format!("{}: {e} (is the secret key encrypted?)", path.display()))?;
        Ok(OpenPgpSigner {
            keypair,
            fingerprint,
        })
    }

    /// Add this key's signature to `event` under `signatures[name]` (the outer name is not
    /// signed; verifiers name the signer themselves), keeping every signature there.
    pub fn sign(&mut self, event: &mut Value, name: &str) -> Result<(), SignError> {
        let message = checked_bytes(event)?;
        let packet = SignatureBuilder::new(SignatureType::Binary)
            .sign_message(&mut self.keypair, &message)
            .and_then(|s| Packet::from(s).to_vec())
            .map_err(|e| SignError::OpenPgp(e.to_string()))?;
        insert(event, name, &self.fingerprint.to_hex(), &packet)
    }
}

/// Store a binary signature `packet` by the key `fingerprint` under `signatures[name]`.
pub fn insert(
    event: &mut Value,
    name: &str,
    fingerprint: &str,
    packet: &[u8],
) -> Result<(), SignError> {
    insert_signature(
        event,
        name,
        format!("{KEY_ID_PREFIX}{}", fingerprint.to_uppercase()),
        encode_base64(packet),
    )
}

/// The issuer fingerprint a binary signature packet names (what `gpg --detach-sign`
/// wrote), so that it can be stored under the right key id.
pub fn issuer_of(packet: &[u8]) -> Result<String, String> {
    match Packet::from_bytes(packet) {
        Ok(Packet::Signature(s)) => s
            .issuer_fingerprints()
            .next()
            .map(Fingerprint::to_hex)
            .ok_or_else(|| "the OpenPGP signature names no issuer fingerprint".to_string()),
        Ok(_) => Err("not an OpenPGP signature packet".into()),
        Err(e) => Err(format!("not an OpenPGP signature: {e}")),
    }
}
