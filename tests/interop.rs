//! Interop with the real Python stack: pyzmq, python-signedjson and fedmsg 1.1.7 (installed in
//! `.venv` by `make venv`), talking to a `hark relay` subprocess over 127.0.0.1.
//!
//! 1. A pyzmq DEALER submits a Laniakea event signed by python-signedjson; hark relays it and
//!    a pyzmq SUB receives it as Laniakea consumers expect (2 frames, frame 0 = tag).
//! 2. python-signedjson verifies both signatures on what hark publishes: the sender's and the
//!    relay's countersignature (the sender's key made by `hark keygen`, read Laniakea-style).
//! 3. `fedmsg.publish()` in active mode goes through the relay's fedmsg inbound and reaches a
//!    pyzmq SUB byte for byte. fedmsg's own PUB socket is also connected to a pyzmq SUB-bind
//!    capture, so both receive the very bytes of the same send call, and they must be equal.
//!
//! Slow joiners are handled without sleeps: the peers send warm-up messages until the test,
//! having seen a subscriber receive one, creates a "go" file; every wait has a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::{
    free_endpoint, hark_command, peer_command, run_ok, spawn_ready, temp_dir, Lines, Proc, TempDir,
};
use hark::event::keys::{encode_base64, read_verify_key};
use serde_json::Value;

/// python-signedjson's Matrix test seed and its verify key (laniakea.md 8.3, 8.4).
const TEST_SIGNER: &str = "test-signer";
const TEST_SIGNER_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
const TEST_SIGNER_VERIFY: &str = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";
const RELAY_NAME: &str = "relay-test";
const MODULE_NAME: &str = "lk-module";

const STARTUP: Duration = Duration::from_secs(30);
const EXCHANGE: Duration = Duration::from_secs(30);
const LK_WARMUP: &str = "_lk.warmup.";
const FEDMSG_WARMUP: &str = "org.fedoraproject.dev.harkwarmup";

struct Relay {
    proc: Proc,
    dir: TempDir,
    submit: String,
    publish: String,
    fedmsg_inbound: String,
    relay_verify: String,
    module_secret: PathBuf,
    module_verify: String,
}

impl Relay {
    /// The relay must still be running (no crash on anything a peer sent).
    fn assert_alive(&mut self) {
        if let Some(status) = self.proc.try_status() {
            panic!(
                "hark relay exited ({status}); stderr:\n{}",
                self.proc.stderr.history().join("\n")
            );
        }
    }
}

fn verify_key_b64(public_keyfile: &Path) -> String {
    let key = read_verify_key(public_keyfile)
        .unwrap_or_else(|e| panic!("read {}: {e}", public_keyfile.display()));
    encode_base64(key.key.as_bytes())
}

