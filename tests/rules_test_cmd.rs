//! `hark rules test` through the library: which rules fire for the example events, the
//! rendered commands, the reasons for misses, JSON output and bad input lines.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use hark::cli::rules::{test_command, RulesArgs, RulesCommand, TestArgs};
use serde_json::Value;

fn root(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn args(event: Option<PathBuf>, events: Option<PathBuf>, json: bool, signers: &[&str]) -> TestArgs {
    TestArgs {
        dirs: vec![root("rules.d")],
        event,
        events,
        json,
        signers: signers.iter().map(|s| s.to_string()).collect(),
        // Not /etc/hark/hark.yaml: that belongs to this host, not to the test.
        config: Some(PathBuf::from("/dev/null")),
    }
}

fn run(a: &TestArgs) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = test_command(a, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn recording_in_json_mode() {
    let a = args(
        None,
        Some(root("examples/events/recording.jsonl")),
        true,
        &[],
    );
    let (code, out, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let reports: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 4);

    let accepted = &reports[0];
    assert_eq!(accepted["topic"], "_lk.archive.package-upload-accepted");
    assert_eq!(accepted["uuid"], "2f1d0c3e-6b1a-4c55-9a0e-7f3c2d1b4a10");
    let fired: Vec<&str> = accepted["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    // Load order: by file name, then by position in the file.
    assert_eq!(fired, vec!["lintian", "piuparts", "matrix-notify"]);
    assert_eq!(
        accepted["fires"][0]["argv"],
        serde_json::json!([
            "/usr/bin/lintian",
            "--info",
            "--display-level=>=warning",
            "/srv/archive/master/done/hello_2.10-3_amd64.changes"
        ])
    );
    assert_eq!(accepted["fires"][0]["env"]["UPLOAD_REPO"], "master");
    assert_eq!(
        accepted["misses"],
        serde_json::json!([
            {
                "rule": "hello",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match _hark.example.hello"
            },
            {
                "rule": "salsa-push-rebuild",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match _hark.hook.salsa.push"
            },
            {
                "rule": "mirror-sync",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match _lk.archive.*.published"
            },
            {
                "rule": "fedora-rawhide-sync",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match org.fedoraproject.prod.pungi.compose.status.change"
            },
            {
                "rule": "fedora-updates-sync",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match org.fedoraproject.prod.bodhi.compose.complete"
            },
            {
                "rule": "rebuild-requested",
                "reason": "topic \"_lk.archive.package-upload-accepted\" does not match _hark.rebuild.requested"
            }
        ])
    );

    let published = &reports[1];
    let fired: Vec<&str> = published["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(fired, vec!["mirror-sync", "matrix-notify"]);

    // The bare event line carries no verified signer, so signed_by stops every rule.
    let unsigned = &reports[2];
    assert_eq!(unsigned["fires"], serde_json::json!([]));
    let reason = unsigned["misses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["rule"] == "lintian")
        .and_then(|m| m["reason"].as_str())
        .unwrap();
    assert_eq!(
        reason,
        "signed_by: not signed by any of [archive-master] (verified signers: none)"
    );

    let fedmsg = &reports[3];
    assert_eq!(
        fedmsg["topic"],
        "org.fedoraproject.prod.buildsys.build.state.change"
    );
    assert_eq!(fedmsg["fires"], serde_json::json!([]));
}

#[test]
fn single_event_text_mode_with_assumed_signer() {
    let a = args(
        Some(root("examples/events/package-upload-accepted-new.json")),
        None,
        false,
        &["archive-master"],
    );
    let (code, out, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(
            "event _lk.archive.package-upload-accepted 8d6e2a41-0c7b-4f0e-b1d3-55a9e0c2f7b4\n"
        ),
        "{out}"
    );
    assert!(out.contains("  fires lintian\n    argv: [\"/usr/bin/lintian\",\"--info\",\"--display-level=>=warning\",\"/srv/archive/master/done/libfoo_0.1-1_amd64.changes\"]\n"), "{out}");
    assert!(out.contains("    stdin: none\n"), "{out}");
    assert!(out.contains("  fires matrix-notify\n"), "{out}");
    assert!(out.contains("    stdin: event {"), "{out}");
    assert!(
        out.contains("  misses piuparts: data.is_new: true is not false\n"),
        "{out}"
    );
}

#[test]
fn the_first_failing_condition_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("e.json");
    std::fs::write(&event, r#"{"tag": "_lk.archive.master.published", "signers": ["archive-master"], "data": {"repo": "master", "suite": "experimental", "version": "1.3-1"}}"#).unwrap();
    let a = TestArgs {
        dirs: vec![root("tests/data/rules/example")],
        ..args(Some(event), None, true, &[])
    };
    let (code, out, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        report["misses"][0]["reason"],
        "data.suite: \"experimental\" is not in [landing, byzantium]"
    );
}

#[test]
fn bad_lines_are_reported_and_the_rest_evaluated() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let good = std::fs::read_to_string(root("examples/events/archive-published.json")).unwrap();
    let good: Value = serde_json::from_str(&good).unwrap();
    writeln!(file, "{good}").unwrap();
    writeln!(file, "{{not json").unwrap();
    writeln!(file, "{{\"data\": {{}}}}").unwrap();
    writeln!(file, "{good}").unwrap();
    let path = file.path().to_path_buf();
    let a = args(None, Some(path.clone()), true, &["archive-master"]);
    let (code, out, err) = run(&a);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 2, "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{}:2: error: invalid JSON", path.display())),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{}:3: error: ", path.display())),
        "{err}"
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    rules: RulesArgs,
}

#[test]
fn arguments_parse() {
    let cli = Cli::try_parse_from([
        "hark-rules",
        "test",
        "a",
        "b",
        "--events",
        "x.jsonl",
        "--json",
        "--signer",
        "s1",
        "--signer",
        "s2",
    ])
    .unwrap();
    match cli.rules.command {
        RulesCommand::Test(t) => {
            assert_eq!(t.dirs, vec![PathBuf::from("a"), PathBuf::from("b")]);
            assert_eq!(t.events, Some(PathBuf::from("x.jsonl")));
            assert!(t.json);
            assert_eq!(t.signers, vec!["s1", "s2"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        Cli::try_parse_from(["hark-rules", "test", "a"]).is_err(),
        "an input is required"
    );
    assert!(Cli::try_parse_from(["hark-rules", "test", "--event", "e", "--events", "f"]).is_err());
    let cli = Cli::try_parse_from(["hark-rules", "check"]).unwrap();
    assert!(matches!(cli.rules.command, RulesCommand::Check(c) if c.dirs.is_empty()));
}
