//! Matrix signedjson signatures over canonical JSON, as Laniakea and python-signedjson do it:
//! drop top-level `signatures` and `unsigned`, serialize canonically, sign with Ed25519, store
//! unpadded base64 under `signatures[signer]["ed25519:<version>"]`.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer};
use serde_json::{Map, Value};

use super::canonical;
use super::keys::{decode_base64, encode_base64, Keyring, SigningKey};

const UNSIGNED_KEYS: &[&str] = &["signatures", "unsigned"];

/// The bytes a signature covers.
pub fn signed_bytes(event: &Value) -> Result<Vec<u8>, serde_json::Error> {
    canonical::to_vec_without(event, UNSIGNED_KEYS)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("only JSON objects can be signed")]
    NotAnObject,
    #[error("`signatures` is not an object of objects")]
    BadSignaturesField,
    #[error("the number {0} is beyond a double's range: canonical JSON would write it as Infinity, which is not JSON")]
    NonFinite(String),
    #[error("OpenPGP signing failed: {0}")]
    OpenPgp(String),
}

/// Add `key`'s signature to `event`, keeping every signature already there.
pub fn sign(event: &mut Value, key: &SigningKey) -> Result<(), SignError> {
    let message = checked_bytes(event)?;
    let signature = encode_base64(&key.key.sign(&message).to_bytes());
    insert_signature(event, &key.name, key.key_id(), signature)
}

/// Add `key`'s signature to `event` over `message`, which must be [`signed_bytes`] of it
/// (as [`Claims::message`] gives them): verification has just computed them, and adding a
/// signature does not change them.
pub fn sign_message(event: &mut Value, key: &SigningKey, message: &[u8]) -> Result<(), SignError> {
    let signature = encode_base64(&key.key.sign(message).to_bytes());
    insert_signature(event, &key.name, key.key_id(), signature)
}

/// The bytes a new signature covers, refusing what could only be sent as `Infinity`
/// (no peer could parse it back). Shared by Ed25519 and OpenPGP signing.
pub fn checked_bytes(event: &Value) -> Result<Vec<u8>, SignError> {
    if let Some(n) = canonical::non_finite(event) {
        return Err(SignError::NonFinite(n.to_string()));
    }
    signed_bytes(event).map_err(|_| SignError::NotAnObject)
}

/// Store `signature` as `signatures[name][key_id]`, keeping every other signature.
pub fn insert_signature(
    event: &mut Value,
    name: &str,
    key_id: String,
    signature: String,
) -> Result<(), SignError> {
    event
        .as_object_mut()
        .ok_or(SignError::NotAnObject)?
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SignError::BadSignaturesField)?
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(SignError::BadSignaturesField)?
        .insert(key_id, Value::String(signature));
    Ok(())
}

/// What the signatures on one event say, against a keyring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureReport {
    /// Trusted signers whose signature verified.
    pub verified: Vec<String>,
    /// Trusted signers whose signature is present but wrong, with the reason.
    pub bad: Vec<(String, String)>,
    /// Signers not in the keyring (their signatures are not checked).
    pub unknown: Vec<String>,
}

/// Check every signature on `event` whose signer is in `keyring`.
pub fn check(event: &Value, keyring: &Keyring) -> SignatureReport {
    let mut claims = claims(event, keyring);
    claims.verify_each();
    claims.report
}

/// One Ed25519 signature of a trusted signer, decoded and waiting for the curve check.
#[derive(Debug, Clone)]
pub struct Pending {
    signer: String,
    key: ed25519_dalek::VerifyingKey,
    signature: Signature,
}

/// What an event's signatures claim, with everything but the curve arithmetic done: the
/// signed bytes computed once (the countersignature covers the same bytes), unknown signers
/// and undecodable signatures already reported. [`Claims::verify_each`] or
/// [`verify_batch`] finishes the report.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub report: SignatureReport,
    pending: Vec<Pending>,
    /// The canonical signed bytes, when a trusted signer's signature needed them.
    message: Option<Vec<u8>>,
}