/// `hark keygen --id NAME --out DIR`, returning (secret file, public file).
fn keygen(name: &str, out: &Path) -> (PathBuf, PathBuf) {
    run_ok(
        &format!("keygen-{name}"),
        hark_command()
            .args(["keygen", "--id", name, "--out"])
            .arg(out),
        STARTUP,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let secret = out.join(format!("{name}.key_secret"));
    let public = out.join(format!("{name}.key"));
    assert!(
        secret.is_file() && public.is_file(),
        "keygen wrote no key files in {}",
        out.display()
    );
    (secret, public)
}

/// Start `hark relay` on free ports, trusting `test-signer` (the Matrix seed) and `lk-module`
/// (a key made by `hark keygen`), both granted `_lk.**`, countersigning as `relay-test`.
fn start_relay() -> Relay {
    let dir = temp_dir();
    let secret_dir = dir.path().join("secret");
    let trusted = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let (relay_secret, relay_public) = keygen(RELAY_NAME, &secret_dir);
    let (module_secret, module_public) = keygen(MODULE_NAME, &secret_dir);
    std::fs::copy(&module_public, trusted.join(format!("{MODULE_NAME}.key"))).unwrap();
    common::write_file(
        &trusted,
        "test-signer.key",
        &format!(
            "#\n# Laniakea Messaging Public Certificate\n#\n\nmetadata\n    id = \"{TEST_SIGNER}\"\n\
             curve\n    public-key = \"\"\ned\n    verify-key = \"{TEST_SIGNER_VERIFY}\"\n"
        ),
    );

    let (submit, publish, fedmsg_inbound) = (free_endpoint(), free_endpoint(), free_endpoint());
    let proc = spawn_ready(
        "relay",
        hark_command()
            .arg("relay")
            .args(["--submit", &submit, "--publish", &publish])
            .args(["--fedmsg-inbound", &fedmsg_inbound])
            .arg("--key")
            .arg(&relay_secret)
            .arg("--trusted")
            .arg(&trusted)
            .args(["--grant", &format!("{TEST_SIGNER}=_lk.**")])
            .args(["--grant", &format!("{MODULE_NAME}=_lk.**")])
            .args(["--name", RELAY_NAME]),
        "relay ready",
    );
    Relay {
        proc,
        submit,
        publish,
        fedmsg_inbound,
        relay_verify: verify_key_b64(&relay_public),
        module_verify: verify_key_b64(&module_public),
        module_secret,
        dir,
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("peer printed non-JSON {line:?}: {e}"))
}

/// Wait for a warm-up message on every subscriber, then create `go` so the sender stops warming
/// up and sends the real messages.
fn release_after_warmup(subscribers: &[&Proc], go: &Path) {
    for sub in subscribers {
        sub.stdout
            .wait_for("\"warmup\": true", EXCHANGE)
            .unwrap_or_else(|e| panic!("{} saw no warm-up message: {e}", sub.name));
    }
    std::fs::write(go, b"go").unwrap();
}

/// The next `n` non-warm-up JSON lines from `lines`.
fn real_messages(lines: &Lines, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = lines
            .wait_for("\"warmup\": false", EXCHANGE)
            .unwrap_or_else(|e| panic!("got {} of {n} messages: {e}", out.len()));
        out.push(parse(&line));
    }
    out
}

fn b64_frames(v: &Value) -> Vec<Vec<u8>> {
    v["frames_b64"]
        .as_array()
        .expect("frames_b64")
        .iter()
        .map(|f| {
            base64::engine::general_purpose::STANDARD
                .decode(f.as_str().unwrap())
                .unwrap()
        })
        .collect()
}

