//! OpenPGP signatures as a second trust kind, against GnuPG (the reference nobody here
//! wrote): keys made at test time with `gpg --batch --quick-gen-key`, signatures made by
//! `gpg --detach-sign` (directly, and through `hark publish --gpg-key`), checked by the
//! trust policy that the relay and the trigger share. Expired, revoked and non-signing
//! keys are refused, each with its own reason; python-signedjson still verifies the
//! Ed25519 signature of an event that carries an OpenPGP one beside it.

mod common;

use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::time::Duration;

use hark::admit::{Refusal, TrustPolicy};
use hark::config::TrustConfig;
use hark::event::{openpgp, sign, Event};
use serde_json::{json, Value};

/// A throw-away GnuPG home with the keys the tests need.
struct Gpg {
    home: common::TempDir,
}

impl Gpg {
    fn new() -> Option<Gpg> {
        if Command::new("gpg").arg("--version").output().is_err() {
            eprintln!("SKIPPED: no gpg here (Debian package gpg)");
            return None;
        }
        Some(Gpg {
            home: common::temp_dir(),
        })
    }

    fn gpg(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--no-tty",
            "--quiet",
            "--passphrase",
            "",
        ]);
        cmd
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = self
            .gpg()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A new key for `uid`, returning its primary fingerprint.
    fn key(&self, uid: &str, algo_usage_expiry: [&str; 3], faked_time: Option<&str>) -> String {
        let mut args = Vec::new();
        if let Some(t) = faked_time {
            args.extend(["--faked-system-time", t]);
        }
        args.push("--quick-gen-key");
        args.push(uid);
        args.extend(algo_usage_expiry);
        self.run(&args, b"");
        let listing =
            String::from_utf8(self.run(&["--with-colons", "--list-keys", uid], b"")).unwrap();
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .map(|f| f.trim_end_matches(':').to_string())
            .expect("fingerprint")
    }

    /// The public keyring of every key here, as Debian ships keyrings (binary).
    fn export(&self, to: &Path) {
        std::fs::write(to, self.run(&["--export"], b"")).unwrap();
    }

    /// `event` with a detached gpg signature by `fpr` over what Ed25519 signs.
    fn sign(&self, event: &mut Value, fpr: &str, faked_time: Option<&str>) {
        let message = sign::signed_bytes(event).unwrap();
        let mut args = Vec::new();
        if let Some(t) = faked_time {
            args.extend(["--faked-system-time", t]);
        }
        let user = format!("{fpr}!");
        args.extend(["--detach-sign", "--local-user", &user]);
        let packet = self.run(&args, &message);
        let issuer = openpgp::issuer_of(&packet).unwrap();
        openpgp::insert(event, "openpgp", &issuer, &packet).unwrap();
    }
}

fn event(data: Value) -> Value {
    json!({
        "tag": "_hark.rebuild.requested",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "format": "1.0",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": data,
    })
}

fn policy(keyring: &Path) -> TrustPolicy {
    let mut cfg = TrustConfig {
        trusted_dir: PathBuf::from("/nonexistent"),
        ..Default::default()
    };
    cfg.openpgp_keyrings
        .insert("debian-developer".into(), keyring.to_path_buf());
    let grants = vec![(
        "debian-developer".to_string(),
        vec!["_hark.rebuild.**".to_string()],
    )];
    TrustPolicy::from_config(&cfg, &grants).expect("policy")
}

fn admit(policy: &TrustPolicy, body: &Value) -> Result<Vec<String>, Refusal> {
    let mut e = Event::from_value(body.clone()).expect("envelope");
    policy.admit(&mut e, chrono::Utc::now()).map(|()| e.signers)
}

