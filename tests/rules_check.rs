//! `hark rules check` and loading, through the library: the shipped rules pass; a broken
//! file is refused with a precise position while every other file loads; overriding,
//! masking and skipped file names behave as documented.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hark::cli::rules::{check_command, CheckArgs};
use hark::rules::check::check;
use hark::rules::{load_dirs, FileStatus, Severity};

fn data(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

/// `hark rules check --no-preflight DIRS`: the files only, whatever this host has installed.
fn run_check(dirs: Vec<PathBuf>) -> (u8, String) {
    run_check_on_host(dirs, false)
}

fn run_check_on_host(dirs: Vec<PathBuf>, preflight: bool) -> (u8, String) {
    let mut out = Vec::new();
    let args = CheckArgs {
        dirs,
        // Not /etc/hark/hark.yaml: that belongs to this host, not to the test.
        config: Some(PathBuf::from("/dev/null")),
        no_preflight: !preflight,
    };
    let code = check_command(&args, &mut out);
    (code, String::from_utf8(out).expect("utf-8 output"))
}

/// A typo in a program's path or a missing workdir is an error at the rule's position
/// when checked on the host; a workdir rendered from the event is not checked, and
/// `--no-preflight` checks only the files.
#[test]
fn the_preflight_finds_missing_programs_and_workdirs_on_this_host() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("50-host.yaml"),
        r#"rules:
  - name: typo
    match: {topic: a.b}
    run: {command: [/usr/bin/no-such-hark-program, x]}
  - name: off-path
    match: {topic: a.b}
    run:
      command: [sh, -c, "true"]
      env: {PATH: /nonexistent}
  - name: nowhere
    match: {topic: a.b}
    run: {command: [/bin/true], workdir: /nonexistent/hark}
  - name: fine
    match: {topic: a.b}
    run: {command: [/bin/sh, -c, "true"], workdir: /tmp}
  - name: templated
    match: {topic: a.b}
    run: {command: [/bin/true], workdir: "/nonexistent/${data.repo}"}
"#,
    )
    .unwrap();
    let file = dir.path().join("50-host.yaml").display().to_string();
    let (code, text) = run_check_on_host(vec![dir.path().to_path_buf()], true);
    assert_eq!(code, 1, "{text}");
    for (line, why) in [
        (2, "rule \"typo\": run.command[0]: /usr/bin/no-such-hark-program does not exist on this host"),
        (5, "rule \"off-path\": run.command[0]: sh is not on PATH (/nonexistent) on this host"),
        (10, "rule \"nowhere\": run.workdir /nonexistent/hark is not a directory on this host"),
    ] {
        let want = format!("{file}:{line}:");
        assert!(
            text.lines().any(|l| l.starts_with(&want) && l.contains("error: ") && l.ends_with(why)),
            "no {want} ... {why} in:\n{text}"
        );
    }
    for fine in ["fine", "templated"] {
        assert!(!text.contains(&format!("rule {fine:?}: run.")), "{text}");
    }
    assert!(text.contains("--no-preflight skips that"), "{text}");
    let (code, text) = run_check(vec![dir.path().to_path_buf()]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn shipped_rules_pass_check() {
    let report = check(&[data("rules.d")]);
    for d in &report.diagnostics {
        println!("{d}");
    }
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(
        report.count(Severity::Warning),
        0,
        "shipped rules are lint-clean"
    );
    assert!(report.tests_passed >= 10, "{}", report.summary());
    assert_eq!(report.load.set.len(), 9);
    let (code, text) = run_check(vec![data("rules.d")]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines().last().unwrap_or("").starts_with("ok: "),
        "{text}"
    );
}

#[test]
fn the_issue_example_loads_and_its_tests_pass() {
    let (code, text) = run_check(vec![data("tests/data/rules/example")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("tests: 3 passed, 0 failed"), "{text}");
}

fn broken_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(data("tests/data/rules/broken")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // Leftovers that must never be read (they are not even YAML).
    for junk in [
        "70-x.yaml~",
        "70-x.yaml.dpkg-old",
        "70-x.yaml.dpkg-dist",
        "70-x.yaml.ucf-dist",
        ".#70-x.yaml",
        ".hidden.yaml",
        "README",
        "70-x.json",
    ] {
        fs::write(dir.path().join(junk), "rules: [unclosed\n").unwrap();
    }
    dir
}

#[test]
fn a_broken_file_is_refused_precisely_and_the_others_load() {
    let dir = broken_copy();
    let report = load_dirs(&[dir.path().to_path_buf()]);
    let names: Vec<&str> = report.set.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["good-one", "good-two", "good-three"]);
    let refused: Vec<String> = report.refusals().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let broken = dir.path().join("20-broken.yaml");
    assert!(
        refused[0].starts_with(&format!(
            "{}:6:22: error: unknown field `inn`, expected one of eq, ne, in,",
            broken.display()
        )),
        "{}",
        refused[0]
    );
    let template = dir.path().join("30-bad-template.yaml");
    assert_eq!(
        refused[1],
        format!(
            "{}:5:31: error: unterminated '${{': expected '}}' (write '$$' for a literal '$')",
            template.display()
        )
    );
    // Exactly the five rule files were looked at; the leftovers were not.
    assert_eq!(report.files.len(), 5);

    let (code, text) = run_check(vec![dir.path().to_path_buf()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(":6:22: error: unknown field `inn`"), "{text}");
    assert!(text.contains("50-failing-test.yaml:9:24: error: test \"wrong expectation\": argv of \"good-three\" is [\"/bin/echo\",\"abc\"], expected [\"/bin/echo\",\"xyz\"]"), "{text}");
    let summary = text.lines().last().unwrap();
    assert!(summary.starts_with("FAILED: 5 file(s) (2 refused, 0 masked), 3 rule(s), tests: 2 passed, 1 failed; 3 error(s)"), "{summary}");
}

fn write(dir: &Path, name: &str, rule: &str, topic: &str) {
    fs::write(
        dir.join(name),
        format!("rules:\n  - name: {rule}\n    match: {{topic: {topic}}}\n    run: {{command: [/bin/true]}}\n"),
    )
    .unwrap();
}

#[test]
fn admin_files_replace_vendor_files_and_dev_null_masks() {
    let vendor = tempfile::tempdir().unwrap();
    let admin = tempfile::tempdir().unwrap();
    write(vendor.path(), "10-a.yaml", "vendor-a", "a");
    write(admin.path(), "10-a.yaml", "admin-a", "a");
    write(vendor.path(), "20-b.yaml", "vendor-b", "b");
    symlink("/dev/null", admin.path().join("20-b.yaml")).unwrap();
    write(vendor.path(), "30-c.yaml", "vendor-c", "c");
    let dirs = vec![vendor.path().to_path_buf(), admin.path().to_path_buf()];
    let report = load_dirs(&dirs);
    let names: Vec<&str> = report.set.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["admin-a", "vendor-c"]);
    let a = &report.files[0];
    assert_eq!(a.path, admin.path().join("10-a.yaml"));
    assert_eq!(a.replaces, vec![vendor.path().join("10-a.yaml")]);
    assert!(matches!(report.files[1].status, FileStatus::Masked));
    let (code, text) = run_check(dirs);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("note: masked (symlink to /dev/null)"),
        "{text}"
    );
    assert!(text.contains("note: replaces "), "{text}");
}