fn show(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// (1) A Laniakea-style DEALER submission signed by python-signedjson is acked and relayed to a
/// pyzmq SUB as `[tag, canonical json]`, with the sender's signature untouched.
#[test]
fn laniakea_dealer_submission_is_relayed() {
    let mut relay = start_relay();
    let go = relay.dir.path().join("go");
    let tag = "_lk.archive.package-upload-accepted";
    let data = r#"{"repo":"master","suite":"unstable","source_name":"hello","source_version":"2.10-3","changes":"Täst \"quoted\" \\ \u0001 😀 \u2028","files":["hello_2.10-3.dsc"],"is_new":false,"count":18446744073709551616}"#;

    let sub = Proc::spawn(
        "sub_verify",
        peer_command("sub_verify.py")
            .args(["--connect", &relay.publish, "--topic", "_lk.archive."])
            .args([
                "--warmup-prefix",
                LK_WARMUP,
                "--count",
                "1",
                "--timeout",
                "30",
            ]),
    );
    sub.stderr.wait_for("subscribed", STARTUP).unwrap();
    let mut submit = Proc::spawn(
        "lk_submit",
        peer_command("lk_submit.py")
            .args(["--connect", &relay.submit, "--tag", tag, "--data", data])
            .args(["--seed", TEST_SIGNER_SEED, "--signer", TEST_SIGNER])
            .args(["--ack", "--expect-status", "accepted", "--timeout", "30"])
            .arg("--go-file")
            .arg(&go),
    );
    release_after_warmup(&[&sub], &go);

    let sent = parse(&submit.stdout.wait_for("\"sent\"", EXCHANGE).unwrap());
    let ack = parse(&submit.stdout.wait_for("\"ack\"", EXCHANGE).unwrap());
    submit.wait_success(EXCHANGE).unwrap();
    let event = &sent["sent"];
    assert_eq!(ack["ack"]["uuid"], event["uuid"], "ack: {ack}");
    assert_eq!(ack["ack"]["status"], "accepted", "ack: {ack}");
    assert!(ack["ack"]["seq"].is_u64(), "ack without seq: {ack}");

    let got = real_messages(&sub.stdout, 1).remove(0);
    assert_eq!(got["nframes"], 2, "{got}");
    assert_eq!(got["frames"][0], tag, "{got}");
    assert_eq!(got["tag_ok"], true, "{got}");
    assert_eq!(
        got["canonical"], true,
        "frame 1 is not Laniakea's compact sorted JSON: {got}"
    );
    let relayed = &got["event"];
    for field in ["tag", "uuid", "format", "time", "data"] {
        assert_eq!(relayed[field], event[field], "field {field} changed: {got}");
    }
    assert_eq!(
        relayed["signatures"][TEST_SIGNER], event["signatures"][TEST_SIGNER],
        "the sender's signature changed"
    );
    assert!(
        relayed["signatures"][RELAY_NAME]["ed25519:0"].is_string(),
        "no relay countersignature: {got}"
    );
    assert_eq!(relayed["unsigned"]["relay"], RELAY_NAME, "{got}");
    assert_eq!(relayed["unsigned"]["seq"], ack["ack"]["seq"], "{got}");
    relay.assert_alive();
}

/// (1b) A submission by a signer the relay does not trust is refused, not relayed.
#[test]
fn untrusted_python_signer_is_refused() {
    let mut relay = start_relay();
    let other_seed = encode_base64(&[7u8; 32]);
    let mut submit = Proc::spawn(
        "lk_submit",
        peer_command("lk_submit.py")
            .args(["--connect", &relay.submit, "--tag", "_lk.test.intruder"])
            .args(["--seed", &other_seed, "--signer", "intruder"])
            .args(["--ack", "--expect-status", "refused", "--timeout", "30"]),
    );
    let ack = parse(&submit.stdout.wait_for("\"ack\"", EXCHANGE).unwrap());
    submit.wait_success(EXCHANGE).unwrap();
    assert_eq!(ack["ack"]["status"], "refused", "{ack}");
    assert!(
        ack["ack"]["reason"].is_string(),
        "refusal without reason: {ack}"
    );
    relay.assert_alive();
}

/// (2) python-signedjson verifies the sender's and the relay's signatures on hark's frames.
/// The sender signs with a `hark keygen` key, read by a Laniakea-style keyfile parser.
#[test]
fn python_signedjson_verifies_sender_and_relay_signatures() {
    let mut relay = start_relay();
    let go = relay.dir.path().join("go");
    let count = 3;
    let mut sub = Proc::spawn(
        "sub_verify",
        peer_command("sub_verify.py")
            .args(["--connect", &relay.publish, "--topic", "_lk.test."])
            .args(["--warmup-prefix", LK_WARMUP, "--count", &count.to_string()])
            .args(["--key", &format!("{MODULE_NAME}={}", relay.module_verify)])
            .args(["--key", &format!("{RELAY_NAME}={}", relay.relay_verify)])
            .args(["--strict", "--timeout", "30"]),
    );
    sub.stderr.wait_for("subscribed", STARTUP).unwrap();
    let mut submit = Proc::spawn(
        "lk_submit",
        peer_command("lk_submit.py")
            .args(["--connect", &relay.submit, "--tag", "_lk.test.signed"])
            .arg("--keyfile")
            .arg(&relay.module_secret)
            .args([
                "--data",
                r#"{"k":"vé","n":[1,2.5,-0.0,1e-05,10000000000.0],"z":{"b":null,"a":true}}"#,
            ])
            .args([
                "--count",
                &count.to_string(),
                "--ack",
                "--expect-status",
                "accepted",
            ])
            .args(["--timeout", "30"])
            .arg("--go-file")
            .arg(&go),
    );
    release_after_warmup(&[&sub], &go);
    submit.wait_success(EXCHANGE).unwrap();

    let messages = real_messages(&sub.stdout, count);
    sub.wait_success(EXCHANGE).unwrap();
    for got in &messages {
        assert_eq!(
            got["verified"][MODULE_NAME], true,
            "sender signature: {got}"
        );
        assert_eq!(got["verified"][RELAY_NAME], true, "relay signature: {got}");
        assert_eq!(got["errors"], serde_json::json!({}), "{got}");
        assert_eq!(got["canonical"], true, "{got}");
        let signers: Vec<&String> = got["event"]["signatures"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(signers, [MODULE_NAME, RELAY_NAME], "{got}");
    }
    relay.assert_alive();
}

/// (3) `fedmsg.publish()` in active mode, through the relay's fedmsg inbound, reaches a pyzmq
/// SUB byte for byte: equal to what the same fedmsg PUB socket delivered to a SUB-bind capture.
#[test]
fn fedmsg_active_publish_passes_through_byte_for_byte() {
    let mut relay = start_relay();
    let go = relay.dir.path().join("go");
    let capture_ep = free_endpoint();
    let count = 3;
    let sub_args = |p: &mut std::process::Command| {
        p.args([
            "--warmup-prefix",
            FEDMSG_WARMUP,
            "--count",
            &count.to_string(),
        ])
        .args(["--timeout", "30"]);
    };
    let mut relayed_cmd = peer_command("sub_raw.py");
    relayed_cmd.args(["--connect", &relay.publish]);
    sub_args(&mut relayed_cmd);
    let mut capture_cmd = peer_command("sub_raw.py");
    capture_cmd.args(["--bind", &capture_ep]);
    sub_args(&mut capture_cmd);
    let mut relayed = Proc::spawn("sub_relayed", &mut relayed_cmd);
    let mut capture = Proc::spawn("sub_capture", &mut capture_cmd);
    relayed.stderr.wait_for("subscribed", STARTUP).unwrap();
    capture.stderr.wait_for("subscribed", STARTUP).unwrap();

    // Non-ASCII, controls, U+2028, a float, a 65-bit integer: fedmsg writes them with
    // ensure_ascii=True and its own key order, which hark must not touch.
    let msg = r#"{"text":"Täst 😀 \u2028 \"q\" \\ / \u0001","ratio":0.9111111111112,"big":18446744073709551617,"b":[true,null]}"#;
    let workdir = relay.dir.path().join("fedmsg-cwd");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut publisher = Proc::spawn(
        "fedmsg_publish",
        peer_command("fedmsg_active_publish.py")
            .current_dir(&workdir)
            .env_remove("VIRTUAL_ENV")
            .args([
                "--relay-inbound",
                &relay.fedmsg_inbound,
                "--also-connect",
                &capture_ep,
            ])
            .arg("--workdir")
            .arg(&workdir)
            .args(["--modname", "hark", "--topic", "interop.test", "--msg", msg])
            .args(["--count", &count.to_string(), "--timeout", "30"])
            .arg("--go-file")
            .arg(&go),
    );
    release_after_warmup(&[&relayed, &capture], &go);
    publisher.wait_success(EXCHANGE).unwrap();
    let sent: Vec<Value> = publisher
        .stdout
        .drain(EXCHANGE)
        .iter()
        .map(|l| parse(l))
        .collect();
    assert_eq!(sent.len(), count, "publisher printed {sent:?}");

    let relayed_msgs = real_messages(&relayed.stdout, count);
    let captured_msgs = real_messages(&capture.stdout, count);
    relayed.wait_success(EXCHANGE).unwrap();
    capture.wait_success(EXCHANGE).unwrap();

    for i in 0..count {
        let on_wire = b64_frames(&captured_msgs[i]);
        let via_hark = b64_frames(&relayed_msgs[i]);
        let encoded = b64_frames(&sent[i]);
        assert_eq!(on_wire.len(), 2, "fedmsg sent {:?}", show(&on_wire));
        assert_eq!(
            via_hark,
            on_wire,
            "message {i}: hark changed fedmsg's frames\n  fedmsg: {:?}\n  hark:   {:?}",
            show(&on_wire),
            show(&via_hark)
        );
        assert_eq!(
            on_wire, encoded,
            "message {i}: capture differs from fedmsg's encoder"
        );
        let body = String::from_utf8(on_wire[1].clone()).unwrap();
        assert_eq!(on_wire[0], b"org.fedoraproject.dev.hark.interop.test");
        assert!(
            body.contains(r"T\u00e4st \ud83d\ude00 \u2028"),
            "not fedmsg's ensure_ascii body: {body}"
        );
        assert!(body.contains("18446744073709551617"), "{body}");
        let envelope: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            envelope["msg_id"], sent[i]["sent"]["msg_id"],
            "messages out of order"
        );
    }
    relay.assert_alive();
}

/// (4) The anchor the benchmarks compare against: the venv's fedmsg-relay (moksha.hub, psutil)
/// starts and relays an active `fedmsg.publish()`. Unlike hark it re-encodes the body, so only
/// the parsed envelopes are compared.
#[test]
fn venv_fedmsg_relay_starts_and_relays() {
    let dir = temp_dir();
    let (inbound, outbound) = (free_endpoint(), free_endpoint());
    let relay_cwd = dir.path().join("relay");
    common::write_file(
        &relay_cwd,
        "fedmsg.d/hark_test.py",
        &format!(
            "config = dict(\n    endpoints={{\"relay_outbound\": [\"{outbound}\"]}},\n    \
             relay_inbound=[\"{inbound}\"],\n    environment=\"dev\",\n    \
             topic_prefix=\"org.fedoraproject\",\n    sign_messages=False,\n    \
             validate_signatures=False,\n    active=False,\n    zmq_enabled=True,\n)\n"
        ),
    );
    let fedmsg_relay = common::test_anchor("fedmsg-relay");
    let mut relay = Proc::spawn(
        "fedmsg-relay",
        std::process::Command::new(&fedmsg_relay)
            .current_dir(&relay_cwd)
            .env_remove("VIRTUAL_ENV")
            .env("HOME", &relay_cwd),
    );
    relay
        .stdout
        .wait_for("Running the MokshaHub reactor", STARTUP)
        .unwrap_or_else(|e| panic!("fedmsg-relay did not start: {e}"));

    let go = dir.path().join("go");
    let mut sub = Proc::spawn(
        "sub_relayed",
        peer_command("sub_raw.py")
            .args(["--connect", &outbound, "--warmup-prefix", FEDMSG_WARMUP])
            .args(["--count", "2", "--timeout", "30"]),
    );
    sub.stderr.wait_for("subscribed", STARTUP).unwrap();
    let workdir = dir.path().join("publisher");
    let mut publisher = Proc::spawn(
        "fedmsg_publish",
        peer_command("fedmsg_active_publish.py")
            .env_remove("VIRTUAL_ENV")
            .args([
                "--relay-inbound",
                &inbound,
                "--count",
                "2",
                "--timeout",
                "30",
            ])
            .args(["--msg", r#"{"text":"Täst","n":1}"#])
            .arg("--workdir")
            .arg(&workdir)
            .arg("--go-file")
            .arg(&go),
    );
    release_after_warmup(&[&sub], &go);
    publisher.wait_success(EXCHANGE).unwrap();
    let sent: Vec<Value> = publisher
        .stdout
        .drain(EXCHANGE)
        .iter()
        .map(|l| parse(l))
        .collect();
    let received = real_messages(&sub.stdout, 2);
    sub.wait_success(EXCHANGE).unwrap();
    for (s, r) in sent.iter().zip(&received) {
        let frames = b64_frames(r);
        assert_eq!(frames.len(), 2, "{r}");
        let envelope: Value = serde_json::from_slice(&frames[1]).unwrap();
        assert_eq!(envelope, s["sent"], "fedmsg-relay changed the message");
    }
    assert!(relay.try_status().is_none(), "fedmsg-relay exited");
}