#[test]
fn gpg_signed_events_are_admitted_and_bad_keys_refused_each_with_its_reason() {
    let Some(gpg) = Gpg::new() else { return };
    let good = gpg.key(
        "Good DD <good@example.org>",
        ["ed25519", "sign", "1y"],
        None,
    );
    let expired = gpg.key(
        "Old DD <old@example.org>",
        ["ed25519", "sign", "1d"],
        Some("20200101T000000"),
    );
    let revoked = gpg.key(
        "Gone DD <gone@example.org>",
        ["ed25519", "sign", "1y"],
        None,
    );
    let cert_only = gpg.key("Enc DD <enc@example.org>", ["ed25519", "cert", "1y"], None);
    gpg.run(
        &["--quick-add-key", &cert_only, "cv25519", "encr", "1y"],
        b"",
    );

    // Signed before its revocation, as a stolen key's signatures would be.
    let mut by_revoked = event(json!({"package": "hello"}));
    gpg.sign(&mut by_revoked, &revoked, None);
    let rev = std::fs::read_to_string(
        gpg.home
            .path()
            .join(format!("openpgp-revocs.d/{revoked}.rev")),
    )
    .unwrap();
    // gpg stores it with a ':' before the armor line so that it is not imported by mistake.
    gpg.run(
        &["--import"],
        rev.replace(":-----BEGIN", "-----BEGIN").as_bytes(),
    );

    let keyring = gpg.home.path().join("keyring.gpg");
    gpg.export(&keyring);
    let policy = policy(&keyring);

    let mut ok = event(json!({"package": "hello"}));
    gpg.sign(&mut ok, &good, None);
    let signers = admit(&policy, &ok).expect("a good DD signature is admitted");
    assert_eq!(
        signers,
        vec!["debian-developer".to_string(), format!("openpgp:{good}")]
    );

    // hark's own OpenPGP signing (sequoia), with the secret key gpg exported.
    let secret = gpg.home.path().join("good.sec");
    std::fs::write(&secret, gpg.run(&["--export-secret-keys", &good], b"")).unwrap();
    let mut signer = openpgp::OpenPgpSigner::from_file(&secret).unwrap();
    let mut by_hark = event(json!({"package": "hello"}));
    signer.sign(&mut by_hark, "dd").unwrap();
    assert!(by_hark["signatures"]["dd"]
        .as_object()
        .unwrap()
        .contains_key(&format!("openpgp:{good}")));
    assert_eq!(
        admit(&policy, &by_hark).expect("hark's OpenPGP signature is admitted"),
        vec!["debian-developer".to_string(), format!("openpgp:{good}")]
    );

    let mut tampered = ok.clone();
    tampered["data"]["package"] = json!("evil");
    let refusal = admit(&policy, &tampered).unwrap_err();
    assert_eq!(refusal.reason(), "bad-signature", "{refusal}");

    let mut old = event(json!({}));
    gpg.sign(&mut old, &expired, Some("20200101T010000"));
    let refusal = admit(&policy, &old).unwrap_err();
    assert_eq!(refusal.reason(), "key-expired", "{refusal}");

    let refusal = admit(&policy, &by_revoked).unwrap_err();
    assert_eq!(refusal.reason(), "key-revoked", "{refusal}");

    // A signature filed under the encryption-only subkey: refused for its usage, whatever
    // the bytes are.
    let mut wrong_usage = event(json!({}));
    gpg.sign(&mut wrong_usage, &good, None);
    let listing =
        String::from_utf8(gpg.run(&["--with-colons", "--list-keys", &cert_only], b"")).unwrap();
    let subkey = listing
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:::::::::"))
        .map(|f| f.trim_end_matches(':'))
        .nth(1)
        .expect("the encryption subkey")
        .to_string();
    let packet = wrong_usage["signatures"]["openpgp"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    wrong_usage["signatures"] = json!({"openpgp": {format!("openpgp:{subkey}"): packet}});
    let refusal = admit(&policy, &wrong_usage).unwrap_err();
    assert_eq!(refusal.reason(), "key-not-for-signing", "{refusal}");

    // A key nobody configured: an unknown signer, not a verified one.
    let other = Gpg::new().unwrap();
    let stranger = other.key("Stranger <s@example.org>", ["ed25519", "sign", "1y"], None);
    let mut strange = event(json!({}));
    other.sign(&mut strange, &stranger, None);
    let refusal = admit(&policy, &strange).unwrap_err();
    assert_eq!(refusal.reason(), "untrusted-signer", "{refusal}");
}

/// `hark publish --gpg-key` signs through gpg; a relay trusting the keyring takes it, and
/// a trigger runs the rule that says `signed_by: [debian-developer]`. The relay's
/// countersigned frame still verifies in python-signedjson (Laniakea's verifier), since
/// the OpenPGP signature is one more entry it ignores.
#[test]
fn a_gpg_signed_publish_fires_a_signed_by_rule_through_the_relay() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("Rebuilder <r@example.org>", ["ed25519", "sign", "1y"], None);
    let dir = common::temp_dir();
    let keyring = dir.path().join("debian-keyring.gpg");
    gpg.export(&keyring);
    let keyring_arg = format!("debian-developer={}", keyring.display());
    let trusted = dir.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    let relay_key = common::keypair(&trusted, "relay");
    let (submit, publish, replay) = (
        common::free_endpoint(),
        common::free_endpoint(),
        common::free_endpoint(),
    );
    let _relay = common::spawn_ready(
        "relay",
        common::hark_command()
            .args(["relay", "--submit", &submit, "--publish", &publish])
            .args(["--replay", &replay, "--journal"])
            .arg(dir.path().join("journal.db"))
            .arg("--key")
            .arg(trusted.join("relay.key_secret"))
            .arg("--trusted")
            .arg(&trusted)
            .args(["--openpgp-keyring", &keyring_arg])
            .args(["--grant", "debian-developer=_hark.rebuild.**"]),
        "relay ready",
    );
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    let marker = dir.path().join("rebuilt");
    std::fs::write(
        rules.join("10-rebuild.yaml"),
        format!(
            "rules:\n  - name: rebuild\n    match: {{topic: _hark.rebuild.requested, signed_by: [debian-developer]}}\n    run: {{command: [/usr/bin/tee, {}], stdin: event}}\n",
            marker.display()
        ),
    )
    .unwrap();
    let _trigger = common::spawn_ready(
        "trigger",
        common::hark_command()
            .args(["trigger", "--connect", &publish, "--replay", &replay])
            .arg("--rules")
            .arg(&rules)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .arg("--trusted")
            .arg(&trusted)
            .args(["--openpgp-keyring", &keyring_arg])
            .args(["--grant", "debian-developer=_hark.rebuild.**"])
            .args(["--grant", "relay=**"]),
        "trigger ready",
    );
    common::run_ok(
        "publish",
        common::hark_command()
            .env("GNUPGHOME", gpg.home.path())
            .args(["publish", "--relay", &submit, "--gpg-key", &fpr])
            .args([
                "_hark.rebuild.requested",
                "--data",
                r#"{"package": "hello"}"#,
            ])
            .arg("--spool")
            .arg(dir.path().join("spool")),
        Duration::from_secs(30),
    )
    .expect("hark publish --gpg-key");
    let ran = common::poll_until(Duration::from_secs(30), || {
        std::fs::read(&marker).ok().filter(|b| !b.is_empty())
    })
    .expect("the signed_by rule ran");
    let frame: Value = serde_json::from_slice(&ran).unwrap();
    assert_eq!(frame["data"]["package"], "hello");
    assert!(frame["signatures"]["openpgp"]
        .as_object()
        .unwrap()
        .contains_key(&format!("openpgp:{fpr}")));
    assert!(frame["signatures"]["relay"].is_object(), "{frame}");
    let public = hark::event::keys::encode_base64(relay_key.key.verifying_key().as_bytes());
    common::run_ok(
        "python-signedjson",
        Command::new(common::python())
            .arg("-c")
            .arg(SIGNEDJSON_VERIFY)
            .arg(&public)
            .arg(String::from_utf8(ran).unwrap()),
        Duration::from_secs(30),
    )
    .expect("python-signedjson verifies the relay's signature");
}

/// python-signedjson verifies the relay's Ed25519 signature on the frame.
const SIGNEDJSON_VERIFY: &str = r#"
import json, sys
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json
public, frame = sys.argv[1], json.loads(sys.argv[2])
key = decode_verify_key_base64("ed25519", "0", public)
verify_signed_json(frame, "relay", key)
"#;