#[test]
fn duplicate_rule_names_refuse_the_later_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "10-first.yaml", "same", "a");
    write(dir.path(), "20-second.yaml", "same", "b");
    write(dir.path(), "30-third.yaml", "other", "c");
    let report = load_dirs(&[dir.path().to_path_buf()]);
    let names: Vec<&str> = report.set.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["same", "other"]);
    let refused: Vec<String> = report.refusals().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("20-second.yaml:2:11: error: rule name \"same\" is already defined at"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains("10-first.yaml:2:11"), "{}", refused[0]);
}

#[test]
fn a_nul_escape_in_a_command_is_refused_at_load_not_when_the_job_runs() {
    // Found by `make fuzz` (templates): "\0" reached a rendered argument, and the job
    // then failed to spawn at run time.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("10-nul.yaml"),
        "rules:\n  - name: nul\n    match: {topic: a}\n    run: {command: [/bin/echo, \"a\\0b\"]}\n",
    )
    .unwrap();
    let report = load_dirs(&[dir.path().to_path_buf()]);
    assert!(report.set.rules().is_empty());
    let refused: Vec<String> = report.refusals().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].starts_with(&format!(
            "{}:4:32: error: a NUL byte",
            dir.path().join("10-nul.yaml").display()
        )),
        "{}",
        refused[0]
    );
}

