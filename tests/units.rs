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
