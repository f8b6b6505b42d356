//! The shipped Matrix notification script, run against a fake `curl`: the message is
//! built from the event without any value reaching a shell, and exit codes tell hark
//! whether to retry.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const FAKE_CURL: &str = r#"#!/bin/sh
# Records what the script asked for; answers with $FAKE_STATUS.
prev=
for arg in "$@"; do
    case $prev in
        --data-binary) cat "${arg#@}" >"$FAKE_LOG/body" ;;
        --header) case $arg in @*) cat "${arg#@}" >"$FAKE_LOG/headers" ;; esac ;;
    esac
    prev=$arg
done
printf '%s\n' "$arg" >"$FAKE_LOG/url"
[ "${FAKE_STATUS:-200}" = fail ] && exit 7
printf '%s' "${FAKE_STATUS:-200}"
"#;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.d/scripts/matrix-notify")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Run {
    code: i32,
    stderr: String,
    log: tempfile::TempDir,
}

impl Run {
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.log.path().join(name)).unwrap_or_default()
    }

    /// The URL curl was given; jq versions differ on whether `!` is percent-encoded.
    fn url(&self) -> String {
        self.read("url").trim().replace("%21", "!")
    }
}

fn run(event: &str, env: &[(&str, &str)]) -> Run {
    let bin = tempfile::tempdir().unwrap();
    let curl = bin.path().join("curl");
    fs::write(&curl, FAKE_CURL).unwrap();
    fs::set_permissions(&curl, fs::Permissions::from_mode(0o755)).unwrap();
    let log = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(script());
    cmd.env_clear()
        .env("PATH", path)
        .env("FAKE_LOG", log.path())
        .env("MATRIX_CONFIG", log.path().join("absent.conf"))
        .current_dir(log.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log,
    }
}

const CONFIGURED: &[(&str, &str)] = &[
    ("MATRIX_HOMESERVER", "https://matrix.example.org"),
    ("MATRIX_ROOM", "!room:example.org"),
    ("MATRIX_TOKEN", "secret-token"),
];

macro_rules! require_tools {
    () => {
        if !have("jq") {
            println!("SKIPPED: jq is not installed");
            return;
        }
    };
}

#[test]
fn hostile_values_stay_data() {
    require_tools!();
    let event = r#"{"format":"1.0","tag":"_lk.archive.package-upload-accepted","uuid":"a/b c","time":"t",
        "data":{"repo":"master","source_name":"$(touch pwned)`touch pwned2`","source_version":"1;rm -rf /","is_new":true}}"#;
    let r = run(event, CONFIGURED);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let body: serde_json::Value = serde_json::from_str(&r.read("body")).unwrap();
    assert_eq!(body["msgtype"], "m.notice");
    assert_eq!(
        body["body"],
        "Accepted $(touch pwned)`touch pwned2` 1;rm -rf / in master (NEW)"
    );
    assert!(!r.log.path().join("pwned").exists() && !r.log.path().join("pwned2").exists());
    assert_eq!(
        r.url(),
        "https://matrix.example.org/_matrix/client/v3/rooms/!room%3Aexample.org/send/m.room.message/a%2Fb%20c"
    );
    assert_eq!(
        r.read("headers").trim(),
        "Authorization: Bearer secret-token"
    );
}

#[test]
fn publishes_and_other_events_have_messages() {
    require_tools!();
    let r = run(
        r#"{"tag":"_lk.archive.master.published","uuid":"u1","format":"1.0","time":"t","data":{"repo":"master","suites":["landing","byzantium"]}}"#,
        CONFIGURED,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r
        .read("body")
        .contains("Published master: landing, byzantium"));
    let r = run(
        r#"{"topic":"org.fedoraproject.prod.x","msg":{},"msg_id":"m1"}"#,
        CONFIGURED,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.read("body").contains("Event org.fedoraproject.prod.x"));
    assert!(r.url().ends_with("/m1"));
}

#[test]
fn configuration_comes_from_a_file_that_is_never_sourced() {
    require_tools!();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("matrix.conf");
    let marker = dir.path().join("sourced");
    fs::write(
        &conf,
        format!(
            "# hark matrix settings\n$(touch {m})\ntouch {m}\nMATRIX_HOMESERVER=https://hs.example.org\nMATRIX_ROOM=!r:example.org\nMATRIX_TOKEN_FILE={t}\n",
            m = marker.display(),
            t = dir.path().join("token").display()
        ),
    )
    .unwrap();
    fs::write(dir.path().join("token"), "tok-from-file").unwrap();
    let conf_s = conf.display().to_string();
    let r = run(
        r#"{"tag":"x.y","data":{},"uuid":"u","format":"1.0","time":"t"}"#,
        &[("MATRIX_CONFIG", conf_s.as_str())],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!marker.exists(), "the config file was executed");
    assert!(r
        .url()
        .starts_with("https://hs.example.org/_matrix/client/v3/rooms/!r%3Aexample.org/"));
    assert_eq!(
        r.read("headers").trim(),
        "Authorization: Bearer tok-from-file"
    );
}

#[test]
fn exit_codes_drive_retries() {
    require_tools!();
    let ev = r#"{"tag":"x.y","data":{},"uuid":"u","format":"1.0","time":"t"}"#;
    assert_eq!(run(ev, &[]).code, 78, "not configured");
    let with = |status: &str| {
        let mut env = CONFIGURED.to_vec();
        env.push(("FAKE_STATUS", status));
        run(ev, &env).code
    };
    assert_eq!(with("200"), 0);
    assert_eq!(with("500"), 75);
    assert_eq!(with("429"), 75);
    assert_eq!(with("fail"), 75, "unreachable");
    assert_eq!(with("403"), 69);
    assert_eq!(run("not json", CONFIGURED).code, 65);
}