#[test]
fn missing_directories_are_an_error_for_check() {
    let (code, text) = run_check(vec![PathBuf::from("/nonexistent/hark/rules.d")]);
    assert_eq!(code, 1);
    assert!(text.contains("no such file or directory"), "{text}");
}

#[test]
fn a_path_that_is_not_there_fails_the_check_without_an_ok() {
    let (code, text) = run_check(vec![PathBuf::from("/nonexistent/rules.d")]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("/nonexistent/rules.d: error: no such file or directory"),
        "{text}"
    );
    let summary = text.lines().last().unwrap_or("");
    assert!(summary.starts_with("FAILED: "), "{summary}");
    assert!(!text.contains("ok: "), "{text}");
}

#[test]
fn a_file_skipped_for_its_name_and_an_empty_directory_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("70-x.YAML"), "rules: []\n").unwrap();
    let (code, text) = run_check(vec![dir.path().to_path_buf()]);
    assert_eq!(code, 0, "warnings only: {text}");
    let skipped = dir.path().join("70-x.YAML");
    assert!(
        text.contains(&format!(
            "{}: warning: not read: rule files must end in .yaml or .yml, in lower case",
            skipped.display()
        )),
        "{text}"
    );
    assert!(text.contains("warning: no rules found here"), "{text}");
    assert!(
        text.lines().last().unwrap_or("").contains("2 warning(s)"),
        "{text}"
    );
}

#[test]
fn the_daemon_warns_about_a_missing_directory_a_skipped_file_and_no_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.d");
    fs::create_dir(&rules).unwrap();
    fs::write(rules.join("70-x.YAML"), "rules: []\n").unwrap();
    let missing = dir.path().join("missing.d");
    let trigger = common::Proc::spawn(
        "trigger",
        common::hark_command()
            .args(["trigger", "--connect", &common::free_endpoint()])
            .arg("--rules")
            .arg(&missing)
            .arg("--rules")
            .arg(&rules)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .arg("--config")
            .arg(common::write_file(dir.path(), "hark.yaml", "")),
    );
    let wait = Duration::from_secs(30);
    let line = trigger
        .stderr
        .wait_for("does not exist", wait)
        .expect("the missing directory is named");
    assert!(line.contains(&missing.display().to_string()), "{line}");
    let line = trigger
        .stderr
        .wait_for("70-x.YAML", wait)
        .expect("the skipped file is named");
    assert!(line.contains("in lower case"), "{line}");
    trigger
        .stderr
        .wait_for("no rules are loaded", wait)
        .expect("an empty rule set is warned about");
    trigger
        .stderr
        .wait_for("trigger ready", wait)
        .expect("and it still starts");
}

#[test]
fn a_file_of_the_wrong_shape_is_explained_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("10-list.yaml"), "- name: x\n").unwrap();
    fs::write(dir.path().join("20-text.yaml"), "just text\n").unwrap();
    fs::write(dir.path().join("30-rules.yaml"), "rules: foo\n").unwrap();
    let (code, text) = run_check(vec![dir.path().to_path_buf()]);
    assert_eq!(code, 1, "{text}");
    for name in ["10-list.yaml", "20-text.yaml"] {
        let line = format!(
            "{}:1:1: error: a rule file must be a mapping with a `rules:` list",
            dir.path().join(name).display()
        );
        assert!(text.contains(&line), "{name}: {text}");
    }
    assert!(
        text.contains("30-rules.yaml:1:8: error: expected a list here"),
        "{text}"
    );
    assert!(!text.contains("mapping start"), "no parser jargon: {text}");
}

#[test]
fn rules_list_names_each_rule_with_its_file_and_line() {
    use hark::cli::rules::{list_command, ListArgs};
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = list_command(
        &ListArgs {
            dirs: vec![data("rules.d")],
            json: true,
        },
        &mut out,
        &mut err,
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let rules: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rules.len(), 9);
    let hello = rules.iter().find(|r| r["name"] == "hello").expect("hello");
    assert!(
        hello["source"]
            .as_str()
            .unwrap()
            .ends_with("rules.d/10-hello.yaml:7"),
        "{hello}"
    );
    assert_eq!(hello["topics"][0], "_hark.example.hello");
    assert_eq!(hello["command"][0], "/bin/echo");
}