impl Claims {
    /// The bytes every signature on this event covers (and a countersignature will),
    /// computed now if no trusted signature needed them.
    pub fn message(&mut self, event: &Value) -> Result<&[u8], serde_json::Error> {
        if self.message.is_none() {
            self.message = Some(signed_bytes(event)?);
        }
        Ok(self.message.as_deref().unwrap_or_default())
    }

    /// Check the pending signatures one by one (`verify_strict`).
    pub fn verify_each(&mut self) {
        let message = self.message.as_deref().unwrap_or_default();
        for p in self.pending.drain(..) {
            match p.key.verify_strict(message, &p.signature) {
                Ok(()) => self.report.verified.push(p.signer),
                Err(_) => self
                    .report
                    .bad
                    .push((p.signer, "signature does not verify".into())),
            }
        }
    }
}

/// Decode the signatures on `event` whose signer is in `keyring`, without verifying them.
pub fn claims(event: &Value, keyring: &Keyring) -> Claims {
    let mut claims = Claims::default();
    let Some(signatures) = event.get("signatures").and_then(Value::as_object) else {
        return claims;
    };
    for (signer, by_key) in signatures {
        let Some(key) = keyring.get(signer) else {
            claims.report.unknown.push(signer.clone());
            continue;
        };
        let Some(sig_text) = by_key.get(key.key_id()).and_then(Value::as_str) else {
            claims
                .report
                .bad
                .push((signer.clone(), format!("no {} signature", key.key_id())));
            continue;
        };
        let Some(signature) = decode_base64(sig_text)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
        else {
            claims
                .report
                .bad
                .push((signer.clone(), "signature is not 64 bytes of base64".into()));
            continue;
        };
        if claims.message.is_none() {
            match signed_bytes(event) {
                Ok(m) => claims.message = Some(m),
                Err(e) => {
                    claims
                        .report
                        .bad
                        .push((signer.clone(), format!("cannot canonicalize: {e}")));
                    continue;
                }
            }
        }
        claims.pending.push(Pending {
            signer: signer.clone(),
            key: key.key,
            signature,
        });
    }
    claims
}

