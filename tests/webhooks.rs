//! Forge webhooks on the relay's HTTP API, with payloads from GitLab's and GitHub's
//! documentation (tests/data/hooks): with the right secret the payload becomes a signed
//! `_hark.hook.NAME.KIND` event that is journaled, published and fires a rule in a real
//! trigger; with a wrong or missing secret the answer is 401 and nothing is published.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    free_endpoint, free_port, hark_command, poll_until, spawn_ready, temp_dir, write_file,
};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(30);

/// POST a fixture to a hook with these headers: the status and the JSON answer.
fn deliver(url: &str, fixture: &Path, headers: &[String]) -> (u16, Value) {
    let data = format!("@{}", fixture.display());
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &data,
    ];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    common::curl::curl(url, &args)
}

fn hook_events(base: &str) -> Vec<Value> {
    let (_, v) = common::curl::curl(&format!("{base}/v1/events?topic=_hark.hook.**"), &[]);
    v["events"].as_array().cloned().unwrap_or_default()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn forge_webhooks_become_signed_events_and_fire_rules() {
    let dir = temp_dir();
    let keys = common::test_keys(dir.path());
    let hook_keys = dir.path().join("hook-keys");
    std::fs::create_dir_all(&hook_keys).unwrap();
    for id in ["salsa-hook", "gh-hook"] {
        common::keypair(&hook_keys, id);
        std::fs::copy(
            hook_keys.join(format!("{id}.key")),
            keys.trusted.join(format!("{id}.key")),
        )
        .unwrap();
    }
    let salsa_secret = write_file(dir.path(), "salsa.secret", "salsa-token-1\n");
    let gh_secret = write_file(dir.path(), "gh.secret", "It's a Secret to Everybody\n");
    let config = write_file(
        dir.path(),
        "hark.yaml",
        &format!(
            "http:\n  hooks:\n    salsa: {{kind: gitlab, secret_file: {}, key: {}}}\n    \
             gh: {{kind: github, secret_file: {}, key: {}}}\n",
            salsa_secret.display(),
            hook_keys.join("salsa-hook.key_secret").display(),
            gh_secret.display(),
            hook_keys.join("gh-hook.key_secret").display(),
        ),
    );
    let fired = dir.path().join("fired.jsonl");
    let rules = dir.path().join("rules.d");
    std::fs::create_dir_all(&rules).unwrap();
    write_file(
        &rules,
        "50-push.yaml",
        &format!(
            "rules:\n  - name: salsa-push\n    match:\n      topic: _hark.hook.salsa.push\n      signed_by: salsa-hook\n    \
             run:\n      command: [/bin/sh, -c, 'cat >> {}; echo >> {}']\n",
            fired.display(),
            fired.display()
        ),
    );
    let grants = [
        "--grant",
        "salsa-hook=_hark.hook.salsa.**",
        "--grant",
        "gh-hook=_hark.hook.gh.**",
    ];
    let (publish_ep, port) = (free_endpoint(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut relay = spawn_ready(
        "relay",
        hark_command()
            .args([
                "relay",
                "--submit",
                &free_endpoint(),
                "--publish",
                &publish_ep,
            ])
            .args([
                "--replay",
                &free_endpoint(),
                "--http",
                &format!("127.0.0.1:{port}"),
                "--metrics",
                &metrics,
            ])
            .args(grants)
            .arg("--config")
            .arg(&config)
            .arg("--journal")
            .arg(dir.path().join("journal.db"))
            .arg("--key")
            .arg(&keys.relay_secret)
            .arg("--trusted")
            .arg(&keys.trusted),
        "relay ready",
    );
    let mut trigger = spawn_ready(
        "trigger",
        hark_command()
            .args(["trigger", "--connect", &publish_ep])
            .args(grants)
            .args(["--grant", "relay=_nothing"])
            .arg("--rules")
            .arg(&rules)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .arg("--trusted")
            .arg(&keys.trusted),
        "trigger ready",
    );
    let base = format!("http://127.0.0.1:{port}");
    let data = common::repo_root().join("tests/data/hooks");
    let gitlab = data.join("gitlab-push.json");
    let salsa = format!("{base}/v1/hooks/salsa");
    let gitlab_headers = |token: &str, delivery: &str| {
        vec![
            "X-Gitlab-Event: Push Hook".to_string(),
            format!("X-Gitlab-Token: {token}"),
            format!("X-Gitlab-Event-UUID: {delivery}"),
        ]
    };

    // Wrong and missing secrets: 401, nothing journaled or published.
    for headers in [
        gitlab_headers("wrong-token", "d-0"),
        gitlab_headers("salsa-token-2", "d-0"),
        vec!["X-Gitlab-Event: Push Hook".to_string()],
    ] {
        let (status, answer) = deliver(&salsa, &gitlab, &headers);
        assert_eq!(status, 401, "{headers:?}: {answer}");
    }
    assert!(hook_events(&base).is_empty());
    assert_eq!(
        deliver(
            &format!("{base}/v1/hooks/nope"),
            &gitlab,
            &gitlab_headers("x", "d")
        )
        .0,
        404
    );

    // The right secret: accepted, journaled as _hark.hook.salsa.push signed by the hook's
    // key (and countersigned), and the rule runs with the payload as data.
    let (status, ack) = deliver(&salsa, &gitlab, &gitlab_headers("salsa-token-1", "d-1"));
    assert_eq!(
        (status, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    let events = hook_events(&base);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["signers"],
        serde_json::json!(["relay", "salsa-hook"])
    );
    let body: Value = serde_json::from_str(events[0]["frames"][1].as_str().unwrap()).unwrap();
    assert_eq!(body["tag"], "_hark.hook.salsa.push");
    assert_eq!(
        body["data"]["project"]["path_with_namespace"],
        "mike/diaspora"
    );
    let ran = poll_until(WAIT, || {
        std::fs::read_to_string(&fired)
            .ok()
            .filter(|t| t.contains("mike/diaspora"))
    });
    let ran = ran.expect("the rule never ran for the push");
    let stdin: Value = serde_json::from_str(ran.lines().next().unwrap()).unwrap();
    assert_eq!(stdin["uuid"], body["uuid"]);
    // GitLab retries a delivery it thinks failed: the same delivery id is a duplicate.
    let (status, again) = deliver(&salsa, &gitlab, &gitlab_headers("salsa-token-1", "d-1"));
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );

    // GitHub: HMAC-SHA256 of the exact body in X-Hub-Signature-256.
    let github = data.join("github-push.json");
    let payload = std::fs::read(&github).unwrap();
    let gh = format!("{base}/v1/hooks/gh");
    let signed = |sig: String| {
        vec![
            "X-GitHub-Event: push".to_string(),
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
            format!("X-Hub-Signature-256: sha256={sig}"),
        ]
    };
    let wrong = hmac_hex("not the secret", &payload);
    assert_eq!(deliver(&gh, &github, &signed(wrong)).0, 401);
    assert_eq!(deliver(&gh, &github, &signed("00".repeat(32))).0, 401);
    assert_eq!(hook_events(&base).len(), 1);
    let (status, ack) = deliver(
        &gh,
        &github,
        &signed(hmac_hex("It's a Secret to Everybody", &payload)),
    );
    assert_eq!(
        (status, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    let events = hook_events(&base);
    assert_eq!(events.len(), 2);
    let body: Value = serde_json::from_str(events[1]["frames"][1].as_str().unwrap()).unwrap();
    assert_eq!(body["tag"], "_hark.hook.gh.push");
    assert_eq!(
        body["data"]["repository"]["full_name"],
        "Codertocat/Hello-World"
    );
    assert_eq!(
        events[1]["signers"],
        serde_json::json!(["gh-hook", "relay"])
    );
    // A payload with a number no double holds (found by `make fuzz`, http): the forge's
    // fault, so a 400 that says why, not a 500; nothing journaled.
    let huge = write_file(dir.path(), "huge.json", r#"{"ref": "x", "size": 1e400}"#);
    let huge_payload = std::fs::read(&huge).unwrap();
    let mut headers = signed(hmac_hex("It's a Secret to Everybody", &huge_payload));
    headers[1] = "X-GitHub-Delivery: 0d6b2f1e-0000-4000-8000-000000000400".to_string();
    let (status, answer) = deliver(&gh, &huge, &headers);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("beyond a double"), "{answer}");
    assert_eq!(hook_events(&base).len(), 2);
    let scraped = common::net::try_http(&metrics, "GET /metrics HTTP/1.0\r\n\r\n", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        scraped.contains("hark_http_hooks_unusable_total{hook=\"gh\"} 1"),
        "{scraped}"
    );
    // The salsa rule did not fire for it, and ran once for the GitLab push.
    let text = std::fs::read_to_string(&fired).unwrap();
    assert_eq!(text.lines().filter(|l| !l.is_empty()).count(), 1, "{text}");

    trigger.terminate(WAIT);
    relay.terminate(WAIT);

    // A hook whose key the relay does not trust stops it before it is ready.
    let out = hark_command()
        .args([
            "relay",
            "--submit",
            &free_endpoint(),
            "--publish",
            &free_endpoint(),
            "--no-journal",
        ])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(&config)
        .output()
        .expect("relay");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not trust"), "{stderr}");
}
