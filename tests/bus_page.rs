//! The live bus page in a real browser: headless Chromium (Debian's) opens the relay's
//! page, driven over the DevTools protocol by tests/peers/bus_page_cdp.py; an event
//! published before shows in the recent list, one published while the page is open
//! arrives through `/v1/stream` into the DOM with its verified signers, and a screenshot
//! is kept under target/artifacts/ (CI keeps it as an artifact).

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{free_endpoint, free_port, hark_command, peer_command, spawn_ready, temp_dir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

use common::publish_acked as publish;

#[test]
fn an_event_published_while_the_page_is_open_appears_in_its_dom() {
    if !Path::new(CHROMIUM).exists() {
        println!("SKIPPED: no {CHROMIUM} (apt-get install chromium)");
        return;
    }
    let dir = temp_dir();
    let keys = common::test_keys(dir.path());
    let (submit_ep, port) = (free_endpoint(), free_port());
    let mut relay = spawn_ready(
        "relay",
        hark_command()
            .args([
                "relay",
                "--submit",
                &submit_ep,
                "--publish",
                &free_endpoint(),
            ])
            .args(["--replay", &free_endpoint(), "--grant", "archive=_lk.**"])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .arg("--journal")
            .arg(dir.path().join("journal.db"))
            .arg("--key")
            .arg(&keys.relay_secret)
            .arg("--trusted")
            .arg(&keys.trusted),
        "relay ready",
    );
    let recent = publish(
        &submit_ep,
        &keys.archive,
        "_lk.archive.package-upload",
        json!({"pkg": "before"}),
    );
    let screenshot = common::repo_root().join("target/artifacts/bus-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let (mut page, mut stdin) = common::Proc::spawn_with_stdin(
        "bus_page_cdp",
        peer_command("bus_page_cdp.py")
            .args(["--chromium", CHROMIUM, "--recent", &recent])
            .args([
                "--url",
                &format!("http://127.0.0.1:{port}/?topic=_lk.archive.**"),
            ])
            .arg("--screenshot")
            .arg(&screenshot)
            .arg("--user-data-dir")
            .arg(dir.path().join("chromium-profile")),
    );
    let ready: Value = serde_json::from_str(
        &page
            .stdout
            .wait_for("\"ready\"", WAIT)
            .expect("the page loaded"),
    )
    .unwrap();
    let recent_row = ready["recent"].as_str().unwrap();
    assert!(
        recent_row.contains("_lk.archive.package-upload") && recent_row.contains("before"),
        "{recent_row}"
    );

    // Published now: outside the filter first (it must not show), then inside it.
    publish(
        &submit_ep,
        &keys.archive,
        "_lk.jobs.job-finished",
        json!({"pkg": "filtered-out"}),
    );
    let live = publish(
        &submit_ep,
        &keys.archive,
        "_lk.archive.package-upload",
        json!({"pkg": "live-one"}),
    );
    writeln!(stdin, "{live}").unwrap();
    stdin.flush().unwrap();
    let shown: Value = serde_json::from_str(
        &page
            .stdout
            .wait_for("\"row\"", WAIT)
            .expect("the live event"),
    )
    .unwrap();
    let row = shown["row"].as_str().unwrap();
    assert!(row.contains("live-one"), "{row}");
    assert!(
        row.contains("✓ archive") && row.contains("✓ relay"),
        "signers verified by the relay: {row}"
    );
    assert!(row.contains('3'), "its seq: {row}");
    // Published before it on the same stream: the filter kept it out.
    let whole = shown["page"].as_str().unwrap();
    assert!(!whole.contains("filtered-out"), "{whole}");
    page.stdout
        .wait_for("\"screenshot\"", WAIT)
        .expect("screenshot");
    page.wait_success(WAIT).expect("the page driver");
    let png = std::fs::read(&screenshot).expect("screenshot file");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    // The stream and the page itself, as a plain client sees them.
    let (status, _) = common::curl::curl(
        &format!("http://127.0.0.1:{port}/v1/stream?topic=a..b"),
        &[],
    );
    assert_eq!(status, 400);
    let html = std::process::Command::new("curl")
        .args(["-sS", "-D", "-"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    let html = String::from_utf8_lossy(&html.stdout);
    assert!(
        html.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{html}"
    );
    assert!(
        !html.contains("http://") || !html.contains("<script src"),
        "nothing loaded from elsewhere"
    );
    relay.terminate(WAIT);
}
