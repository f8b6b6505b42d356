//! curl as the HTTP client of the tests (a real client, as users have): one request, its
//! status and its body parsed as JSON.

use std::process::Command;

/// Request `url` with curl and `extra` arguments: the status, and the body as JSON (Null
/// when it is not JSON). Panics when curl itself fails (no connection, a TLS error).
pub fn curl(url: &str, extra: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status"),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}