/// Finish several events' [`Claims`] at once. Ed25519 batch verification checks all their
/// pending signatures in one multiscalar multiplication, about half the CPU of checking
/// them one by one; if the batch fails, each is checked alone to tell which is bad.
///
/// The batch equation is the same unreduced equation `verify_strict` checks, so a batch
/// that passes means each signature would pass, except for the two extra rules of
/// `verify_strict`, checked here before the batch: neither the key nor the signature's R
/// may be a point of small order. (A signature whose R carries a torsion component can
/// pass a batch that its own check would fail; only the key's holder can make one, and
/// every subscriber checks signatures again with `verify_strict`.)
pub fn verify_batch(all: &mut [Claims]) {
    let pending: usize = all.iter().map(|c| c.pending.len()).sum();
    if pending < 2 {
        all.iter_mut().for_each(Claims::verify_each);
        return;
    }
    let strict = all.iter().all(|c| {
        c.pending.iter().all(|p| {
            !p.key.is_weak()
                && CompressedEdwardsY(p.signature.r_bytes().to_owned())
                    .decompress()
                    .is_some_and(|r| !r.is_small_order())
        })
    });
    let mut messages: Vec<&[u8]> = Vec::with_capacity(pending);
    let mut signatures = Vec::with_capacity(pending);
    let mut keys = Vec::with_capacity(pending);
    for c in all.iter() {
        for p in &c.pending {
            messages.push(c.message.as_deref().unwrap_or_default());
            signatures.push(p.signature);
            keys.push(p.key);
        }
    }
    if strict && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        for c in all.iter_mut() {
            let verified = c.pending.drain(..).map(|p| p.signer);
            c.report.verified.extend(verified);
        }
    } else {
        all.iter_mut().for_each(Claims::verify_each);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::keys::decode_base64;

    fn matrix_key(version: &str) -> SigningKey {
        let seed = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        SigningKey::from_seed("domain", version, &seed).unwrap()
    }

    #[test]
    fn a_number_only_writable_as_infinity_is_never_signed() {
        let mut event: Value = serde_json::from_str(r#"{"data":{"n":1e400}}"#).unwrap();
        assert!(matches!(
            sign(&mut event, &matrix_key("1")),
            Err(SignError::NonFinite(_))
        ));
        assert!(event.get("signatures").is_none());
    }

    #[test]
    fn matrix_vectors() {
        let key = matrix_key("1");
        let mut empty = serde_json::json!({});
        sign(&mut empty, &key).unwrap();
        assert_eq!(
            empty["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        let mut two = serde_json::json!({"one": 1, "two": "Two"});
        sign(&mut two, &key).unwrap();
        assert_eq!(
            two["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn unsigned_and_signatures_are_not_signed() {
        let v = serde_json::json!({"foo": "bar", "unsigned": {}, "signatures": {"x": {}}});
        assert_eq!(signed_bytes(&v).unwrap(), br#"{"foo":"bar"}"#);
    }

    #[test]
    fn laniakea_relayed_event_vector() {
        let frame = r#"{"data":{"changes":"\n hello (2.10-3) unstable; urgency=medium\n .\n   * Täst \"quoted\" \\ backslash\u0001 ctrl","files":["hello_2.10-3.dsc","hello_2.10-3_amd64.deb"],"is_new":false,"repo":"master","source_name":"hello","source_version":"2.10-3","suite":"unstable","upload_name":"hello_2.10-3_amd64"},"format":"1.0","signatures":{"lighthouse-test":{"ed25519:0":"InHP6MrPkkiYiJbupVkLkXU7Fw2yWZdgM2fO1LWoHwCEpmTZZ+p4DbiiMCPkIy6PTQ5PUa9VfN3SkSnXkFWtDw"},"test-signer":{"ed25519:0":"HU109HUdCYZZYHnTqp9r60CnlmnwbSRaufyHedwz3Ho3Mi1e06zNXWTTeBitSS+OguyHcBJuY/lnr/dVP66FAA"}},"tag":"_lk.archive.package-upload-accepted","time":"2023-11-30T12:00:00.123456","uuid":"5b3c1a2e-8f00-11ee-b9d1-0242ac120002"}"#;
        let event: Value = serde_json::from_str(frame).unwrap();
        assert_eq!(signed_bytes(&event).unwrap().len(), 444);
        // Re-serializing the parsed frame gives back the exact published bytes.
        assert_eq!(canonical::to_vec(&event).unwrap(), frame.as_bytes());

        let signer = SigningKey::from_seed(
            "test-signer",
            "0",
            &decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap(),
        )
        .unwrap();
        let relay =
            SigningKey::from_seed("lighthouse-test", "0", &(0u8..32).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            encode_base64(relay.verify_key().key.as_bytes()),
            "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
        );

        let mut unsigned = event.clone();
        unsigned.as_object_mut().unwrap().remove("signatures");
        sign(&mut unsigned, &signer).unwrap();
        sign(&mut unsigned, &relay).unwrap();
        assert_eq!(canonical::to_vec(&unsigned).unwrap(), frame.as_bytes());

        let mut ring = Keyring::default();
        ring.insert(signer.verify_key());
        ring.insert(relay.verify_key());
        let report = check(&event, &ring);
        assert_eq!(report.verified, vec!["lighthouse-test", "test-signer"]);
        assert!(report.bad.is_empty());
    }

    #[test]
    fn tampering_and_garbage_are_reported_not_panicked() {
        let key = matrix_key("0");
        let mut ring = Keyring::default();
        ring.insert(key.verify_key());
        let mut v = serde_json::json!({"tag": "a", "data": {"n": 1}});
        sign(&mut v, &key).unwrap();
        let mut tampered = v.clone();
        tampered["data"]["n"] = 2.into();
        assert_eq!(check(&tampered, &ring).bad.len(), 1);
        let mut garbage = v.clone();
        garbage["signatures"]["domain"]["ed25519:0"] = "not base64".into();
        assert_eq!(check(&garbage, &ring).bad.len(), 1);
        let mut missing = v.clone();
        missing["signatures"] = serde_json::json!({"someone-else": {"ed25519:0": "AAAA"}});
        let report = check(&missing, &ring);
        assert_eq!((report.verified.len(), report.unknown.len()), (0, 1));
    }
}
