//! `run.unit` as the commands show it: `hark rules check` refuses a user hark.yaml's
//! `trigger.unit_users` does not allow (file:line:col), and `hark rules test` shows the
//! transient unit's settings a job would get. Starting units for real needs systemd as
//! PID 1: packaging/ci-check.sh does that in its systemd-nspawn phase.

mod common;

use std::process::Command;

const RULE: &str = "rules:\n  - name: isolated\n    match: {topic: t.x}\n    run:\n      command: [/usr/bin/id, -u]\n      unit:\n        user: mirror\n        properties: {ProtectSystem: strict, ReadWritePaths: [/srv/mirror], MemoryMax: 1G}\n";

fn output(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("hark runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn rules_check_refuses_a_unit_user_hark_yaml_does_not_allow() {
    let dir = common::temp_dir();
    let rules = common::write_file(dir.path(), "50-units.yaml", RULE);
    let default = common::write_file(dir.path(), "default.yaml", "");
    let (code, text) = output(
        common::hark_command()
            .args(["rules", "check", "--config"])
            .arg(&default)
            .arg(&rules),
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "{}:7:15: error: run.unit.user mirror is not in trigger.unit_users of hark.yaml (it allows root)",
            rules.display()
        )),
        "{text}"
    );
    let allowing = common::write_file(
        dir.path(),
        "hark.yaml",
        "trigger:\n  unit_users: [root, mirror]\n",
    );
    let (code, text) = output(
        common::hark_command()
            .args(["rules", "check", "--config"])
            .arg(&allowing)
            .arg(&rules),
    );
    assert_eq!(code, 0, "{text}");
}

#[test]
fn rules_test_shows_the_unit_a_job_would_get() {
    let dir = common::temp_dir();
    let rules = common::write_file(dir.path(), "50-units.yaml", RULE);
    let config = common::write_file(
        dir.path(),
        "hark.yaml",
        "trigger:\n  unit_users: [mirror]\n",
    );
    let event = common::write_file(dir.path(), "e.json", r#"{"tag": "t.x", "data": {}}"#);
    let (code, text) = output(
        common::hark_command()
            .args(["rules", "test", "--config"])
            .arg(&config)
            .arg("--event")
            .arg(&event)
            .arg(&rules),
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("    unit: a transient systemd unit hark-job-<id>.service: User=mirror ProtectSystem=strict ReadWritePaths=/srv/mirror MemoryMax=1G\n"),
        "{text}"
    );
    let (code, text) = output(
        common::hark_command()
            .args(["rules", "test", "--json", "--config"])
            .arg(&config)
            .arg("--event")
            .arg(&event)
            .arg(&rules),
    );
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(text.trim()).expect("JSON");
    assert_eq!(
        report["fires"][0]["unit"],
        serde_json::json!([
            "User=mirror",
            "ProtectSystem=strict",
            "ReadWritePaths=/srv/mirror",
            "MemoryMax=1G"
        ])
    );
}

/// `hark unit-starter` as hark-unit-starter.socket runs it: one connection on stdin. These
/// are the refusals, which need no systemd; packaging/ci-check.sh starts units through it.
mod starter {
    use super::*;
    use hark::jobs::store::StoredEvent;
    use hark::jobs::unit::wire::{send_fds, Reply, Request};
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    const ROOT_RULE: &str = "rules:\n  - name: root-job\n    match: {topic: t.upload}\n    run:\n      command: [/usr/bin/id, -u]\n      unit: {user: root}\n";

    /// hark.yaml and a rules directory that nobody but their owner may write.
    fn files(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = common::temp_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rules = dir.path().join("rules.d");
        std::fs::create_dir(&rules).unwrap();
        std::fs::set_permissions(&rules, std::fs::Permissions::from_mode(0o755)).unwrap();
        common::write_file(&rules, "60-root.yaml", ROOT_RULE);
        let config = common::write_file(
            dir.path(),
            "hark.yaml",
            &format!("trigger:\n  rules: [{}]\n{extra}", rules.display()),
        );
        (dir, config)
    }

    fn request(topic: &str) -> Request {
        Request {
            job: 9,
            rule: "root-job".into(),
            attempt: 1,
            reason: hark::jobs::launch::Reason::Event,
            events: vec![StoredEvent {
                uuid: "u1".into(),
                topic: topic.into(),
                signers: vec![],
                json: format!(
                    r#"{{"tag":"{topic}","uuid":"u1","format":"1.0","time":"2026-12-01T00:00:00Z","data":{{}}}}"#
                ),
            }],
        }
    }

    /// Send `line` (with the two descriptors) to a starter; its reply and what it logged.
    fn ask(config: &std::path::Path, line: &[u8]) -> (Reply, i32, String) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut child = common::hark_command()
            .args(["unit-starter", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hark runs");
        let (_r, w) = std::io::pipe().unwrap();
        send_fds(ours.as_fd(), &[w.as_fd(), w.as_fd()]).unwrap();
        (&ours).write_all(line).unwrap();
        ours.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(&ours)
            .read_line(&mut reply)
            .unwrap();
        drop(ours);
        let status = common::poll_until(std::time::Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
        let Some(status) = status else {
            let _ = child.kill();
            panic!("hark unit-starter did not exit after its reply");
        };
        let mut log = String::new();
        if let Some(mut err) = child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut log).unwrap();
        }
        let reply: Reply =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
        (reply, status.code().unwrap_or(-1), log)
    }

    fn line(req: &Request) -> Vec<u8> {
        let mut l = serde_json::to_vec(req).unwrap();
        l.push(b'\n');
        l
    }

    fn refusal(reply: Reply) -> String {
        match reply {
            Reply::Refused { why } => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_job_root_s_files_do_not_give_is_refused_and_logged() {
        let (_dir, config) = files("");
        let (reply, code, log) = ask(&config, &line(&request("t.other")));
        let why = refusal(reply);
        assert!(
            why.contains("event u1 does not match rule root-job: topic \"t.other\""),
            "{why}"
        );
        assert_eq!(code, 0, "{log}");
        assert!(
            log.contains("refused: event u1 does not match rule root-job"),
            "{log}"
        );

        let (reply, _, _) = ask(
            &config,
            b"{\"job\": 1, \"rule\": \"root-job\", \"command\": [\"/bin/sh\"]}\n",
        );
        let why = refusal(reply);
        assert!(
            why.contains("a malformed request") && why.contains("command"),
            "{why}"
        );

        // hark.yaml allows no unit user: the rule itself is refused, at its file:line:col.
        let (_dir, config) = files("  unit_users: []\n");
        let (reply, _, _) = ask(&config, &line(&request("t.upload")));
        let why = refusal(reply);
        assert!(
            why.contains("rule root-job is not among the rules in"),
            "{why}"
        );
        assert!(
            why.contains(
                "60-root.yaml:6:20: error: run.unit.user root is not in trigger.unit_users"
            ),
            "{why}"
        );
    }

    #[test]
    fn a_rule_file_others_may_write_is_not_trusted() {
        let (dir, config) = files("");
        let file = dir.path().join("rules.d/60-root.yaml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (reply, _, _) = ask(&config, &line(&request("t.upload")));
        let why = refusal(reply);
        assert!(
            why.contains("60-root.yaml is writable by others (mode 666)"),
            "{why}"
        );
    }

    #[test]
    fn without_a_connection_on_stdin_it_says_who_starts_it() {
        let out = common::hark_command()
            .args(["unit-starter"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("hark runs");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("hark-unit-starter.socket starts it"), "{err}");
    }
}
